"""The interactor reply formats (sam2oct.serving.replies) against what each CVAT UI reads.

Where a reply lands is decided by tests/cvat_ui_rules.py, CVAT's placement rules re-implemented
from CVAT's source, and the run lengths are checked against cvat-sdk's own encoder; neither uses
sam2oct's encoders. The end-to-end checks through the Nuclio handler are in test_reply_formats.py.
"""

import json

import numpy as np
import pytest
from cvat_sdk.masks import decode_mask, encode_mask

from cvat_ui_rules import core_shapes, current_ui_draws, js_mask2rle, legacy_ui_draws
from sam2oct.errors import ConfigError, RequestError
from sam2oct.pipeline.results import Interaction
from sam2oct.serving import replies


def interaction(mask, *, score=0.9, shapes=None, reason="", **kw):
    mask = np.asarray(mask, bool)
    fields = dict(mask=mask, label_map=mask.astype(np.uint8), picked=[1] if mask.any() else [],
                  labels=["NFL"] if mask.any() else [], ignored_clicks=[], snapped_clicks=[],
                  prompts="selection", brush=None, score=score, reason=reason, shapes=shapes)
    fields.update(kw)
    return Interaction(**fields)


def random_masks(seed=0, n=40):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = rng.integers(1, 30, size=2)
        m = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        if not m.any():
            m[rng.integers(h), rng.integers(w)] = True
        yield m


EDGE_MASKS = [
    np.ones((1, 1), bool),
    np.ones((3, 4), bool),
    np.eye(5, dtype=bool),
    np.pad(np.ones((2, 3), bool), ((4, 1), (7, 2))),  # first pixel of the box set
    np.pad(np.eye(3, dtype=bool)[::-1], ((0, 3), (2, 0))),  # first pixel of the box unset
]


# --- the encoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", EDGE_MASKS + list(random_masks()))
def test_mask_points_are_cvat_sdks_encoding(mask):
    points = replies.mask_points(mask)
    assert points == [int(v) for v in encode_mask(mask)]
    assert all(type(v) is int for v in points)
    assert np.array_equal(decode_mask(points, image_width=mask.shape[1], image_height=mask.shape[0]), mask)


def test_empty_mask_has_no_encoding():
    with pytest.raises(ValueError):
        replies.mask_points(np.zeros((4, 4), bool))


@pytest.mark.parametrize("mask", EDGE_MASKS[:3] + list(random_masks(1, 10)))
def test_crop_json_is_json_of_the_nested_list(mask):
    assert replies.crop_json(mask) == json.dumps(mask.astype(np.uint8).tolist())


# --- where each UI draws each format ---------------------------------------------------------------

@pytest.mark.parametrize("mask", EDGE_MASKS + list(random_masks(2, 10)))
def test_current_reply_lands_where_the_mask_is(mask):
    h, w = mask.shape
    frame = np.zeros((h + 40, w + 60), bool)
    frame[30:30 + h, 50:50 + w] = mask  # far from the origin
    reply = replies.reply("current", interaction(frame, score=0.8765))
    assert "mask" not in reply and "bounds" not in reply
    (shape,) = reply["shapes"]
    assert shape["type"] == "mask" and shape["source"] == "semi-auto"
    assert shape["group"] == 0 and shape["occluded"] is False and shape["rotation"] == 0
    assert shape["attributes"] == [{"spec_id": 0, "value": "0.8765"}]
    (drawn,) = current_ui_draws(reply, *frame.shape)
    assert np.array_equal(drawn, frame)


def test_legacy_and_fork_replies_land_where_the_mask_is_on_legacy_cvat():
    frame = np.zeros((50, 70), bool)
    frame[20:26, 30:41] = True
    frame[22, 30:35] = False
    polygons = [{"type": "polygon", "label": "NFL", "points": [[30, 20], [41, 20], [41, 26], [30, 26]]}]
    for fmt in ("legacy", "cvat-oct"):
        reply = replies.reply(fmt, interaction(frame, shapes=polygons))
        assert reply["bounds"] == [30, 20, 40, 25]
        assert np.array_equal(legacy_ui_draws(reply, *frame.shape), frame)
        assert len(reply["points"]) >= 4  # the outline the UI draws as the polygon
        assert ("shapes" in reply) == (fmt == "cvat-oct")
        # ... and why CVAT 2.60+ must not get them: the cropped mask lands at the origin
        (drawn,) = current_ui_draws(reply, *frame.shape)
        assert not (drawn & frame).any()
    assert replies.reply("cvat-oct", interaction(frame, shapes=polygons))["shapes"] == polygons


def test_current_reply_is_below_the_ui_filter_only_when_the_model_is_unsure():
    frame = np.zeros((10, 10), bool)
    frame[2:5, 2:5] = True
    assert len(current_ui_draws(replies.reply("current", interaction(frame, score=0.51)), 10, 10)) == 1
    # the UI's default confidence filter (0.5) hides a mask the model is unsure of
    assert current_ui_draws(replies.reply("current", interaction(frame, score=0.49)), 10, 10) == []


def test_nothing_picked():
    empty = interaction(np.zeros((8, 8), bool), score=None, reason="every click lies on background")
    reply = replies.reply("current", empty)
    assert reply["shapes"] == [] and "every click lies on background" in reply["reason"]
    assert core_shapes(reply) == []
    for fmt in ("legacy", "cvat-oct"):  # those UIs need a mask
        with pytest.raises(RequestError, match="every click lies on background") as err:
            replies.reply(fmt, empty)
        assert err.value.status == 422


def test_notes_ride_along_in_every_format():
    frame = np.zeros((8, 8), bool)
    frame[1:3, 1:3] = True
    picked = interaction(frame, shapes=[], ignored_clicks=[[7.5, 7.5]], snapped_clicks=[[[1, 1], [1.5, 1.5]]],
                         brush="ignored: not trained with brush prompts")
    for fmt in replies.FORMATS:
        reply = replies.reply(fmt, picked, threshold=0.3)
        assert reply["labels"] == ["NFL"] and reply["prompts"] == "selection"
        assert reply["ignored_clicks"] == [[7.5, 7.5]] and reply["snapped_clicks"] == [[[1, 1], [1.5, 1.5]]]
        assert reply["brush"].startswith("ignored") and reply["threshold"].startswith("ignored")


@pytest.mark.parametrize("fmt", list(replies.FORMATS))
def test_reply_json_is_json_of_the_reply(fmt):
    for mask in list(random_masks(3, 5)) + [np.ones((1, 1), bool)]:
        shapes = [{"type": "polygon", "label": "INL", "points": [[0, 0], [1, 0], [1, 1]]}]
        picked = interaction(mask, shapes=shapes, score=0.25)
        text = replies.reply_json(fmt, picked, threshold=0.5)
        assert text == json.dumps(replies.reply(fmt, picked, threshold=0.5))
        cached = replies.reply_json(fmt, picked, shape_json=lambda s: json.dumps(s))
        assert cached == json.dumps(replies.reply(fmt, picked))


def test_run_lengths_make_the_current_reply_small():
    frame = np.zeros((496, 768), bool)
    frame[100:160, :] = True  # a layer band across the B-scan
    frame[130:135, 200:260] = False
    current = replies.reply_json("current", interaction(frame))
    legacy = replies.reply_json("legacy", interaction(frame))
    assert len(current) < 1000 < 100 * 1000 < len(legacy)
    # the rule's own port, on the examples cvat-core documents for its mask2Rle
    assert js_mask2rle([0, 0, 0, 1]) == [3, 1] and js_mask2rle([1, 1, 0, 0]) == [0, 2, 2]


def test_unknown_format_is_refused():
    with pytest.raises(ConfigError, match="current, legacy, cvat-oct"):
        replies.reply_format("newest")
    assert replies.reply_format(" Legacy ").name == "legacy"
