"""The Nuclio function end to end (main.handler through nuclio_sdk's test Platform) with the tiny
K=9 checkpoint: init, body forms, the interactor replies (CVAT 2.60+ by default, legacy and
CVAT-OCT where they differ), the detector
list, prompts on a prompted profile, errors and recovery.

Ground truth is the model's own label map, read from the worker's predictor directly; every
expected selection below is recomputed here with scipy, not with sam2oct.geometry.interaction. Most
tests use downscaled frames (96x62, 192x124); a few use one full-size Spectralis B-scan.
"""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import shapely
import torch
from PIL import Image
from scipy import ndimage

import model_handler
import sam2oct.model.predictor
from conftest import ROOT, TINY_CKPT
from cvat_ui_rules import current_ui_draws
from harness import Worker, b64, encode, wire
from sam2oct.geometry.polygons import label_map_to_shapes, rasterize_shapes
from sam2oct.geometry.merge import clean_label_map
from sam2oct.geometry.images import read_image
from sam2oct.errors import Sam2OctError

# NR206 class names in channel order, written out here rather than imported
NR206 = ("background", "NFL", "GCL+IPL", "INL", "OPL", "ONL", "ELM+IS", "OS", "RPE")
DATA = ROOT / "tests" / "data"
SYNTH = DATA / "bscan_768x496_s1.png"
SPECTRALIS = DATA / "spectralis" / "Willis_B_716_0_bscan_u8.png"


# --- fixtures -----------------------------------------------------------------------------------

def _small(path, size):
    return encode(Image.open(path).resize(size, Image.BILINEAR))


@pytest.fixture(scope="module")
def synth96():
    return _small(SYNTH, (96, 62))


@pytest.fixture(scope="module")
def synth192():
    return _small(SYNTH, (192, 124))


@pytest.fixture(scope="module")
def spec96():
    return _small(SPECTRALIS, (96, 62))


@pytest.fixture(scope="module")
def interactor():
    return Worker()


@pytest.fixture(scope="module")
def fork():
    # the CVAT-OCT fork's replies: stock CVAT's legacy fields plus every layer's polygons
    return Worker(SAM2OCT_CVAT_UI="cvat-oct")


@pytest.fixture(scope="module")
def exact():
    # no simplification, no merging: polygons reproduce the label map pixel for pixel
    return Worker(SAM2OCT_SIMPLIFY="0", SAM2OCT_MIN_AREA="0", SAM2OCT_CVAT_UI="cvat-oct")


@pytest.fixture(scope="module")
def detector():
    return Worker(SAM2OCT_MODE="detector")


@pytest.fixture(scope="module")
def prompted():
    h = Worker()
    # The tiny K=9 weights stand in for a prompt-trained checkpoint.
    h.model.pipeline.profile = dataclasses.replace(h.model.profile, prompted=True)
    return h


# --- helpers ------------------------------------------------------------------------------------

def prediction(h, data):
    """The model's own prediction for a frame, straight from the worker's predictor."""
    gray = read_image(data, h.model.settings.options.max_pixels)
    return h.model.predictor.predict(gray, confidence=True)


def cleaned(h, label_map):
    """A label map after the worker's min-area merge: the map every reply answers from."""
    return clean_label_map(label_map, h.model.settings.options.min_area)


def truth(h, data):
    return cleaned(h, prediction(h, data).label_map)


def pixel_of(x, y, shape):
    """Pixel (row, col) under a click in pixel-edge coordinates, after edge clipping."""
    h, w = shape
    return min(max(math.floor(y), 0), h - 1), min(max(math.floor(x), 0), w - 1)


def region_at(lm, r, c):
    """4-connected region of lm's class at (r, c) (scipy's default 2-D structure is the cross)."""
    lab, _ = ndimage.label(lm == lm[r, c])
    return lab == lab[r, c]


def click_in(lm, k, rank=0):
    """A click at a pixel centre inside the rank-th largest region of class k."""
    lab, n = ndimage.label(lm == k)
    assert n > rank, f"fixture frame lacks class {k} regions"
    sizes = np.bincount(lab.ravel())[1:]
    region = lab == np.argsort(sizes)[::-1][rank] + 1
    r, c = np.argwhere(region)[region.sum() // 2]
    return [float(c) + 0.5, float(r) + 0.5]


def expected_selection(lm, clicks):
    out = np.zeros(lm.shape, bool)
    for x, y in clicks:
        r, c = pixel_of(x, y, lm.shape)
        if lm[r, c]:
            out |= region_at(lm, r, c)
    return out


def stock_mask(reply, shape):
    """The full-frame mask CVAT draws for a reply: CVAT 2.60+'s rule for the default format (one mask
    shape, confidence filter off: the tiny model is unsure), or the legacy fields (mask, bounds,
    points), checked."""
    H, W = shape
    if "mask" not in reply:
        (drawn,) = current_ui_draws(reply, H, W, threshold=0)
        return drawn
    mask, bounds = reply["mask"], reply["bounds"]
    assert isinstance(mask, list) and mask and all(isinstance(row, list) and row for row in mask)
    assert all(type(v) is int for row in mask for v in row)
    assert {v for row in mask for v in row} <= {0, 1}
    assert len(bounds) == 4 and all(type(v) is int for v in bounds)
    xtl, ytl, xbr, ybr = bounds
    assert 0 <= xtl <= xbr < W and 0 <= ytl <= ybr < H
    crop = np.array(mask)
    assert crop.shape == (ybr - ytl + 1, xbr - xtl + 1)
    # tight crop: the first and last rows and columns each hold a set pixel
    assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    full = np.zeros(shape, bool)
    full[ytl:ybr + 1, xtl:xbr + 1] = crop == 1

    points = reply["points"]
    assert len(points) >= 4 and all(len(p) == 2 for p in points)
    xy = np.array(points, dtype=float)
    assert (xy[:, 0] >= xtl).all() and (xy[:, 0] <= xbr + 1).all()
    assert (xy[:, 1] >= ytl).all() and (xy[:, 1] <= ybr + 1).all()
    outline = shapely.Polygon(points)
    assert outline.is_valid
    # the outline encloses the largest region of the mask
    lab, _ = ndimage.label(full)
    largest = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    rows, cols = np.nonzero(largest)
    assert shapely.contains_xy(outline, cols + 0.5, rows + 0.5).all()
    return full


def frame_sized_lists(obj, H, W):
    """Nested lists in a reply with the shape of the whole frame."""
    found = []
    if isinstance(obj, dict):
        for v in obj.values():
            found += frame_sized_lists(v, H, W)
    elif isinstance(obj, list):
        if len(obj) == H and all(isinstance(row, list) and len(row) == W for row in obj):
            found.append(obj)
        for v in obj:
            found += frame_sized_lists(v, H, W)
    return found


def centre_pixels(points, shape):
    """(rows, cols) of the pixels whose centre lies inside a polygon (searched within its bounds)."""
    poly = shapely.Polygon(points)
    x0, y0, x1, y1 = poly.bounds
    rows, cols = np.mgrid[max(math.floor(y0), 0):min(math.ceil(y1), shape[0]),
                          max(math.floor(x0), 0):min(math.ceil(x1), shape[1])]
    inside = shapely.contains_xy(poly, cols + 0.5, rows + 0.5)
    return rows[inside], cols[inside]


def centre_owners(shapes, shape):
    """Per pixel: how many shapes hold its centre, and the class index of the last one."""
    count = np.zeros(shape, int)
    cls = np.zeros(shape, int)
    for s in shapes:
        pixels = centre_pixels(s["points"], shape)
        count[pixels] += 1
        cls[pixels] = NR206.index(s["label"])
    return count, cls


def check_classes(owned, lm, min_area=16):
    """Each shape or mask ((label, pixel index)) holding 64+ pixels of the label map's regions of
    min_area (the default SAM2OCT_MIN_AREA) or more pixels has those pixels' majority class.
    Only those pixels count: the tiny model's map is speckled (pixel-wise agreement is only ~75%),
    speckles under min_area pixels merge into a neighbouring class, and merged speckle alone can
    make a shape of 64+ pixels whose label need not be its pixels' majority."""
    kept = np.zeros(lm.shape, bool)
    for k in np.unique(lm):
        lab, _ = ndimage.label(lm == k)
        kept |= (np.bincount(lab.ravel()) >= min_area)[lab] & (lab > 0)
    agree = total = 0
    for label, pixels in owned:
        counts = np.bincount(lm[pixels][kept[pixels]], minlength=len(NR206))
        majority = counts.argmax() == NR206.index(label)
        assert majority or counts.sum() < 64, (label, counts)
        agree += majority * counts.sum()
        total += counts.sum()
    assert agree >= 0.97 * total


def centre_masks(shapes, shape):
    return [(s["label"], centre_pixels(s["points"], shape)) for s in shapes]


def check_tiling(shapes, lm, tolerance):
    """Shapes don't overlap and cover the label map's non-background pixels (up to tolerance)."""
    polys = [shapely.Polygon(s["points"]) for s in shapes]
    assert all(p.is_valid for p in polys)
    total = sum(p.area for p in polys)
    union = shapely.union_all(polys).area
    assert total - union <= 1e-6 * total  # pairwise overlaps add up to ~0
    assert abs(union - np.count_nonzero(lm)) <= tolerance * lm.size


# --- init_context -------------------------------------------------------------------------------

def test_init_builds_one_model_handler_per_worker(monkeypatch, synth96):
    built = []
    real = model_handler.ModelHandler

    def counting(settings, **kw):
        built.append(settings)
        return real(settings, **kw)

    monkeypatch.setattr("main.ModelHandler", counting)
    before = dict(os.environ)
    h = Worker(SAM2OCT_SIMPLIFY="0.5")
    assert dict(os.environ) == before  # the harness put the environment back
    assert h.model.pipeline.options.simplify == 0.5  # ... after init read it
    model = h.model
    assert len(built) == 1 and isinstance(model, real)
    assert built[0].options.checkpoint.endswith("tiny_k9.pt") and built[0].warmup is False
    for _ in range(3):
        assert h.call({"image": b64(synth96)})[0] == 200
    assert len(built) == 1 and h.model is model  # requests reuse the worker's model
    assert model.predictor.encoder_calls == 1


def test_warm_up_runs_once_and_leaves_no_trace(monkeypatch, interactor, synth96):
    encodes = []
    real_encode = sam2oct.model.predictor.SemanticPredictor.encode

    def spy(self, gray):
        encodes.append(gray.shape)
        return real_encode(self, gray)

    monkeypatch.setattr(sam2oct.model.predictor.SemanticPredictor, "encode", spy)
    Worker()  # warm-up off: no encode at init
    assert encodes == []
    warm = Worker(SAM2OCT_WARMUP="1")
    assert len(encodes) == 1  # one dummy frame went through the encoder
    p = warm.model.predictor
    assert p.encoder_calls == 0 and len(p.cache) == 0
    assert warm.call({"image": b64(synth96)})[0] == 200
    assert p.encoder_calls == 1 and p.cache.frames == 1 and len(p.cache) == 2  # + the file's grey frame
    # warm and cold workers answer the same
    assert warm.call({"image": b64(synth96)}) == interactor.call({"image": b64(synth96)})


@pytest.mark.parametrize("env, words", [
    ({"SAM2_CHECKPOINT": None}, ["SAM2_CHECKPOINT", "no checkpoint given", "python -m sam2oct download"]),
    ({"SAM2_CHECKPOINT": "{tmp}/models/nowhere.pt"},
     ["SAM2_CHECKPOINT", "{tmp}/models/nowhere.pt", "not found", "python -m sam2oct download"]),
    ({"SAM2_CHECKPOINT": "{tmp}/garbage.pt"}, ["SAM2_CHECKPOINT", "{tmp}/garbage.pt", "python -m sam2oct download"]),
    ({"SAM2_CHECKPOINT": "{tmp}/truncated.pt"},
     ["SAM2_CHECKPOINT", "{tmp}/truncated.pt", "not a readable PyTorch checkpoint", "python -m sam2oct download"]),
    ({"SAM2_CONFIG": "{tmp}/missing.yaml"}, ["{tmp}/missing.yaml", "SAM2_CONFIG"]),
    ({"SAM2OCT_MODE": "foo"}, ["SAM2OCT_MODE", "'foo'", "interactor", "detector"]),
    ({"SAM2OCT_PROFILE": "mgu"}, ["SAM2OCT_PROFILE", "mgu", "9 classes", "11"]),
    ({"SAM2OCT_PROFILE": "mgu_prompted"}, ["SAM2OCT_PROFILE", "mgu_prompted", "9 classes", "11"]),
    ({"SAM2OCT_PROFILE": "nr207"}, ["SAM2OCT_PROFILE", "nr207"]),
    ({"SAM2OCT_LABEL_STYLE": "colour"}, ["SAM2OCT_LABEL_STYLE", "colour"]),
    ({"SAM2OCT_CACHE_MB": "lots"}, ["SAM2OCT_CACHE_MB", "lots", "not a number"]),
    ({"SAM2OCT_CLASS_NAMES": "a,b,c"}, ["SAM2OCT_CLASS_NAMES", "3 class names", "9 classes"]),
    ({"SAM2_DEVICE": "not-a-device"}, ["SAM2_DEVICE", "not-a-device"]),
])
def test_bad_configuration_fails_init_clearly(tmp_path, caplog, env, words):
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    (tmp_path / "truncated.pt").write_bytes(TINY_CKPT.read_bytes()[:100_000])  # a cut-off download
    env = {k: v if v is None else v.format(tmp=tmp_path) for k, v in env.items()}
    before = dict(os.environ)
    with pytest.raises(Sam2OctError) as err:
        Worker(**env)
    message = str(err.value)
    for word in words:
        assert word.format(tmp=tmp_path) in message, message
    assert dict(os.environ) == before  # the harness put the environment back
    # said once in the worker's log, for the admin
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("cannot start" in m and message in m for m in logged)


# --- the Nuclio contract ------------------------------------------------------------------------

def test_dict_bytes_and_str_bodies_answer_alike(interactor, synth96):
    lm = truth(interactor, synth96)
    body = {"image": b64(synth96), "pos_points": [click_in(lm, 2)], "neg_points": []}
    as_dict = interactor.call(body)
    as_str = interactor.call(json.dumps(body), content_type="text/plain")
    as_bytes = interactor.call(json.dumps(body).encode(), content_type="application/octet-stream")
    assert as_dict[0] == 200
    assert as_dict == as_str == as_bytes


def test_wire_form_is_json_with_status(interactor, detector, synth96):
    ok = interactor.response({"image": b64(synth96)})
    bad = interactor.response({"pos_points": []})
    listed = detector.response({"image": b64(synth96)})
    for resp, status, kind in [(ok, 200, dict), (bad, 400, dict), (listed, 200, list)]:
        sent = wire(resp)
        assert sent["status_code"] == status
        assert sent["content_type"] == "application/json"
        assert sent["body_encoding"] == "text"
        assert isinstance(json.loads(sent["body"]), kind)  # a list body is JSON, not a Python repr
        assert json.loads(sent["body"]) == json.loads(resp.body)
    assert "error" in json.loads(bad.body)


# --- interactor: clicks pick layers -------------------------------------------------------------

def test_positive_click_picks_the_region_under_it(interactor, synth192):
    lm = truth(interactor, synth192)
    click = click_in(lm, 2)
    status, reply = interactor.call({"image": b64(synth192), "pos_points": [click], "neg_points": []})
    assert status == 200
    mask = stock_mask(reply, lm.shape)
    r, c = pixel_of(*click, lm.shape)
    assert reply["labels"] == [NR206[2]] and lm[r, c] == 2
    assert np.array_equal(mask, expected_selection(lm, [click]))
    assert reply["prompts"] == "selection"
    assert "threshold" not in reply and "brush" not in reply and "ignored_clicks" not in reply
    # the crop is the answer: nothing frame-sized rides along
    assert frame_sized_lists(reply, *lm.shape) == []
    assert len(json.dumps(reply)) < 4 * lm.size


def test_several_clicks_give_the_union_of_their_regions(interactor, synth192):
    lm = truth(interactor, synth192)
    clicks = [click_in(lm, 7), click_in(lm, 2), click_in(lm, 7, rank=1), click_in(lm, 3)]
    status, reply = interactor.call({"image": b64(synth192), "pos_points": clicks, "neg_points": []})
    assert status == 200
    mask = stock_mask(reply, lm.shape)
    assert reply["labels"] == [NR206[7], NR206[2], NR206[3]]  # in order of first click, once each
    assert np.array_equal(mask, expected_selection(lm, clicks))
    # every mask pixel has a picked class and lies in a region holding a click
    picked = [NR206.index(n) for n in reply["labels"]]
    assert np.isin(lm[mask], picked).all()
    lab, _ = ndimage.label(mask)
    holding = {lab[pixel_of(x, y, lm.shape)] for x, y in clicks}
    assert set(np.unique(lab[mask])) <= holding


def test_no_positive_click_gives_the_whole_retina(interactor, synth192):
    lm = truth(interactor, synth192)
    for body in ({}, {"pos_points": []}, {"pos_points": [], "neg_points": [], "obj_bbox": []}):
        status, reply = interactor.call({"image": b64(synth192), **body})
        assert status == 200
        assert np.array_equal(stock_mask(reply, lm.shape), lm != 0)
        present = sorted(set(np.unique(lm)) - {0})
        assert reply["labels"] == [NR206[k] for k in present]


def test_negative_click_removes_the_region_under_it(interactor, synth96):
    lm = truth(interactor, synth96)
    neg = click_in(lm, 7)
    removed = region_at(lm, *pixel_of(*neg, lm.shape))
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [], "neg_points": [neg]})
    assert status == 200
    assert np.array_equal(stock_mask(reply, lm.shape), (lm != 0) & ~removed)

    # a positive click inside the removed region is ignored; another one still picks
    keep, lost = click_in(lm, 2), [neg[0], neg[1]]
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [keep, lost], "neg_points": [neg]})
    assert status == 200
    assert np.array_equal(stock_mask(reply, lm.shape), expected_selection(lm, [keep]))
    assert reply["labels"] == [NR206[2]]
    assert reply["ignored_clicks"] == [lost]


def test_everything_removed_answers_no_shape_or_422(interactor, fork, synth96):
    lm = truth(interactor, synth96)
    click = click_in(lm, 2)
    body = {"image": b64(synth96), "pos_points": [click], "neg_points": [click]}
    # CVAT 2.60+ takes no shapes ("No shapes to display"); the reason names what removed the layer
    status, reply = interactor.call(body)
    assert status == 200 and reply["shapes"] == [] and reply["labels"] == []
    assert "negative click" in reply["reason"] and "background" not in reply["reason"]
    # older UIs need a mask: 422, with the same reason
    status, reply = fork.call(body)
    assert status == 422 and "negative click" in reply["error"] and "background" not in reply["error"]


def test_clicks_on_background_only_are_422_for_legacy_cvat(synth96):
    # the tiny model leaves background only next to layers, in specks the min-area merge removes
    unsnapped = Worker(SAM2OCT_SNAP_PX="0", SAM2OCT_MIN_AREA="0", SAM2OCT_CVAT_UI="legacy")
    lm = truth(unsnapped, synth96)
    background = np.argwhere(lm == 0)
    assert len(background) >= 2, "fixture frame needs background pixels"
    clicks = [[float(c) + 0.5, float(r) + 0.5] for r, c in background[:2]]
    status, reply = unsnapped.call({"image": b64(synth96), "pos_points": clicks, "neg_points": []})
    assert status == 422
    assert "background" in reply["error"] and set(reply) == {"error"}


def test_click_just_off_a_layer_picks_the_nearest_layer(exact, synth96):
    interactor = exact  # the min-area merge leaves this frame no background to click on
    lm = truth(interactor, synth96)
    r, c = np.argwhere(lm == 0)[0]
    click = [float(c) + 0.5, float(r) + 0.5]
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [click]})
    assert status == 200
    (given, moved), = reply["snapped_clicks"]
    assert given == click
    tr, tc = pixel_of(*moved, lm.shape)
    layer = np.argwhere(lm != 0)
    nearest = np.sqrt(((layer - [r, c]) ** 2).sum(axis=1)).min()
    assert lm[tr, tc] != 0 and math.hypot(tr - r, tc - c) == pytest.approx(nearest)
    assert np.array_equal(stock_mask(reply, lm.shape), region_at(lm, tr, tc))
    assert reply["labels"] == [NR206[lm[tr, tc]]]


@pytest.mark.parametrize("form", ["pairs", "reversed", "crossed", "flat"])
def test_box_limits_the_result(interactor, fork, synth96, form):
    lm = truth(interactor, synth96)
    x1, y1, x2, y2 = 20.25, 15.75, 75.25, 45.75
    box = {"pairs": [[x1, y1], [x2, y2]], "reversed": [[x2, y2], [x1, y1]],
           "crossed": [[x1, y2], [x2, y1]], "flat": [x1, y1, x2, y2]}[form]
    # pixels whose centre lies in the box: columns 20..74, rows 16..45
    inside = np.zeros(lm.shape, bool)
    inside[16:46, 20:75] = True
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [], "neg_points": [], "obj_bbox": box})
    assert status == 200
    assert np.array_equal(stock_mask(reply, lm.shape), (lm != 0) & inside)

    boxed = np.where(inside, lm, 0)
    click = click_in(boxed, 2)
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [click], "obj_bbox": box})
    assert status == 200
    mask = stock_mask(reply, lm.shape)
    assert not (mask & ~inside).any()
    assert np.array_equal(mask, expected_selection(boxed, [click]))
    # the fork's shapes are cut to the box too
    status, reply = fork.call({"image": b64(synth96), "pos_points": [click], "obj_bbox": box})
    assert status == 200 and np.array_equal(stock_mask(reply, lm.shape), mask)
    count, _ = centre_owners(reply["shapes"], lm.shape)
    assert count[~inside].sum() <= 0.02 * lm.size


def test_absent_none_and_empty_box_mean_no_box(interactor, synth96):
    lm = truth(interactor, synth96)
    click = click_in(lm, 2)
    replies = [interactor.call({"image": b64(synth96), "pos_points": [click], **extra})
               for extra in ({}, {"obj_bbox": None}, {"obj_bbox": []})]
    assert replies[0][0] == 200 and replies[0] == replies[1] == replies[2]
    assert np.array_equal(stock_mask(replies[0][1], lm.shape), expected_selection(lm, [click]))


def test_click_outside_the_box_is_ignored(interactor, fork, synth96):
    body = {"image": b64(synth96), "pos_points": [[5.5, 5.5]], "obj_bbox": [[50, 30], [75, 50]]}
    status, reply = interactor.call(body)
    assert status == 200 and reply["shapes"] == []
    assert "outside the box" in reply["reason"] and "background" not in reply["reason"]
    status, reply = fork.call(body)
    assert status == 422 and "outside the box" in reply["error"] and "background" not in reply["error"]


def test_box_outside_the_image_is_400(interactor, synth96):
    status, reply = interactor.call({"image": b64(synth96), "obj_bbox": [[200, 10], [300, 40]]})
    assert status == 400 and "obj_bbox" in reply["error"] and "96x62" in reply["error"]


def test_box_partly_outside_is_clipped(interactor, synth96):
    lm = truth(interactor, synth96)
    status, reply = interactor.call({"image": b64(synth96), "obj_bbox": [[-30, -5], [50, 30]]})
    assert status == 200
    inside = np.zeros(lm.shape, bool)
    inside[0:30, 0:50] = True
    assert np.array_equal(stock_mask(reply, lm.shape), (lm != 0) & inside)


def test_clicks_just_outside_are_clipped_far_outside_refused(interactor, synth96):
    lm = truth(interactor, synth96)
    H, W = lm.shape
    r = int(np.argwhere(lm[:, W - 1] != 0)[0, 0])
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [[W + 2, r + 0.5]]})
    assert status == 200
    mask = stock_mask(reply, lm.shape)
    assert mask[r, W - 1] and np.array_equal(mask, region_at(lm, r, W - 1))

    r0 = int(np.argwhere(lm[:, 0] != 0)[0, 0])
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [[-1.5, r0 + 0.5]]})
    assert status == 200 and np.array_equal(stock_mask(reply, lm.shape), region_at(lm, r0, 0))

    for far in ([W + 50, 10], [10, -40], [-1e6, 1e6]):
        status, reply = interactor.call({"image": b64(synth96), "pos_points": [far]})
        assert status == 400 and "outside the 96x62 image" in reply["error"]
    status, reply = interactor.call({"image": b64(synth96), "neg_points": [[W + 50, 10]]})
    assert status == 400 and "negative" in reply["error"]


def test_clicks_on_one_frame_reuse_its_features(interactor):
    # a frame this worker has not seen yet
    data = encode(Image.open(SYNTH).resize((96, 62), Image.BILINEAR).transpose(Image.FLIP_LEFT_RIGHT))
    p = interactor.model.predictor
    before = p.encoder_calls
    lm = truth(interactor, data)  # encodes it once
    for click in (click_in(lm, 2), click_in(lm, 7), click_in(lm, 3), [10.0, 10.0]):
        status, _ = interactor.call({"image": b64(data), "pos_points": [click]})
        assert status in (200, 422)
    interactor.call({"image": b64(data)})
    assert p.encoder_calls == before + 1


def test_threshold_is_reported_ignored(interactor, synth96):
    lm = truth(interactor, synth96)
    click = click_in(lm, 2)
    plain = interactor.call({"image": b64(synth96), "pos_points": [click]})[1]
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [click], "threshold": 0.9})
    assert status == 200 and reply["threshold"].startswith("ignored")
    del reply["threshold"]
    assert reply == plain


# --- interactor: shapes for the CVAT-OCT fork ---------------------------------------------------

def test_shapes_carry_profile_names_and_tile(fork, synth192):
    lm = truth(fork, synth192)
    status, reply = fork.call({"image": b64(synth192), "pos_points": [click_in(lm, 2)]})
    assert status == 200
    shapes = reply["shapes"]
    assert shapes and all(s["type"] == "polygon" for s in shapes)
    assert {s["label"] for s in shapes} <= set(NR206[1:])
    assert {NR206[2], NR206[7]} <= {s["label"] for s in shapes}
    # shapes describe every layer of the frame, not only the picked one
    check_tiling(shapes, lm, tolerance=0.03)
    count, _ = centre_owners(shapes, lm.shape)
    assert count.max() <= 1
    check_classes(centre_masks(shapes, lm.shape), lm)


def test_unsimplified_shapes_reproduce_the_label_map(exact, synth96):
    lm = truth(exact, synth96)
    status, reply = exact.call({"image": b64(synth96), "pos_points": [click_in(lm, 2)]})
    assert status == 200
    check_tiling(reply["shapes"], lm, tolerance=0)
    count, cls = centre_owners(reply["shapes"], lm.shape)
    assert np.array_equal(count, (lm != 0).astype(int))
    assert np.array_equal(cls, lm)


def test_shapes_follow_box_and_negative_clicks(exact, synth96):
    lm = truth(exact, synth96)
    neg = click_in(lm, 7)
    sel = np.where(region_at(lm, *pixel_of(*neg, lm.shape)), 0, lm)
    sel[:, 60:] = 0  # box: columns 0..59
    status, reply = exact.call({"image": b64(synth96), "neg_points": [neg], "obj_bbox": [[0, 0], [60, 62]]})
    assert status == 200
    count, cls = centre_owners(reply["shapes"], lm.shape)
    assert np.array_equal(count, (sel != 0).astype(int)) and np.array_equal(cls, sel)


def test_index_label_style(synth96):
    h = Worker(SAM2OCT_LABEL_STYLE="index", SAM2OCT_CVAT_UI="cvat-oct")
    lm = truth(h, synth96)
    status, reply = h.call({"image": b64(synth96), "pos_points": [click_in(lm, 3), click_in(lm, 2)]})
    assert status == 200
    assert reply["labels"] == ["OCT_Object_3", "OCT_Object_2"]
    labels = {s["label"] for s in reply["shapes"]}
    assert labels and labels <= {f"OCT_Object_{k}" for k in range(1, 9)}
    # brush labels may use either naming
    brush = [{"label": "INL", "mask": [0, 4, 1, 1, 2, 2]}, {"label": "OCT_Object_5", "mask": [0, 1, 3, 3, 3, 3]}]
    status, reply = h.call({"image": b64(synth96), "pos_points": [click_in(lm, 2)], "brush": brush})
    assert status == 200 and reply["brush"].startswith("ignored")


# --- full-size B-scans (a handful: ~3 s each with the noisy tiny model) -------------------------

@pytest.fixture(scope="module")
def spectralis_full():
    return SPECTRALIS.read_bytes()


def test_full_size_interactor_reply(fork, spectralis_full):
    lm = truth(fork, spectralis_full)
    assert lm.shape == (496, 768)
    clicks = [click_in(lm, 2), click_in(lm, 7)]
    status, reply = fork.call({"image": b64(spectralis_full), "pos_points": clicks, "neg_points": [],
                                     "obj_bbox": None})
    assert status == 200
    assert np.array_equal(stock_mask(reply, lm.shape), expected_selection(lm, clicks))
    assert reply["labels"] == [NR206[2], NR206[7]]
    assert {s["label"] for s in reply["shapes"]} <= set(NR206[1:])
    check_tiling(reply["shapes"], lm, tolerance=0.03)
    check_classes(centre_masks(reply["shapes"], lm.shape), lm)
    assert frame_sized_lists(reply, *lm.shape) == []


def test_full_size_detector_covers_the_label_map(detector, spectralis_full):
    pred = prediction(detector, spectralis_full)
    status, items = detector.call({"image": b64(spectralis_full)})
    assert status == 200
    lm = cleaned(detector, pred.label_map)
    owner = detector_owner(items, lm.shape)
    assert np.array_equal(owner, lm)  # the masks are the cleaned label map, pixel for pixel
    check_classes([(it["label"], pixels) for it, (pixels, _) in zip(items, detector_masks(items, lm.shape))], lm)


# --- detector -----------------------------------------------------------------------------------

def detector_masks(items, shape):
    """Checks CVAT's detector item format; returns (mask pixels as (rows, cols), polygon) per item."""
    H, W = shape
    out = []
    for item in items:
        assert set(item) == {"label", "type", "mask", "points", "confidence"}
        assert item["type"] == "mask" and item["label"] in NR206[1:]
        assert isinstance(item["confidence"], str) and 0 <= float(item["confidence"]) <= 1
        m = item["mask"]
        assert all(type(v) is int for v in m)
        xtl, ytl, xbr, ybr = m[-4:]
        assert 0 <= xtl <= xbr < W and 0 <= ytl <= ybr < H
        assert len(m) == (xbr - xtl + 1) * (ybr - ytl + 1) + 4
        assert set(m[:-4]) <= {0, 255} and 255 in m[:-4]
        crop = np.array(m[:-4]).reshape(ybr - ytl + 1, xbr - xtl + 1) == 255
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        rows, cols = np.nonzero(crop)
        pts = item["points"]
        assert len(pts) % 2 == 0 and len(pts) >= 6 and all(isinstance(v, (int, float)) for v in pts)
        poly = shapely.Polygon(np.array(pts, float).reshape(-1, 2))
        assert poly.is_valid
        xs, ys = pts[0::2], pts[1::2]
        assert min(xs) >= 0 and max(xs) <= W and min(ys) >= 0 and max(ys) <= H
        out.append(((rows + ytl, cols + xtl), poly))
    return out


def detector_owner(items, shape):
    """Class index per pixel from the items' masks; checks masks are disjoint."""
    owner = np.zeros(shape, int)
    for item, (pixels, _) in zip(items, detector_masks(items, shape)):
        assert not owner[pixels].any(), "two detector masks overlap"
        owner[pixels] = NR206.index(item["label"])
    return owner


def test_detector_sends_one_mask_per_layer_with_its_largest_polygon(detector, synth192):
    pred = prediction(detector, synth192)
    lm = cleaned(detector, pred.label_map)
    status, items = detector.call({"image": b64(synth192)})
    assert status == 200 and isinstance(items, list) and items
    # one item per layer present in the cleaned map, and its mask is exactly that layer's pixels
    labels = [it["label"] for it in items]
    assert labels == [NR206[k] for k in np.unique(lm) if k]
    owner = detector_owner(items, lm.shape)
    assert np.array_equal(owner, lm)
    for item, (pixels, poly) in zip(items, detector_masks(items, lm.shape)):
        k = NR206.index(item["label"])
        # confidence: the mean probability of the predicted class over the mask
        assert abs(float(item["confidence"]) - pred.confidence[lm == k].mean()) < 6e-4
        # points: the layer's largest polygon (a region around a hole comes in pieces), as traced
        opts = detector.model.settings.options
        pieces = [sh for sh in label_map_to_shapes(lm, NR206, tolerance=opts.simplify, min_area=0)
                  if sh["label"] == item["label"]]
        sizes = np.bincount(rasterize_shapes(pieces, lm.shape).ravel(), minlength=len(pieces) + 1)[1:]
        assert item["points"] == [v for xy in pieces[int(np.argmax(sizes))]["points"] for v in xy]


def test_unsimplified_detector_masks_equal_the_label_map(synth96):
    h = Worker(SAM2OCT_MODE="detector", SAM2OCT_SIMPLIFY="0", SAM2OCT_MIN_AREA="0")
    lm = truth(h, synth96)
    status, items = h.call({"image": b64(synth96)})
    assert status == 200
    owner = detector_owner(items, lm.shape)
    assert np.array_equal(owner, lm)
    assert len(items) == len(np.unique(lm)) - 1  # one mask per layer, however many regions it has


def test_detector_threshold_drops_low_confidence_items(detector, synth96):
    status, every = detector.call({"image": b64(synth96)})
    assert status == 200 and len(every) > 2
    assert detector.call({"image": b64(synth96), "threshold": 0}) == (200, every)
    assert detector.call({"image": b64(synth96), "threshold": 0.99}) == (200, [])  # confidences ~0.1-0.4
    scores = sorted({float(it["confidence"]) for it in every})
    gaps = [(b - a, (a + b) / 2) for a, b in zip(scores, scores[1:]) if b - a > 0.002]
    assert gaps, "fixture frame needs distinct confidences"
    t = sorted(gaps)[len(gaps) // 2][1]
    status, kept = detector.call({"image": b64(synth96), "threshold": t})
    assert status == 200
    assert kept == [it for it in every if float(it["confidence"]) > t]
    assert 0 < len(kept) < len(every)


def test_detector_ignores_prompts_and_refuses_bad_requests(detector, synth96):
    plain = detector.call({"image": b64(synth96)})
    assert detector.call({"image": b64(synth96), "pos_points": [[1, 1]], "obj_bbox": [[0, 0], [5, 5]]}) == plain
    status, reply = detector.call({"threshold": 0.5})
    assert status == 400 and "image" in reply["error"]
    status, reply = detector.call({"image": b64(synth96), "threshold": 2})
    assert status == 400 and "threshold" in reply["error"]


# --- brush and prompts --------------------------------------------------------------------------

def test_brush_is_ignored_by_an_unprompted_profile(interactor, synth96):
    lm = truth(interactor, synth96)
    click = click_in(lm, 2)
    plain = interactor.call({"image": b64(synth96), "pos_points": [click]})[1]
    brush = [{"label": "INL", "mask": [0, 6, 10, 10, 12, 11]}]
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [click], "brush": brush})
    assert status == 200
    assert reply.pop("brush").startswith("ignored: ")
    assert reply == plain  # nothing else changed


def test_brush_reply_names_the_profile(interactor, synth96):
    lm = truth(interactor, synth96)
    brush = [{"label": "OS", "mask": [0, 1, 0, 0, 0, 0]}]
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [click_in(lm, 2)], "brush": brush})
    assert status == 200 and reply["brush"].startswith("ignored: ") and "nr206" in reply["brush"]


@pytest.mark.parametrize("brush, words", [
    ([{"label": "Retina", "mask": [0, 1, 0, 0, 0, 0]}], ["'Retina'", "NFL"]),
    ([{"label": "INL", "mask": [0, 5, 0, 0, 0, 0]}], ["add up to 5", "1 pixels"]),
    ([{"label": "INL", "mask": [0, 1, 500, 0, 500, 0]}], ["outside the 96x62 image"]),
    ([{"label": "INL", "mask": [0, 1, 5, 5, 4, 4]}], ["inverted"]),
    ([{"label": "INL", "mask": [0, 1]}], ["run lengths and a box"]),
    ([{"label": "INL", "mask": "0,1,0,0,0,0"}], ["brush[0].mask"]),
    ([{"label": "INL", "mask": [0, 1.5, 0, 0, 0, 0]}], ["brush[0].mask"]),
    ([{"label": "INL", "mask": [0, True, 0, 0, 0, 0]}], ["brush[0].mask"]),
    ([{"mask": [0, 1, 0, 0, 0, 0]}], ["brush[0]", "label"]),
    (["INL"], ["brush[0]"]),
    ({"label": "INL"}, ["'brush' must be a list"]),
])
def test_bad_brush_is_400(interactor, synth96, brush, words):
    status, reply = interactor.call({"image": b64(synth96), "pos_points": [[40.5, 30.5]], "brush": brush})
    assert status == 400, reply
    for word in words:
        assert word in reply["error"]


def spy_decode(monkeypatch, h):
    calls = []
    real = h.model.predictor.decode

    def spy(encoded, **kwargs):
        result = real(encoded, **kwargs, logits=True)  # the logits too, for the comparisons below
        calls.append((kwargs, result))
        return result

    monkeypatch.setattr(h.model.predictor, "decode", spy)
    return calls, real


def test_prompted_profile_feeds_clicks_and_box_to_the_model(prompted, monkeypatch, synth96):
    unprompted = truth(prompted, synth96)
    calls, real = spy_decode(monkeypatch, prompted)
    pos, neg = click_in(unprompted, 2), click_in(unprompted, 7)
    status, reply = prompted.call({"image": b64(synth96), "pos_points": [pos], "neg_points": [neg],
                                   "obj_bbox": [[92, 60], [3, 2]]})
    (kwargs, result), = calls
    np.testing.assert_array_equal(kwargs["points"], [pos, neg])
    np.testing.assert_array_equal(kwargs["labels"], [1, 0])
    np.testing.assert_array_equal(kwargs["box"], [3, 2, 92, 60])
    assert kwargs["dense_labels"] is None
    # the prompts changed what the model says
    base = real(prompted.model.predictor.encode(read_image(synth96)), logits=True)
    assert not torch.equal(base.low_res_logits, result.low_res_logits)
    assert (base.label_map != result.label_map).any()
    # the reply selects from the prompted label map: box, then the negative click, then the positive
    sel = np.zeros(unprompted.shape, int)
    sel[2:60, 3:92] = cleaned(prompted, result.label_map)[2:60, 3:92]
    r, c = pixel_of(*neg, sel.shape)
    if sel[r, c]:
        sel[region_at(sel, r, c)] = 0
    expected = expected_selection(sel, [pos])
    assert expected.any(), "choose a click the prompted map does not put on background"
    assert status == 200 and reply["prompts"] == "model"
    assert np.array_equal(stock_mask(reply, sel.shape), expected)


def test_prompted_profile_without_prompts(prompted, monkeypatch, synth96):
    calls, _ = spy_decode(monkeypatch, prompted)
    status, reply = prompted.call({"image": b64(synth96)})
    (kwargs, result), = calls
    # the confidence: the reply's mask shape carries it (CVAT 2.60+ filters on it)
    assert kwargs == {"points": None, "labels": None, "box": None, "dense_labels": None, "confidence": True}
    assert status == 200 and reply["prompts"] == "model" and "brush" not in reply
    assert np.array_equal(stock_mask(reply, result.label_map.shape), cleaned(prompted, result.label_map) != 0)


def test_prompted_profile_paints_brush_labels(prompted, monkeypatch, synth96):
    calls, real = spy_decode(monkeypatch, prompted)
    brush = [
        # INL (class 3): the whole 3x2 box x 10..12, y 20..21
        {"label": "INL", "mask": [0, 6, 10, 20, 12, 21]},
        # OCT_Object_5 (ONL): in box x 30..33, y 5..6: skip 1, paint 2, skip 3, paint 2
        {"label": "OCT_Object_5", "mask": [1, 2, 3, 2, 30, 5, 33, 6]},
    ]
    status, reply = prompted.call({"image": b64(synth96), "brush": brush})
    (kwargs, result), = calls
    dense = kwargs["dense_labels"]
    want = np.full((62, 96), -1)
    want[20:22, 10:13] = 3
    want[5, 31:33] = 5
    want[6, 32:34] = 5
    np.testing.assert_array_equal(dense, want)
    assert kwargs["points"] is None and kwargs["box"] is None
    assert status == 200 and reply["brush"] == "used"
    base = real(prompted.model.predictor.encode(read_image(synth96)), logits=True)
    assert not torch.equal(base.low_res_logits, result.low_res_logits)


# --- refused requests ---------------------------------------------------------------------------

def _bad_requests(image):
    ok = {"image": image}
    return [
        ({"pos_points": [[1, 2]]}, 400, ["missing 'image'"]),
        ({"image": 123}, 400, ["'image'", "base64 string", "int"]),
        ({"image": ["abc"]}, 400, ["'image'", "base64 string"]),
        ({"image": "not base64 at all!"}, 400, ["'image'", "not valid base64"]),
        ({"image": b64(b"these bytes are no picture")}, 400, ["not a decodable image"]),
        ({"image": ""}, 400, ["'image' is empty"]),
        ({**ok, "pos_points": [[1, 2, 3]]}, 400, ["'pos_points[0]'", "[x, y] pair"]),
        ({**ok, "pos_points": [1, 2]}, 400, ["'pos_points[0]'", "[x, y] pair"]),
        ({**ok, "pos_points": "10,20"}, 400, ["'pos_points'", "list"]),
        ({**ok, "pos_points": [["10", "20"]]}, 400, ["'pos_points[0]' coordinate", "number"]),
        ({**ok, "neg_points": [[True, 20]]}, 400, ["'neg_points[0]' coordinate", "number"]),
        ({**ok, "neg_points": [[1, None]]}, 400, ["'neg_points[0]' coordinate", "number"]),
        ({**ok, "pos_points": [[1, 1]] * 65}, 400, ["'pos_points'", "65 points", "at most 64"]),
        ({**ok, "obj_bbox": [[1, 2], [3]]}, 400, ["'obj_bbox'"]),
        ({**ok, "obj_bbox": [1, 2, 3]}, 400, ["'obj_bbox'"]),
        ({**ok, "obj_bbox": "0,0,10,10"}, 400, ["'obj_bbox'"]),
        ({**ok, "obj_bbox": {"x1": 0}}, 400, ["'obj_bbox'"]),
        ({**ok, "obj_bbox": [[1, 2], [3, "4"]]}, 400, ["'obj_bbox' coordinate"]),
        ({**ok, "obj_bbox": [[5, 5], [5, 40]]}, 400, ["'obj_bbox'", "covers no pixel"]),
        ({**ok, "threshold": -0.1}, 400, ["'threshold'", "[0, 1]"]),
        ({**ok, "threshold": 1.5}, 400, ["'threshold'", "[0, 1]"]),
        ({**ok, "threshold": "0.5"}, 400, ["'threshold'", "number"]),
        ({**ok, "threshold": True}, 400, ["'threshold'", "number"]),
    ]


def test_bad_requests_are_4xx_naming_the_problem(interactor, synth96):
    for body, status, words in _bad_requests(b64(synth96)):
        got, reply = interactor.call(body)
        assert got == status, (body if len(str(body)) < 300 else list(body), reply)
        assert set(reply) == {"error"}
        for word in words:
            assert word in reply["error"], (word, reply)


@pytest.mark.parametrize("text, words", [
    ('{"image": "IMG", "pos_points": [[NaN, 3]]}', ["'pos_points[0]' coordinate", "finite"]),
    ('{"image": "IMG", "neg_points": [[3, Infinity]]}', ["'neg_points[0]' coordinate", "finite"]),
    ('{"image": "IMG", "obj_bbox": [[0, 0], [-Infinity, 3]]}', ["'obj_bbox' coordinate", "finite"]),
    ('{"image": "IMG", "threshold": NaN}', ["'threshold'", "finite"]),
    ('{"image": "IMG", "pos_points": [[1e400, 3]]}', ["finite"]),
    ("{not json", ["not valid JSON"]),
    ('[{"image": "IMG"}]', ["JSON object", "list"]),
    ('"IMG"', ["JSON object", "str"]),
    ("", ["empty"]),
    ("   \n", ["empty"]),
    ("[" * 100_000, ["not valid JSON"]),
])
def test_bad_bodies_are_400(interactor, synth96, text, words):
    text = text.replace("IMG", b64(synth96))
    for body in (text, text.encode()):
        status, reply = interactor.call(body, content_type="text/plain")
        assert status == 400, reply
        for word in words:
            assert word in reply["error"], reply


@pytest.mark.parametrize("body, words", [
    ([{"image": "abc"}], ["JSON object", "list"]),  # Nuclio decodes a JSON list body to a list
    (42, ["JSON object", "int"]),
    (None, ["empty"]),
    (b"\xff\xfe\x00", ["UTF-8"]),
])
def test_body_of_another_type_is_400(interactor, body, words):
    status, reply = interactor.call(body)
    assert status == 400
    for word in words:
        assert word in reply["error"], reply


def test_size_limits_are_413(synth96):
    h = Worker(SAM2OCT_MAX_PIXELS="5000", SAM2OCT_MAX_IMAGE_BYTES=str(len(synth96) - 1))
    status, reply = h.call({"image": b64(synth96)})
    assert status == 413 and str(len(synth96) - 1) in reply["error"]
    flat = encode(Image.new("L", (96, 62), 128))  # 5952 pixels in a few bytes
    assert len(flat) < len(synth96)
    status, reply = h.call({"image": b64(flat)})
    assert status == 413 and "5000" in reply["error"] and "SAM2OCT_MAX_PIXELS" in reply["error"]
    assert h.model.predictor.encoder_calls == 0


# --- faults: 500 / 503, and the worker keeps serving --------------------------------------------

def test_internal_fault_is_500_and_the_worker_recovers(interactor, monkeypatch, caplog, synth96):
    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    with monkeypatch.context() as m:
        m.setattr(interactor.model.predictor, "decode", broken)
        status, reply = interactor.call({"image": b64(synth96), "pos_points": [[40.5, 30.5]]})
    assert status == 500 and reply == {"error": "internal error: RuntimeError"}
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "Traceback" in logged and "decoder exploded" in logged
    assert interactor.call({"image": b64(synth96)})[0] == 200


# exception classes, not instances: a raised instance kept at module level would keep its
# traceback's frames (and the worker's cached features) alive for the whole session
class _CudaOOM(torch.OutOfMemoryError):
    def __init__(self):
        super().__init__("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("error", [_CudaOOM, MemoryError])
def test_out_of_memory_is_503_and_clears_the_cache(interactor, monkeypatch, synth96, error):
    p = interactor.model.predictor
    assert interactor.call({"image": b64(synth96)})[0] == 200
    assert len(p.cache) > 0

    def oom(*args, **kwargs):
        raise error()

    with monkeypatch.context() as m:
        m.setattr(p, "decode", oom)
        status, reply = interactor.call({"image": b64(synth96)})
    assert status == 503 and "out of memory" in reply["error"]
    assert len(p.cache) == 0
    calls = p.encoder_calls
    assert interactor.call({"image": b64(synth96)})[0] == 200
    assert p.encoder_calls == calls + 1  # encoded afresh


def test_detector_skips_a_frame_it_cannot_read_and_logs_why(detector, synth96):
    """Stock CVAT shows only "422 Client Error" and aborts the task's automatic annotation: a
    frame the detector cannot read answers no shapes instead, and the log says why."""
    for data, why in [(b"not an image at all", "not a decodable image"),
                      (synth96[: len(synth96) // 2], "could not be")]:
        before = len(detector.log.lines("warn"))
        status, reply = detector.call({"image": b64(data)})
        assert (status, reply) == (200, [])
        logged = detector.log.lines("warn")[before:]
        assert any("frame skipped" in line and why in line for line in logged), logged
    # a malformed request is still refused
    assert detector.call({"image": "%%% not base64"}).status == 400
    assert detector.call({"pos_points": []}).status == 400
