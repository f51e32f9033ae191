"""The warm-click shortcuts keep the replies exactly as they were (benchmarks/bench_click.py times them).

- Pipeline.encode_file keeps the last few files' grey frames by the file's digest, so a frame
  CVAT sends again with every click is not decoded again;
- ModelHandler.infer_json serialises each traced shape once and the mask crop from its array;
  its text is byte for byte json.dumps(infer(body)), in every reply format.
"""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from harness import Worker, b64, encode
from sam2oct.errors import RequestError
from sam2oct.pipeline.pipeline import Pipeline
from sam2oct.serving.replies import crop_json

SYNTH = ROOT / "tests" / "data" / "bscan_768x496_s1.png"


@pytest.fixture(scope="module")
def frame():
    return Image.open(SYNTH).resize((192, 124), Image.BILINEAR)


@pytest.fixture(scope="module")
def worker():
    return Worker(SAM2OCT_CVAT_UI="cvat-oct")  # the fork's replies: the polygons are the big part


def click(data, pos, neg=(), **extra):
    return {"image": b64(data), "pos_points": [list(p) for p in pos], "neg_points": [list(p) for p in neg], **extra}


def test_reply_text_is_json_dumps_of_the_reply(worker, frame):
    data = encode(frame)
    model = worker.model
    bodies = [
        click(data, [(96, 60)]),
        click(data, [(96, 60)]),  # the same click again: every shape's text from the cache
        click(data, [(40, 70)], [(96, 60), (150, 62)]),  # negatives drop shapes: a subset of the cached ones
        click(data, [(96, 60)], obj_bbox=[[20, 20], [170, 110]]),  # a box: shapes traced anew
        click(data, [(96, 60), (97, 61)]),
    ]
    seen = set()
    for body in bodies:
        text = model.infer_json(body)
        assert text == json.dumps(model.infer(body))
        reply = json.loads(text)
        assert reply["shapes"], "the tiny model's map has layers"
        seen.add(len(reply["shapes"]))
    assert len(seen) > 1  # the negatives and the box changed the shapes
    # through the Nuclio entry point: the same text as the reply object
    status, reply = worker.call(bodies[0])
    assert status == 200 and reply == json.loads(json.dumps(model.infer(bodies[0])))


@pytest.mark.parametrize("h, w", [(1, 1), (1, 5), (6, 1), (7, 9), (40, 300)])
def test_mask_text_is_json_dumps_of_the_nested_lists(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    for crop in (rng.random((h, w)) > 0.5, np.ones((h, w), bool), np.zeros((h, w), np.uint8),
                 rng.integers(0, 2, (h, w)).astype(np.uint8)[:, ::-1]):  # also a strided view
        assert crop_json(crop) == json.dumps(np.asarray(crop, dtype=np.uint8).tolist())


@pytest.mark.parametrize("cvat_ui", ["current", "legacy"])
def test_reply_text_is_json_dumps_of_the_reply_in_other_formats(frame, cvat_ui):
    model = Worker(SAM2OCT_CVAT_UI=cvat_ui).model
    data = encode(frame)
    for body in (click(data, [(96, 60)]), click(data, [(40, 70)], [(96, 60)], threshold=0.4)):
        assert model.infer_json(body) == json.dumps(model.infer(body))
    nothing = click(data, [(96, 60)], [(96, 60)])  # the negative click removes what the positive picks
    if cvat_ui == "current":
        assert model.infer_json(nothing) == json.dumps(model.infer(nothing))
        assert json.loads(model.infer_json(nothing))["shapes"] == []
    else:  # the legacy UI needs a mask: both paths refuse alike
        for path in (model.infer_json, model.infer):
            with pytest.raises(RequestError, match="negative click"):
                path(nothing)


def test_detector_reply_text_is_json_dumps_of_the_reply(frame):
    model = Worker(SAM2OCT_MODE="detector").model
    body = {"image": b64(encode(frame))}
    assert model.infer_json(body) == json.dumps(model.infer(body))


def test_shape_texts_live_and_leave_with_the_frames_cached_shapes(worker, frame):
    """The JSON texts are kept with the frame's traced shapes, so nothing outlives the frame cache
    and shapes traced for one request (a box) are not kept at all."""
    model, p = worker.model, worker.model.pipeline
    p.release_memory()
    png = encode(frame)
    whole = {"image": b64(png)}
    assert model.infer_json(whole) == json.dumps(model.infer(whole))
    encoded = p.encode(p.read_image(png))
    cached = p.cached_shapes(encoded)
    assert cached is not None and len(cached.memo["json"]) == len(cached.shapes)
    assert set(cached.memo["json"]) == {id(s) for s in cached.shapes}
    w, h = frame.size
    boxed = {"image": b64(png), "obj_bbox": [[1, 1], [w - 2, h - 2]]}
    assert model.infer_json(boxed) == json.dumps(model.infer(boxed))
    assert len(cached.memo["json"]) == len(cached.shapes)  # the box's own shapes were not kept
    p.release_memory()
    # the texts lived in the frame's one cache entry (with its features): gone with it
    again = p.encode(p.read_image(png))
    assert again is not encoded and p.cached_shapes(again) is None


def test_a_frame_sent_again_is_not_decoded_again(worker, frame, monkeypatch):
    p = worker.model.pipeline
    p.release_memory()
    decoded = []
    original = Pipeline.read_image
    monkeypatch.setattr(Pipeline, "read_image", lambda self, data: decoded.append(1) or original(self, data))
    png = encode(frame)
    calls, lookups = p.predictor.encoder_calls, p.predictor.cache.hits + p.predictor.cache.misses
    first = p.encode_file(png)
    again = p.encode_file(png)
    assert again is first and len(decoded) == 1 and p.predictor.encoder_calls == calls + 1
    # another file with the same pixels: decoded, then found by its pixels (no second encode)
    other_file = encode(frame, optimize=True)
    assert other_file != png
    assert p.encode_file(other_file) is first and len(decoded) == 2 and p.predictor.encoder_calls == calls + 1
    # one feature-cache lookup per frame asked for, as before (a file's lookup is not counted)
    assert p.predictor.cache.hits + p.predictor.cache.misses == lookups + 3
    # features dropped: the file is read and encoded again
    p.release_memory()
    assert p.encode_file(png) is not first and len(decoded) == 3 and p.predictor.encoder_calls == calls + 2
    # different pixels are never confused with it
    flipped = encode(frame.transpose(Image.FLIP_LEFT_RIGHT))
    assert p.encode_file(flipped).key != first.key and p.predictor.encoder_calls == calls + 3
