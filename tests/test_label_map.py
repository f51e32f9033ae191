"""One label map (issue 19) and the defects around it (issue 15: 1, 2, 4, 9, one cache).

The cleaned label map (the model's argmax map after the min-area merge) is the answer at every
front door: clicks select from it, masks are its pixels, polygons trace it, ``evaluate`` scores
it. Real B-scans (tests/data/spectralis) with the tiny fixture checkpoint, whose noisy maps make
the merge matter; expected answers are computed here from the label maps, not written down.
"""

import io
import json
import zipfile

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import pytest
from conftest import DATA, TINY_CKPT, TINY_CONFIG
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_sdk.masks import decode_mask
from cvat_sdk import models
from PIL import Image
from scipy import ndimage

from harness import Worker, b64, encode
from sam2oct import cli
from sam2oct.geometry.merge import clean_label_map
from sam2oct.geometry.polygons import label_map_to_shapes, rasterize_shapes, trace_label_map
from sam2oct.model.profiles import NR206_CLASSES
from sam2oct.pipeline.cache import FrameCache
from sam2oct.pipeline.options import PipelineOptions
from sam2oct.pipeline.pipeline import Pipeline
from test_cvat_function import load
from test_datasets import cvat_xml, mask_xml, polygon_xml

SPECTRALIS = DATA / "spectralis"
EXPORT = SPECTRALIS / "spectralis_layers_cvat_for_images_1.1.zip"
TINY = (f"checkpoint=str:{TINY_CKPT}", f"config=str:{TINY_CONFIG}")
NAMES = list(NR206_CLASSES)


def real_bscans() -> dict:
    """{file name: PNG bytes} of the real B-scans shipped with the tests."""
    with zipfile.ZipFile(EXPORT) as zf:
        out = {n.split("/")[-1]: zf.read(n) for n in zf.namelist() if n.startswith("images/")}
    out["Willis_B_716_0_bscan_u8.png"] = (SPECTRALIS / "Willis_B_716_0_bscan_u8.png").read_bytes()
    return out


def grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(TINY_CONFIG)))


@pytest.fixture(scope="module")
def exact():
    """Polygons unsimplified, so they rasterize to the map they trace; the merge stays on."""
    return Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(TINY_CONFIG), simplify=0.0))


@pytest.fixture(scope="module")
def frames():
    return real_bscans()


# --- geometry: one cleaned map, traced unchanged -----------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_cleaned_map_traces_to_the_same_shapes_as_the_raw_map(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(8, 90, 2)
    layers = (np.arange(h)[:, None] * 9 // h).repeat(w, 1)
    noisy = np.where(rng.random((h, w)) < 0.35, rng.integers(0, 9, (h, w)), layers).astype(np.uint8)
    for min_area in (0, 2, 16, 200):
        cleaned = clean_label_map(noisy, min_area)
        assert cleaned.dtype == noisy.dtype and cleaned.shape == noisy.shape
        for tolerance in (0.0, 1.0):
            raw_shapes = label_map_to_shapes(noisy, NAMES, tolerance=tolerance, min_area=min_area)
            assert label_map_to_shapes(cleaned, NAMES, tolerance=tolerance, min_area=0) == raw_shapes
            assert label_map_to_shapes(cleaned, NAMES, tolerance=tolerance, min_area=min_area) == raw_shapes
        # every region left has min_area pixels (or the frame is one region)
        for k in np.unique(cleaned):
            lab, n = ndimage.label(cleaned == k)
            sizes = np.bincount(lab.ravel())[1:]
            assert n == 0 or sizes.min() >= min_area or (n == 1 and sizes[0] == cleaned.size)
        # unsimplified polygons are the cleaned map, pixel for pixel; owner says which shape holds what
        shapes, owner = trace_label_map(cleaned, NAMES, tolerance=0, min_area=0)
        assert np.array_equal(rasterize_shapes(shapes, cleaned.shape), owner)
        classes = np.array([0] + [NAMES.index(s["label"]) for s in shapes])
        assert np.array_equal(classes[owner], cleaned)


# --- the front doors answer from the cleaned map -------------------------------------------------

def test_clicks_masks_and_polygons_come_from_one_map(exact, frames):
    data = frames["Willis_B_716_0_bscan_u8.png"]
    enc = exact.encode(grey(data))
    raw = exact.predict(enc).label_map
    cleaned = clean_label_map(raw, exact.options.min_area)
    assert (cleaned != raw).any(), "the fixture map must be noisy enough for the merge to matter"
    assert np.array_equal(exact.label_map(enc), cleaned)
    # polygons trace it
    shapes = exact.frame_shapes(enc)
    classes = np.array([0] + [NAMES.index(s["label"]) for s in shapes])
    assert np.array_equal(classes[rasterize_shapes(shapes, cleaned.shape)], cleaned)
    # a click selects from it: a speck of the raw map merged away is not what the click gets
    r, c = np.argwhere(cleaned != raw)[0]
    picked = exact.interact(enc, [[c + 0.5, r + 0.5]], [])
    lab, _ = ndimage.label(cleaned == cleaned[r, c])
    assert np.array_equal(picked.mask, lab == lab[r, c]) and picked.picked == [int(cleaned[r, c])]
    # the detector's regions are its pixels exactly, each once
    owner = np.zeros(cleaned.shape, int)
    for region in exact.regions(enc):
        full = region.full_mask(*cleaned.shape)
        assert not owner[full].any() and (cleaned[full] == region.class_index).all()
        owner[full] = region.class_index
    assert np.array_equal(owner, cleaned)


# --- issue 19's done-when: auto-annotate's output, exported, scores >= 0.98 under evaluate ---------

def cvat_shapes_xml(shapes, height, width):
    """cvat-sdk shapes of one frame as CVAT for images 1.1 writes them."""
    out = []
    for s in shapes:
        label = NAMES[s.label_id]
        if s.type.value == "mask":
            out.append(mask_xml(label, decode_mask(s.points, image_width=width, image_height=height)))
        else:
            out.append(polygon_xml(label, np.reshape(s.points, (-1, 2))))
    return out


@pytest.mark.parametrize("conv_mask_to_poly", [False, True])
def test_auto_annotate_export_scores_as_the_model_under_evaluate(frames, tmp_path, conv_mask_to_poly, capsys):
    detector = load(*TINY)  # every other option at its default, as a lab runs it
    task_labels = [models.Label(id=100 + k, name=n, type="any", attributes=[], sublabels=[]) for k, n in enumerate(NAMES) if k]
    mapper = _AnnotationMapper(None, detector.spec.labels, task_labels, allow_unmatched_labels=False,
                               conv_mask_to_poly=conv_mask_to_poly)
    images = []
    (tmp_path / "images").mkdir()
    for name, data in frames.items():
        image = Image.open(io.BytesIO(data))
        ctx = _DetectionFunctionContextImpl(frame_name=name, conf_threshold=None, conv_mask_to_poly=conv_mask_to_poly)
        shapes = detector.detect(ctx, image)
        mapper.validate_and_remap(shapes, 0)  # what cvat-sdk's driver does before uploading
        assert {s.type.value for s in shapes} == {"polygon" if conv_mask_to_poly else "mask"}
        for s in shapes:  # remap gave task label ids; the export names the labels
            s.label_id = next(k for k, n in enumerate(NAMES) if n == next(t.name for t in task_labels if t.id == s.label_id))
        w, h = image.size
        images.append((name, w, h, cvat_shapes_xml(shapes, h, w), ""))
        (tmp_path / "images" / name).write_bytes(data)
    (tmp_path / "annotations.xml").write_bytes(cvat_xml(images))
    report = tmp_path / "report.json"
    base = ["evaluate", str(tmp_path), "--checkpoint", str(TINY_CKPT), "--config", str(TINY_CONFIG)]
    assert cli.main(base + ["--json", str(report)]) == 0
    scored = json.loads(report.read_text())
    assert scored["images"] == len(frames) and scored["label_map"].startswith("cleaned")
    # polygons are simplified (1 px): on the fixture model's ragged layers they lose a little
    assert scored["mean_iou"] >= (0.98 if not conv_mask_to_poly else 0.9)
    if not conv_mask_to_poly:  # masks are the map's pixels: nothing is lost at all
        assert scored["mean_iou"] == 1.0
        # --raw scores the argmax map, which the merge changed
        assert cli.main(base + ["--raw", "--json", str(report)]) == 0
        raw = json.loads(report.read_text())
        assert raw["label_map"] == "raw" and raw["mean_iou"] < scored["mean_iou"]


# --- defect 9: one mask per layer per B-scan ------------------------------------------------------

def test_detector_sends_one_mask_per_layer(frames):
    detector = load(*TINY)
    p = detector.pipeline
    data = frames["Willis_B_716_2.png"]
    image = Image.open(io.BytesIO(data))
    ctx = _DetectionFunctionContextImpl(frame_name="f.png", conf_threshold=None, conv_mask_to_poly=False)
    shapes = detector.detect(ctx, image)
    cleaned = clean_label_map(p.predict(p.encode(grey(data))).label_map, p.options.min_area)
    layers = [int(k) for k in np.unique(cleaned) if k]
    assert sorted(s.label_id for s in shapes) == layers  # one shape per layer
    w, h = image.size
    for s in shapes:
        assert s.type.value == "mask"
        assert np.array_equal(decode_mask(s.points, image_width=w, image_height=h), cleaned == s.label_id)
    assert any(ndimage.label(cleaned == s.label_id)[1] > 1 for s in shapes)  # several parts in one mask
    # with --conv-mask-to-poly: one polygon per region (piece), as many as the frame's shapes
    ctx = _DetectionFunctionContextImpl(frame_name="f.png", conf_threshold=None, conv_mask_to_poly=True)
    polys = detector.detect(ctx, image)
    assert {s.type.value for s in polys} == {"polygon"} and len(polys) == len(p.frame_shapes(p.encode(grey(data))))


def test_nuclio_detector_sends_one_mask_per_layer(frames):
    worker = Worker(SAM2OCT_MODE="detector")
    data = frames["Willis_B_716_4.png"]
    status, items = worker.call({"image": b64(data)})
    p = worker.model.pipeline
    cleaned = clean_label_map(p.predict(p.encode(p.read_image(data))).label_map, p.options.min_area)
    assert status == 200
    assert [it["label"] for it in items] == [NAMES[k] for k in np.unique(cleaned) if k]
    for it in items:
        *bits, x1, y1, x2, y2 = it["mask"]
        full = np.zeros(cleaned.shape, bool)
        full[y1:y2 + 1, x1:x2 + 1] = np.reshape(bits, (y2 - y1 + 1, x2 - x1 + 1)) != 0
        assert np.array_equal(full, cleaned == NAMES.index(it["label"]))


# --- defect 1: negative clicks and the fork's shapes agree ------------------------------------------

def shared_edge_click(cleaned):
    """A click exactly on the pixel edge between two layers, one above the other: (x, y), and the
    pixel (row, col) it falls in (the lower one)."""
    above, below = cleaned[:-1], cleaned[1:]
    rows, cols = np.nonzero((above != below) & (above != 0) & (below != 0))
    r, c = rows[len(rows) // 2] + 1, cols[len(rows) // 2]
    return [c + 0.5, float(r)], (r, c)


def test_negative_clicks_leave_shapes_equal_to_the_map_less_the_clicked_regions(exact, frames):
    enc = exact.encode(grey(frames["Willis_B_716_0_bscan_u8.png"]))
    cleaned = exact.label_map(enc)
    edge, (er, ec) = shared_edge_click(cleaned)
    layer = np.argwhere(cleaned != 0)
    negs = [edge, [layer[len(layer) // 3][1] + 0.5, layer[len(layer) // 3][0] + 0.5]]
    pos = [[layer[-1][1] + 0.5, layer[-1][0] + 0.5]]
    expected = cleaned.copy()
    for x, y in negs:
        r, c = int(y), int(x)
        if expected[r, c]:
            lab, _ = ndimage.label(expected == expected[r, c])
            expected[lab == lab[r, c]] = 0
    above = cleaned[er - 1, ec]
    picked = exact.interact(enc, pos, negs, shapes=True)
    classes = np.array([0] + [NAMES.index(s["label"]) for s in picked.shapes])
    got = classes[rasterize_shapes(picked.shapes, cleaned.shape)]
    assert np.array_equal(got, expected)
    assert got[er - 1, ec] == above != 0  # the layer above the edge keeps its shape
    # the same through the default (simplified) polygons: the kept shapes are the frame's shapes
    # whose pixels the clicks left
    default = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(TINY_CONFIG)),
                       model=exact.predictor.model)
    enc2 = default.encode(grey(frames["Willis_B_716_0_bscan_u8.png"]))
    frame_shapes, owner = trace_label_map(cleaned, NAMES, tolerance=default.options.simplify, min_area=0)
    kept = [s for i, s in enumerate(frame_shapes, 1) if (expected[owner == i] != 0).all()]
    assert default.interact(enc2, pos, negs, shapes=True).shapes == kept


# --- defect 2: replies are independent of each other ------------------------------------------------

def test_changing_a_reply_does_not_change_the_next(pipeline, frames):
    enc = pipeline.encode(grey(frames["valid.png"]))
    first = pipeline.interact(enc, [[200.5, 200.5]], [], shapes=True)
    pristine = json.loads(json.dumps(first.shapes))
    first.shapes[0]["points"].append([0.0, 0.0])
    first.shapes[0]["points"][0][0] = -5.0
    first.shapes[1]["label"] = "changed"
    first.shapes.pop()
    again = pipeline.interact(enc, [[200.5, 200.5]], [], shapes=True)
    assert json.loads(json.dumps(again.shapes)) == pristine
    frame = pipeline.frame_shapes(enc)
    frame.clear()
    assert pipeline.frame_shapes(enc) == pristine
    with pytest.raises(ValueError):  # the cleaned map is shared: read-only
        pipeline.label_map(enc)[0, 0] = 1


def test_nuclio_replies_are_independent_and_texts_never_stale(frames):
    worker = Worker(SAM2OCT_CVAT_UI="cvat-oct")  # the fork's reply: the frame's polygons, cached
    model = worker.model
    png = encode(Image.open(io.BytesIO(frames["valid.png"])))
    body = {"image": b64(png), "pos_points": [[200.5, 200.5]], "neg_points": []}
    reference = json.loads(model.infer_json(body))
    reply = model.infer(body)
    assert reply["shapes"] and all(s["type"] == "polygon" for s in reply["shapes"])
    for shape in reply["shapes"]:
        shape["points"].reverse()
        shape["label"] = "changed"
    reply["shapes"].clear()
    assert json.loads(model.infer_json(body)) == reference
    assert json.loads(json.dumps(model.infer(body))) == reference


# --- defect 4: regions of a given prediction -------------------------------------------------------

def test_regions_of_a_prediction_without_confidence(pipeline, frames):
    enc = pipeline.encode(grey(frames["valid.png"]))
    given = pipeline.regions(enc, prediction=pipeline.predict(enc))
    own = pipeline.regions(enc)
    assert [(r.class_index, r.offset, r.points) for r in given] == [(r.class_index, r.offset, r.points) for r in own]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(given, own))
    assert all(r.score is None for r in given) and all(isinstance(r.score, float) for r in own)
    with_conf = pipeline.regions(enc, prediction=pipeline.predict(enc, confidence=True))
    assert [r.score for r in with_conf] == [r.score for r in own]
    with pytest.raises(ValueError, match="confidence"):
        pipeline.regions(enc, 0.5, prediction=pipeline.predict(enc))


# --- one cache -------------------------------------------------------------------------------------

def test_one_cache_holds_features_and_results(frames):
    p = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(TINY_CONFIG), cache_mb=64))
    assert isinstance(p.cache, FrameCache) and p.predictor.cache is p.cache
    enc = p.encode_file(frames["valid.png"])
    features_only = p.cache.nbytes
    p.frame_shapes(enc)
    assert p.cache.nbytes > features_only  # the cleaned map and the shapes are counted with the features
    assert p.cache.nbytes == enc.nbytes + p.read_image(frames["valid.png"]).nbytes  # + the file's grey frame
    p.release_memory()
    assert len(p.cache) == 0 and p.cache.nbytes == 0
    off = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(TINY_CONFIG), cache_mb=0),
                   model=p.predictor.model)
    enc = off.encode_file(frames["valid.png"])
    off.frame_shapes(enc)
    assert len(off.cache) == 0 and off.encode_file(frames["valid.png"]) is not enc
