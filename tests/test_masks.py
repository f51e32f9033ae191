"""CVAT mask encodings: hand-checked examples, spec-based reference decoders, validation.

CVAT's stored format (run lengths over a box) has its reference in cvat-sdk:
``cvat_sdk.masks.encode_mask`` writes what ``rle_to_mask`` must read, as ``decode_mask`` does.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cvat_sdk.masks import decode_mask, encode_mask
from hypothesis.extra.numpy import arrays

from sam2oct.errors import RequestError
from sam2oct.geometry.masks import rle_to_mask, to_detector_mask, to_interactor_crop

# Reference decoders written from the CVAT spec, independent of the code under test.


def decode_interactor(crop, bounds, height, width):
    xtl, ytl, xbr, ybr = bounds
    crop = np.array(crop)
    assert crop.shape == (ybr - ytl + 1, xbr - xtl + 1)
    out = np.zeros((height, width), bool)
    out[ytl:ybr + 1, xtl:xbr + 1] = crop != 0
    return out


def decode_detector(values, height, width):
    xtl, ytl, xbr, ybr = values[-4:]
    out = np.zeros((height, width), bool)
    out[ytl:ybr + 1, xtl:xbr + 1] = np.array(values[:-4]).reshape(ybr - ytl + 1, xbr - xtl + 1) != 0
    return out


def plain_ints(values):
    return all(type(v) is int for v in values)


EXAMPLE = np.array([
    [0, 0, 0, 0, 0],
    [0, 1, 1, 0, 0],
    [0, 0, 1, 0, 0],
    [0, 0, 0, 0, 0],
], bool)


def test_hand_checked_example():
    assert to_interactor_crop(EXAMPLE) == ([[1, 1], [0, 1]], [1, 1, 2, 2])
    assert to_detector_mask(EXAMPLE) == [255, 255, 0, 255, 1, 1, 2, 2]
    for mask in (EXAMPLE, ~EXAMPLE):  # the first pixel of the box set: an empty leading zero run
        assert (rle_to_mask(encode_mask(mask), 4, 5) == mask).all()


def test_rle_decodes_cvat_example_with_float_values():
    # CVAT stores shape points as floats; a 2x2 box with an L-shape
    points = [1.0, 3.0, 3.0, 2.0, 4.0, 3.0]
    mask = rle_to_mask(points, 5, 6)
    assert mask.sum() == 3
    assert (mask == decode_mask(points, image_width=6, image_height=5)).all()


CASES = {
    "single pixel top-left": [(0, 0)],
    "single pixel bottom-right": [(6, 8)],
    "two corners": [(0, 0), (6, 8)],
    "left column": [(y, 0) for y in range(7)],
    "bottom row": [(6, x) for x in range(9)],
}


@pytest.mark.parametrize("name", CASES)
def test_round_trips_at_image_border(name):
    mask = np.zeros((7, 9), bool)
    for y, x in CASES[name]:
        mask[y, x] = True
    _check_round_trips(mask)


def test_full_image_round_trips():
    mask = np.ones((3, 4), bool)
    assert to_interactor_crop(mask)[1] == [0, 0, 3, 2]
    _check_round_trips(mask)


def test_non_bool_masks_use_non_zero_as_set():
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 2] = 7
    assert to_interactor_crop(mask) == ([[1], [1]], [2, 1, 2, 2])
    assert to_detector_mask(mask.astype(np.float32)) == [255, 255, 2, 1, 2, 2]


@pytest.mark.parametrize("encode", [to_interactor_crop, to_detector_mask])
def test_empty_mask_cannot_be_encoded(encode):
    with pytest.raises(ValueError, match="empty"):
        encode(np.zeros((3, 3), bool))


@pytest.mark.parametrize("encode", [to_interactor_crop, to_detector_mask])
def test_encoders_want_2d(encode):
    with pytest.raises(ValueError, match="2-D"):
        encode(np.ones((2, 2, 1), bool))


def test_all_zero_runs_decode_to_empty_mask():
    points = [6, 1, 1, 3, 2]
    assert not decode_mask(points, image_width=5, image_height=4).any()
    assert not rle_to_mask(points, 4, 5).any()
    # what cvat-sdk writes for an empty mask
    assert not rle_to_mask(encode_mask(np.zeros((4, 5), bool)), 4, 5).any()


BAD_RLE = {
    "not a list": ("1,2,3", "list of numbers"),
    "too short": ([0, 0, 0, 0], "run lengths and a box"),
    "too long": ([0] * 30 + [0, 0, 1, 1], "run lengths and a box"),
    "strings": (["1", "0", "0", "0", "0"], "flat list of numbers"),
    "nested": ([[1], [0], [0], [0], [0]], "flat list of numbers"),
    "booleans": ([True, 0, 0, 0, 0], "flat list of numbers"),
    "fraction": ([0.5, 0.5, 0, 0, 0, 0], "whole numbers"),
    "nan": ([float("nan"), 0, 0, 0, 0], "whole numbers"),
    "huge": ([1e30, 0, 0, 0, 0], "larger than"),
    "negative run": ([-1, 2, 0, 0, 0, 0], "negative"),
    "runs short": ([1, 2, 0, 0, 1, 1], "add up to 3, but the box holds 4"),
    "runs long": ([1, 4, 0, 0, 1, 1], "add up to 5, but the box holds 4"),
    "x2 < x1": ([1, 2, 1, 0, 0, 1], "inverted"),
    "y2 < y1": ([1, 0, 1, 0, 0], "inverted"),
    "left of image": ([2, -1, 0, 0, 0], "outside the 5x4 image"),
    "right of image": ([2, 4, 0, 5, 0], "outside the 5x4 image"),
    "below image": ([2, 0, 3, 0, 4], "outside the 5x4 image"),
}


@pytest.mark.parametrize("name", BAD_RLE)
def test_malformed_rle_is_refused(name):
    points, message = BAD_RLE[name]
    with pytest.raises(RequestError, match=message) as caught:
        rle_to_mask(points, 4, 5)
    assert caught.value.status == 400


def _check_round_trips(mask):
    height, width = mask.shape
    (crop, bounds), detector, rle = to_interactor_crop(mask), to_detector_mask(mask), encode_mask(mask)
    json.dumps([crop, bounds, detector])  # plain JSON types only
    assert all(plain_ints(row) for row in crop) and set(np.ravel(crop)) <= {0, 1}
    assert plain_ints(bounds) and plain_ints(detector)
    assert set(detector[:-4]) <= {0, 255}
    assert (decode_interactor(crop, bounds, height, width) == mask).all()
    assert (decode_detector(detector, height, width) == mask).all()
    assert (rle_to_mask(rle, height, width) == mask).all()
    # the box is tight: every edge of it holds a set pixel
    xtl, ytl, xbr, ybr = bounds
    assert mask[ytl].any() and mask[ybr].any() and mask[:, xtl].any() and mask[:, xbr].any()
    assert detector[-4:] == rle[-4:] == [xtl, ytl, xbr, ybr]  # the same box as cvat-sdk's


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 16), st.integers(1, 16))))
def test_random_masks_round_trip(mask):
    if mask.any():
        _check_round_trips(mask)
    else:
        with pytest.raises(ValueError):
            to_detector_mask(mask)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_rle_to_mask_reads_what_cvat_sdk_writes(data):
    # any box, not only the tight one: run lengths of unset pixels at either end
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    mask = data.draw(arrays(np.bool_, (h, w)))
    x1, y1 = data.draw(st.integers(0, w - 1)), data.draw(st.integers(0, h - 1))
    x2, y2 = data.draw(st.integers(x1 + 1, w)), data.draw(st.integers(y1 + 1, h))
    points = encode_mask(mask, bbox=[x1, y1, x2, y2])
    expected = decode_mask(points, image_width=w, image_height=h)
    assert (rle_to_mask(points, h, w) == expected).all()
    assert (rle_to_mask([float(v) for v in points], h, w) == expected).all()  # CVAT stores floats
