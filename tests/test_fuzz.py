"""Property-based fuzzing of the request contract through main.handler (nuclio_sdk's test Platform).

Every generated request must end in a 2xx with well-formed CVAT fields, or a 4xx with a JSON
`error`: never a 5xx, an escaping exception or a dead worker. The whole file sends >= 1000
requests (counted, asserted by the last test). Images come from a fixed pool of small files in
many formats (each distinct frame is encoded once, ~0.2 s) plus corrupted and foreign bytes.
SAM2OCT_FUZZ_SCALE=N multiplies the number of examples (a deeper run).
"""

import base64
import json
import math
import os
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from harness import (
    NR206_NAMES, Worker, b64, banded_image, check_detector, check_error, check_interactor, encode, noise_image, write_summary,
)

from sam2oct.geometry.images import read_image
from sam2oct.errors import RequestError

# Fuzzed TIFFs are corrupt on purpose; Pillow warns about their tags while refusing them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

SCALE = int(os.environ.get("SAM2OCT_FUZZ_SCALE", "1"))  # e.g. 10 for a deep run
FUZZ = settings(max_examples=230 * SCALE, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
MIN_REQUESTS = 1000


# --- the image pool --------------------------------------------------------------------------

def _palette(im):
    p = Image.frombytes("P", im.size, im.tobytes())
    p.putpalette([v for i in range(256) for v in (i, i, i)])
    return p


def _sixteen(w, h, seed):
    a = (np.random.default_rng(seed).random((h, w)) * 65535).astype(np.uint16)
    return Image.fromarray(a)  # mode I;16


def _float_tiff(w, h):
    a = np.linspace(-3.0, 5.0, w * h, dtype=np.float32).reshape(h, w)
    return encode(Image.fromarray(a, mode="F"), "TIFF")


def _grey_png_declaring(w, h):
    data = bytearray(encode(Image.new("L", (1, 1))))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


_BASE = banded_image(24, 20, seed=1)
# (name, file bytes, width, height): every one decodes; several share one grey frame (one encode).
VALID = [
    ("png-L", encode(_BASE), 24, 20),
    ("png-P", encode(_palette(_BASE)), 24, 20),
    ("png-RGB", encode(_BASE.convert("RGB")), 24, 20),
    ("png-RGBA", encode(_BASE.convert("RGBA")), 24, 20),
    ("tiff-L", encode(_BASE, "TIFF"), 24, 20),
    ("bmp", encode(_BASE, "BMP"), 24, 20),
    ("gif-1frame", encode(_BASE, "GIF"), 24, 20),
    ("jpeg-L", encode(_BASE, "JPEG", quality=90), 24, 20),
    ("jpeg-CMYK", encode(_BASE.convert("CMYK"), "JPEG"), 24, 20),
    ("png-16bit", encode(_sixteen(20, 16, 2)), 20, 16),
    ("tiff-16bit", encode(_sixteen(20, 16, 2), "TIFF"), 20, 16),
    ("tiff-float", _float_tiff(16, 12), 16, 12),
    ("png-1x1", encode(Image.new("L", (1, 1), 128)), 1, 1),
    ("png-1xN", encode(noise_image(1, 40, seed=3)), 1, 40),
    ("png-Nx1", encode(noise_image(40, 1, seed=4)), 40, 1),
    ("png-wide", encode(banded_image(600, 2, seed=5)), 600, 2),
    ("png-tall", encode(banded_image(2, 600, seed=6)), 2, 600),
    ("png-noise", encode(noise_image(16, 16, seed=7)), 16, 16),
]
VALID_BYTES = {v[1] for v in VALID}

def _truncate(data, frac):
    return data[: int(len(data) * frac)]


def _flip(data, pos, value):
    b = bytearray(data)
    b[pos % len(b)] = value
    return bytes(b)


_frames = [_BASE, Image.eval(_BASE, lambda v: 255 - v)]
INVALID = [
    encode(_frames[0], "GIF", save_all=True, append_images=_frames[1:]),  # animated GIF
    encode(_frames[0], "TIFF", save_all=True, append_images=_frames[1:]),  # multi-page TIFF
    encode(_BASE)[:40],  # truncated PNG
    encode(_BASE, "JPEG")[:100],  # truncated JPEG
    b"hello, this is not an image",
    json.dumps({"image": "x"}).encode(),
    b"\x89PNG\r\n\x1a\n",  # signature only
    _grey_png_declaring(0, 5),  # zero width
    _grey_png_declaring(100_000, 100_000),  # bomb header (413)
    encode(Image.fromarray(np.full((4, 4), 70_000, np.int32), mode="I"), "TIFF"),  # 32-bit out of range
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
    bytes(range(256)) * 4,
    _flip(encode(_BASE, "TIFF"), 118, 1),  # found by this file: PIL raised TypeError counting frames (was a 500)
]


# Corruption only of the smallest files keeps the number of distinct decodable frames small.
_SMALL = [v[1] for v in VALID if v[2] * v[3] <= 480]
image_files = st.one_of(
    st.sampled_from(sorted(VALID_BYTES)),
    st.sampled_from(INVALID),
    st.binary(min_size=1, max_size=300),
    st.builds(_truncate, st.sampled_from(_SMALL), st.floats(0.0, 0.99)),
    st.builds(_flip, st.sampled_from(_SMALL), st.integers(0, 10**6), st.integers(0, 255)),
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _b64_variants(data):
    """Valid base64 of `data` in the spellings a client may send, or broken base64."""
    s = b64(data)
    return st.one_of(
        st.just(s),
        st.just("data:image/png;base64," + s),
        st.just("\n".join(s[i:i + 76] for i in range(0, len(s), 76))),  # MIME line breaks
        st.integers(0, max(len(s) - 1, 0)).map(lambda k: s[:k]),  # truncated base64
        st.just(s.rstrip("=") if s.endswith("=") else s + "="),  # bad padding
        st.just(base64.urlsafe_b64encode(data).decode()),
    )


image_values = st.one_of(
    image_files.flatmap(_b64_variants),
    st.text(max_size=40),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=64),
    json_values,
)

coords = st.one_of(
    st.floats(-50, 700), st.integers(-50, 700),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400),
    st.text(max_size=4), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
)
bad_points = st.one_of(
    json_values,
    st.lists(st.one_of(st.lists(coords, max_size=3), coords, json_values), max_size=6),
    st.sampled_from([65, 1000, 100_000]).map(lambda n: [[1, 1]] * n),  # more than SAM2OCT_MAX_POINTS
)


def _valid_points(w, h, max_size=4):
    return st.lists(st.tuples(st.floats(0, w), st.floats(0, h)).map(list), max_size=max_size)


def _valid_bbox(w, h):
    corner = st.tuples(st.floats(-2, w + 2), st.floats(-2, h + 2)).map(list)
    return st.one_of(st.none(), st.just([]), st.lists(corner, min_size=2, max_size=2),
                     st.lists(corner, min_size=2, max_size=2).map(lambda c: c[0] + c[1]))


valid_threshold = st.one_of(st.none(), st.floats(0.0, 1.0))
bad_threshold = st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda t: not 0 <= t <= 1),
                          st.text(max_size=5), st.booleans(), st.integers(2, 10**400), st.lists(st.floats()))


# --- the two workers, shared by the whole module ----------------------------------------------

class Tally:
    def __init__(self):
        self.by_status = Counter()

    def add(self, reply):
        self.by_status[reply.status] += 1


@pytest.fixture(scope="module")
def workers():
    fns = {
        "interactor": Worker(SAM2OCT_CACHE_MB="256"),
        "detector": Worker(SAM2OCT_CACHE_MB="256", SAM2OCT_MODE="detector"),
    }
    yield fns, Tally()


def _sent(workers):
    return sum(f.requests for f in workers[0].values())


def _check(reply, tally, size=None, mode="interactor"):
    """The invariant: a 2xx with valid fields for a decodable image, or a 4xx with a JSON error."""
    tally.add(reply)
    assert reply.status < 500, reply
    if reply.status >= 300:
        check_error(reply)
        return
    if size is None and mode == "detector":
        # a frame the detector cannot read is skipped, not refused, so one bad frame never aborts
        # a task's automatic annotation: no shapes (the log says why)
        assert reply.json == [], reply
        return
    assert size is not None, f"2xx for a request without a decodable image: {reply}"
    (check_interactor if mode == "interactor" else check_detector)(reply, *size)


def _image_size(value):
    """(width, height) of the frame a JSON 'image' value holds, if the function can read it."""
    if not isinstance(value, str):
        return None
    s = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode("".join(s.split()), validate=True)
        h, w = read_image(data).shape
    except (ValueError, RequestError):
        return None
    return w, h


# --- interactor: every key right, wrong or missing --------------------------------------------

@st.composite
def interactor_bodies(draw):
    _, data, w, h = draw(st.sampled_from(VALID))
    body = {}
    pick = draw(st.integers(0, 9))  # image: 0 missing, 1-2 anything, 3-9 a pool file
    if pick in (1, 2):
        body["image"] = draw(image_values)
    elif pick >= 3:
        body["image"] = b64(data)
    for key, valid, junk in (
        ("pos_points", _valid_points(w, h), bad_points),
        ("neg_points", _valid_points(w, h, 2), bad_points),
        ("obj_bbox", _valid_bbox(w, h), json_values),
        ("threshold", valid_threshold, bad_threshold),
    ):
        k = draw(st.integers(0, 9))  # 0 missing, 1 anything, else valid
        if k == 1:
            body[key] = draw(junk)
        elif k > 1:
            body[key] = draw(valid)
    if draw(st.booleans()):
        body[draw(st.text(max_size=6))] = draw(json_values)  # unknown keys are ignored
    return body


@FUZZ
@given(body=interactor_bodies())
def test_interactor_bodies(workers, body):
    fns, tally = workers
    reply = fns["interactor"].call(body)
    _check(reply, tally, _image_size(body.get("image")))
    if not isinstance(body.get("image"), str):
        assert reply.status == 400 and "'image'" in reply.json["error"], reply


# --- raw bodies: text and bytes, NaN/Infinity tokens, broken JSON -----------------------------

@st.composite
def raw_bodies(draw):
    _, data, w, h = draw(st.sampled_from(VALID))
    obj = {"image": b64(data),
           "pos_points": draw(st.lists(st.lists(st.one_of(st.floats(0, min(w, h)), st.floats()),
                                                min_size=2, max_size=2), max_size=3)),
           "neg_points": [],
           "obj_bbox": draw(st.one_of(st.none(), st.just([[0, 0], [w, h]]),
                                      st.just([[math.nan, 0], [w, h]]), st.just([[0, -math.inf], [w, h]])))}
    text = json.dumps(obj)  # NaN, Infinity and -Infinity tokens where floats are not finite
    kind = draw(st.integers(0, 6))
    if kind == 1:
        text = text[: draw(st.integers(0, len(text) - 1))]  # truncated JSON
    elif kind == 2:
        text = draw(st.text(max_size=60))
    elif kind == 3:
        text = "[" * draw(st.sampled_from([10, 1000, 100_000])) + "]"  # deep nesting
    elif kind == 4:
        text = json.dumps(draw(json_values))
    body = text.encode("utf-8") if draw(st.booleans()) else text
    if kind == 5:
        body = draw(st.binary(max_size=80)) + b"\xff\xfe"  # not UTF-8
    content_type = draw(st.sampled_from(["application/json", "text/plain", "application/octet-stream"]))
    return body, content_type, obj if kind in (0, 6) else None, (w, h)


@FUZZ
@given(case=raw_bodies())
def test_raw_bodies(workers, case):
    fns, tally = workers
    body, content_type, obj, size = case
    reply = fns["interactor"].call(body, content_type=content_type)
    _check(reply, tally, size if obj is not None else None)
    if obj is not None:
        values = [c for p in obj["pos_points"] for c in p] + [c for p in obj["obj_bbox"] or [] for c in p]
        if not all(math.isfinite(c) for c in values):
            assert reply.status == 400 and "finite" in reply.json["error"], reply


# --- image payloads ---------------------------------------------------------------------------

@FUZZ
@given(data=image_files, variant=st.integers(0, 3))
def test_image_payloads(workers, data, variant):
    fns, tally = workers
    value = b64(data)
    if variant == 1:
        value = "data:image/png;base64," + value
    elif variant == 2:
        value = value[: len(value) // 2 + 1]
    reply = fns["interactor"].call({"image": value, "pos_points": [], "neg_points": []})
    size = _image_size(value)
    _check(reply, tally, size)
    if variant != 2 and data in INVALID[:2]:
        assert reply.status == 400 and "frames" in reply.json["error"], reply
    if variant != 2 and data == INVALID[8]:
        assert reply.status == 413, reply
    if size is not None:
        assert reply.status in (200, 422), reply  # a readable frame is answered


def test_corrupt_tiff_found_by_fuzzing_is_400(workers):
    fns, tally = workers
    reply = fns["interactor"].call({"image": b64(INVALID[-1])})
    _check(reply, tally)
    assert reply.status == 400 and "could not be decoded" in reply.json["error"], reply


# --- brush masks ------------------------------------------------------------------------------

BRUSH_LABELS = set(NR206_NAMES) | {f"OCT_Object_{k}" for k in range(9)}


def _rle_ok(rle, w, h):
    """CVAT run lengths + inclusive box, valid for a w x h image (the spec, written out again)."""
    if not isinstance(rle, list) or not 5 <= len(rle) <= w * h + 5:
        return False
    if not all(type(v) is int for v in rle):
        return False
    *runs, x1, y1, x2, y2 = rle
    if not (0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h):
        return False
    return all(r >= 0 for r in runs) and sum(runs) == (x2 - x1 + 1) * (y2 - y1 + 1)


@st.composite
def rle_masks(draw, w, h):
    """Run lengths + box: consistent, inconsistent, outside the image, odd values."""
    kind = draw(st.integers(0, 4))
    if kind == 4:
        return draw(st.one_of(json_values, st.just([1] * 100_000 + [0, 0, 0, 0])))
    box = [draw(st.integers(-3, w + 3)), draw(st.integers(-3, h + 3)),
           draw(st.integers(-3, w + 3)), draw(st.integers(-3, h + 3))]
    if draw(st.booleans()):  # mostly inside
        box = [min(max(box[0], 0), w - 1), min(max(box[1], 0), h - 1), 0, 0]
        box[2], box[3] = draw(st.integers(box[0], w - 1)), draw(st.integers(box[1], h - 1))
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    if kind <= 2:  # runs that add up to the box's area
        runs = draw(st.lists(st.integers(0, max(area, 1)), min_size=1, max_size=5))
        runs = runs + [area - sum(runs)] if sum(runs) <= area else [area]
        if kind == 2:
            runs[draw(st.integers(0, len(runs) - 1))] += draw(st.sampled_from([-1, 1, 2]))  # off by a little
    else:
        runs = draw(st.lists(st.one_of(st.integers(-5, max(area, 0) + 5), st.integers(-(10**30), 10**30),
                                       st.floats(allow_nan=True, allow_infinity=True), st.booleans()), max_size=6))
    return runs + box


@st.composite
def brush_bodies(draw):
    _, data, w, h = draw(st.sampled_from(VALID))
    label = draw(st.one_of(st.sampled_from(["NFL", "RPE", "OCT_Object_3", "background", "nope"]), json_values))
    item = draw(st.one_of(st.fixed_dictionaries({"label": st.just(label), "mask": rle_masks(w, h)}), json_values))
    brush = draw(st.one_of(st.lists(st.just(item), max_size=3), json_values,
                           st.just([item] * 65)))  # more than SAM2OCT_MAX_POINTS
    ok = brush is None or (isinstance(brush, list) and len(brush) <= 64 and all(
        isinstance(it, dict) and isinstance(it.get("label"), str) and it["label"] in BRUSH_LABELS
        and _rle_ok(it.get("mask"), w, h) for it in brush))
    return {"image": b64(data), "pos_points": draw(_valid_points(w, h, 2)), "neg_points": [], "brush": brush}, (w, h), ok


@FUZZ
@given(case=brush_bodies())
def test_brush_masks(workers, case):
    fns, tally = workers
    body, size, ok = case
    reply = fns["interactor"].call(body)
    _check(reply, tally, size)
    if ok:  # a well-formed brush never makes a request fail
        assert reply.status in (200, 422), reply
        if reply.status == 200 and body["brush"]:
            assert reply.json["brush"].startswith("ignored"), reply  # nr206 was not trained with brushes
    else:
        err = reply.json["error"]
        assert reply.status == 400 and ("brush" in err or "mask" in err), reply


# --- detector mode ----------------------------------------------------------------------------

@st.composite
def detector_bodies(draw):
    _, data, _, _ = draw(st.sampled_from(VALID))
    body = {}
    k = draw(st.integers(0, 9))
    if k == 1:
        body["image"] = draw(image_values)
    elif k > 1:
        body["image"] = b64(data)
    t = draw(st.integers(0, 4))
    if t == 1:
        body["threshold"] = draw(bad_threshold)
    elif t > 1:
        body["threshold"] = draw(valid_threshold)
    if draw(st.booleans()):  # interactor keys reach a detector only from a confused client
        body["pos_points"] = draw(bad_points)
    return (json.dumps(body) if draw(st.booleans()) else body), t != 1


@settings(FUZZ, max_examples=200 * SCALE)
@given(case=detector_bodies())
def test_detector_bodies(workers, case):
    fns, tally = workers
    body, threshold_ok = case
    obj = json.loads(body) if isinstance(body, str) else body
    reply = fns["detector"].call(body, content_type="text/plain" if isinstance(body, str) else "application/json")
    size = _image_size(obj.get("image"))
    _check(reply, tally, size, mode="detector")
    if size is not None and threshold_ok:
        assert reply.status == 200, reply


# --- after the storm --------------------------------------------------------------------------

def test_zz_worker_alive_and_total(workers):
    """Runs last (file order): the workers still answer, and the file sent >= 1000 requests."""
    fns, tally = workers
    _, data, w, h = VALID[0]
    good = fns["interactor"].call({"image": b64(data), "pos_points": [], "neg_points": []})
    check_interactor(good, w, h)
    det = fns["detector"].call({"image": b64(data)})
    check_detector(det, w, h)
    tally.add(good)
    tally.add(det)
    sent = _sent(workers)
    cache = fns["interactor"].model.predictor.cache
    summary = (f"FUZZ SUMMARY: {sent} requests; by status {dict(sorted(tally.by_status.items()))}; "
               f"interactor cache {len(cache)} frames, {cache.hits} hits / {cache.misses} misses")
    write_summary("fuzz", summary)
    assert not any(s >= 500 for s in tally.by_status)
    assert sent >= MIN_REQUESTS, summary
