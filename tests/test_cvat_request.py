"""sam2oct.serving.cvat_request: parsing and validating what CVAT sends, with hand-written expectations."""

import base64
import json

import numpy as np
import pytest

from sam2oct.serving.cvat_request import fit_bbox, fit_points, parse_body, parse_detector, parse_interactor
from sam2oct.errors import RequestError

IMG = b"\x89PNG fake image bytes"  # parsing never decodes the picture
IMG64 = base64.b64encode(IMG).decode()


def interactor(body, max_points=64, max_image_bytes=1000):
    return parse_interactor(body, max_points=max_points, max_image_bytes=max_image_bytes)


def refused(fn, *args, status=400, **kwargs) -> str:
    with pytest.raises(RequestError) as err:
        fn(*args, **kwargs)
    assert err.value.status == status
    return str(err.value)


# --- body ---------------------------------------------------------------------------------------

def test_body_forms():
    obj = {"image": "x", "pos_points": [[1, 2]]}
    assert parse_body(obj) is obj
    assert parse_body(json.dumps(obj)) == obj
    assert parse_body(json.dumps(obj).encode()) == obj
    assert parse_body(bytearray(json.dumps(obj).encode())) == obj
    assert parse_body('\n  {"image": "x"}  \n') == {"image": "x"}


@pytest.mark.parametrize("body, words", [
    ("", ["empty"]),
    ("  \n\t", ["empty"]),
    (b"", ["empty"]),
    (None, ["empty"]),
    ("{'image': 'x'}", ["not valid JSON"]),
    ('{"image": "x"', ["not valid JSON"]),
    ("[" * 50_000 + "]" * 50_000, ["not valid JSON"]),  # nesting too deep for the parser
    (b"\xff\xfe{}", ["UTF-8"]),
    ("[1, 2]", ["JSON object", "list"]),
    ('"text"', ["JSON object", "str"]),
    ("3.5", ["JSON object", "float"]),
    ("null", ["JSON object", "NoneType"]),
    ([{"image": "x"}], ["JSON object", "list"]),  # Nuclio hands a decoded JSON list over as a list
    (7, ["JSON object", "int"]),
])
def test_bad_bodies(body, words):
    message = refused(parse_body, body)
    for word in words:
        assert word in message


# --- image --------------------------------------------------------------------------------------

def test_image_is_decoded_from_base64():
    assert interactor({"image": IMG64}).image == IMG
    # a data URL and MIME line breaks are tolerated
    assert interactor({"image": "data:image/png;base64," + IMG64}).image == IMG
    wrapped = "\n".join(IMG64[i:i + 8] for i in range(0, len(IMG64), 8)) + "\r\n"
    assert interactor({"image": wrapped}).image == IMG


@pytest.mark.parametrize("body, words", [
    ({}, ["missing 'image'"]),
    ({"image": None}, ["missing 'image'"]),
    ({"image": 5}, ["'image' must be a base64 string", "int"]),
    ({"image": {"data": IMG64}}, ["'image' must be a base64 string", "dict"]),
    ({"image": [IMG64]}, ["'image' must be a base64 string", "list"]),
    ({"image": "abc$def"}, ["'image' is not valid base64"]),
    ({"image": "abcde"}, ["'image' is not valid base64"]),  # bad padding
    ({"image": ""}, ["'image' is empty"]),
    ({"image": "   "}, ["'image' is empty"]),
])
def test_bad_images(body, words):
    message = refused(interactor, body)
    for word in words:
        assert word in message


def test_image_size_limit_is_exact_and_413():
    n = len(IMG)
    assert interactor({"image": IMG64}, max_image_bytes=n).image == IMG
    message = refused(interactor, {"image": IMG64}, max_image_bytes=n - 1, status=413)
    assert f"larger than {n - 1} bytes" in message
    # a huge value is refused on its length alone
    refused(interactor, {"image": "A" * 10_000}, max_image_bytes=100, status=413)
    refused(parse_detector, {"image": IMG64}, max_image_bytes=n - 1, status=413)


# --- points -------------------------------------------------------------------------------------

def test_points_parse_to_float_arrays():
    req = interactor({"image": IMG64, "pos_points": [[1, 2], [3.5, 4.25]], "neg_points": [[0, 0]]})
    assert req.pos_points.dtype == float and req.pos_points.tolist() == [[1.0, 2.0], [3.5, 4.25]]
    assert req.neg_points.tolist() == [[0.0, 0.0]]
    assert req.bbox is None and req.threshold is None and req.brush == []


@pytest.mark.parametrize("value", [None, []])
def test_absent_or_empty_points(value):
    req = interactor({"image": IMG64, "pos_points": value, "neg_points": value})
    assert req.pos_points.shape == (0, 2) and req.neg_points.shape == (0, 2)
    req = interactor({"image": IMG64})
    assert req.pos_points.shape == (0, 2) and req.neg_points.shape == (0, 2)


@pytest.mark.parametrize("key", ["pos_points", "neg_points"])
@pytest.mark.parametrize("value, words", [
    ("1,2", ["'{key}' must be a list"]),
    ({"x": 1, "y": 2}, ["'{key}' must be a list"]),
    ([1, 2], ["'{key}[0]' must be an [x, y] pair"]),
    ([[1, 2], [3]], ["'{key}[1]' must be an [x, y] pair"]),
    ([[1, 2, 3]], ["'{key}[0]' must be an [x, y] pair"]),
    ([[]], ["'{key}[0]' must be an [x, y] pair"]),
    ([{"x": 1, "y": 2}], ["'{key}[0]' must be an [x, y] pair"]),
    ([["1", "2"]], ["'{key}[0]' coordinate must be a number", '"1"']),
    ([[True, 2]], ["'{key}[0]' coordinate must be a number", "true"]),
    ([[1, None]], ["'{key}[0]' coordinate must be a number", "null"]),
    ([[1, [2]]], ["'{key}[0]' coordinate must be a number"]),
    ([[float("nan"), 2]], ["'{key}[0]' coordinate must be finite"]),
    ([[1, float("inf")]], ["'{key}[0]' coordinate must be finite"]),
    ([[-float("inf"), 1]], ["'{key}[0]' coordinate must be finite"]),
])
def test_bad_points(key, value, words):
    message = refused(interactor, {"image": IMG64, key: value})
    for word in words:
        assert word.format(key=key) in message, message


def test_point_count_limit():
    assert len(interactor({"image": IMG64, "pos_points": [[1, 1]] * 3}, max_points=3).pos_points) == 3
    message = refused(interactor, {"image": IMG64, "neg_points": [[1, 1]] * 4}, max_points=3)
    assert "'neg_points' has 4 points; at most 3" in message


def test_nan_from_json_text_is_refused():
    # Python's json reads NaN and Infinity, which are not JSON
    for text in ('{"image": "%s", "pos_points": [[NaN, 1]]}', '{"image": "%s", "neg_points": [[1, -Infinity]]}'):
        assert "finite" in refused(interactor, text % IMG64)


# --- box ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("box", [
    [[10, 20], [30, 40]],
    [[30, 40], [10, 20]],
    [[10, 40], [30, 20]],
    [[30, 20], [10, 40]],
    [10, 20, 30, 40],
    [30, 40, 10, 20],
])
def test_box_corners_in_any_order(box):
    assert interactor({"image": IMG64, "obj_bbox": box}).bbox.tolist() == [10.0, 20.0, 30.0, 40.0]


@pytest.mark.parametrize("box", [None, []])
def test_no_box(box):
    assert interactor({"image": IMG64, "obj_bbox": box}).bbox is None


@pytest.mark.parametrize("box, words", [
    ("10,20,30,40", ["'obj_bbox' must be"]),
    ({"x1": 10}, ["'obj_bbox' must be"]),
    (5, ["'obj_bbox' must be"]),
    ([[10, 20]], ["'obj_bbox'", "two corners"]),
    ([[10, 20], [30]], ["'obj_bbox'", "two corners"]),
    ([[10, 20, 0], [30, 40, 0]], ["'obj_bbox'", "two corners"]),
    ([10, 20, 30], ["'obj_bbox'", "two corners"]),
    ([10, 20, 30, 40, 50], ["'obj_bbox'", "two corners"]),
    ([[10, 20], [30, 40], [50, 60]], ["'obj_bbox'", "two corners"]),
    ([[10, 20], [30, "40"]], ["'obj_bbox' coordinate must be a number"]),
    ([[10, 20], [30, False]], ["'obj_bbox' coordinate must be a number"]),
    ([10, 20, 30, float("nan")], ["'obj_bbox' coordinate must be finite"]),
])
def test_bad_boxes(box, words):
    message = refused(interactor, {"image": IMG64, "obj_bbox": box})
    for word in words:
        assert word in message, message


# --- threshold ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, want", [(0, 0.0), (1, 1.0), (0.5, 0.5), (None, None)])
def test_threshold(value, want):
    assert interactor({"image": IMG64, "threshold": value}).threshold == want
    assert parse_detector({"image": IMG64, "threshold": value}, max_image_bytes=1000).threshold == want


@pytest.mark.parametrize("value, words", [
    (-0.01, ["'threshold' must lie in [0, 1]"]),
    (1.01, ["'threshold' must lie in [0, 1]"]),
    (50, ["'threshold' must lie in [0, 1]"]),
    ("0.5", ["'threshold' must be a number"]),
    (True, ["'threshold' must be a number"]),
    ([0.5], ["'threshold' must be a number"]),
    (float("nan"), ["'threshold' must be finite"]),
])
def test_bad_thresholds(value, words):
    for parse in (interactor, lambda b: parse_detector(b, max_image_bytes=1000)):
        message = refused(parse, {"image": IMG64, "threshold": value})
        for word in words:
            assert word in message


# --- brush --------------------------------------------------------------------------------------

def test_brush_parses_to_label_and_runs():
    brush = [{"label": "INL", "mask": [0, 4, 1, 1, 2, 2]}, {"label": "OCT_Object_2", "mask": [1, 1, 0, 0, 1, 0]}]
    assert interactor({"image": IMG64, "brush": brush}).brush == [
        ("INL", [0, 4, 1, 1, 2, 2]), ("OCT_Object_2", [1, 1, 0, 0, 1, 0])]
    assert interactor({"image": IMG64, "brush": None}).brush == []
    assert interactor({"image": IMG64, "brush": []}).brush == []


@pytest.mark.parametrize("brush, words", [
    ({"label": "INL", "mask": [0, 1, 0, 0, 0, 0]}, ["'brush' must be a list"]),
    ("INL", ["'brush' must be a list"]),
    (["INL"], ["'brush[0]' must be an object with a string 'label'"]),
    ([{"mask": [0, 1, 0, 0, 0, 0]}], ["'brush[0]'", "'label'"]),
    ([{"label": 3, "mask": [0, 1, 0, 0, 0, 0]}], ["'brush[0]'", "'label'"]),
    ([{"label": "INL"}], ["'brush[0].mask' must be a list of integers"]),
    ([{"label": "INL", "mask": "0 1 0 0 0 0"}], ["'brush[0].mask' must be a list of integers"]),
    ([{"label": "INL", "mask": [0, 1.0, 0, 0, 0, 0]}], ["'brush[0].mask' must be a list of integers"]),
    ([{"label": "INL", "mask": [0, True, 0, 0, 0, 0]}], ["'brush[0].mask' must be a list of integers"]),
    ([{"label": "INL", "mask": [0, 1, 0, 0, 0, 0]}, {"label": "OS", "mask": None}],
     ["'brush[1].mask' must be a list of integers"]),
])
def test_bad_brush(brush, words):
    message = refused(interactor, {"image": IMG64, "brush": brush})
    for word in words:
        assert word in message, message


def test_brush_count_limit():
    item = {"label": "INL", "mask": [0, 1, 0, 0, 0, 0]}
    assert len(interactor({"image": IMG64, "brush": [item] * 2}, max_points=2).brush) == 2
    assert "at most 2" in refused(interactor, {"image": IMG64, "brush": [item] * 3}, max_points=2)


# --- detector -----------------------------------------------------------------------------------

def test_detector_reads_image_and_threshold_only():
    req = parse_detector({"image": IMG64, "threshold": 0.3, "pos_points": "junk", "obj_bbox": 5},
                         max_image_bytes=1000)
    assert req.image == IMG and req.threshold == 0.3
    assert "missing 'image'" in refused(parse_detector, {"threshold": 0.3}, max_image_bytes=1000)
    assert "JSON object" in refused(parse_detector, "[]", max_image_bytes=1000)


# --- fitting to the frame -----------------------------------------------------------------------

def test_points_near_the_frame_are_clipped():
    # 100 x 200 frame (h x w): the margin is 10% of 200 = 20 pixels
    pts = np.array([[-20.0, 5.0], [220.0, 50.0], [10.0, -20.0], [50.0, 120.0], [200.0, 100.0], [3.5, 7.25]])
    out = fit_points(pts, 100, 200, "positive")
    assert out.tolist() == [[0, 5], [200, 50], [10, 0], [50, 100], [200, 100], [3.5, 7.25]]


@pytest.mark.parametrize("point", [[-20.5, 5], [220.5, 50], [10, -20.5], [50, 120.5], [1e9, 1e9]])
def test_points_far_outside_are_refused(point):
    message = refused(fit_points, np.array([[1.0, 1.0], point], float), 100, 200, "negative")
    assert "negative point" in message and "outside the 200x100 image" in message


def test_no_points_fit():
    assert fit_points(np.zeros((0, 2)), 100, 200, "positive").shape == (0, 2)


def test_box_is_clipped_to_the_frame():
    assert fit_bbox(None, 100, 200) is None
    assert fit_bbox(np.array([10.0, 20.0, 30.0, 40.0]), 100, 200).tolist() == [10, 20, 30, 40]
    assert fit_bbox(np.array([-50.0, -5.0, 500.0, 400.0]), 100, 200).tolist() == [0, 0, 200, 100]
    assert fit_bbox(np.array([190.0, 90.0, 201.0, 101.0]), 100, 200).tolist() == [190, 90, 200, 100]


@pytest.mark.parametrize("box", [
    [10.0, 20.0, 10.5, 40.0],  # narrower than a pixel
    [10.0, 20.0, 30.0, 20.0],  # flat
    [250.0, 10.0, 300.0, 50.0],  # right of the frame
    [-30.0, -30.0, -1.0, -1.0],  # above and left
])
def test_box_without_a_pixel_is_refused(box):
    message = refused(fit_bbox, np.array(box), 100, 200)
    assert "'obj_bbox'" in message and "covers no pixel of the 200x100 image" in message
