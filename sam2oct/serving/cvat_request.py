"""CVAT's side of the wire: validate what CVAT sends, and shape what it accepts back.

Everything a client controls is checked here, before any model work, and refused with a
RequestError that says which key was wrong and why.
"""

import base64
import binascii
import json
import math
from dataclasses import dataclass, field

import numpy as np

from sam2oct.errors import RequestError

# Clicks this far outside the frame (a fraction of its larger side) are refused, not clipped.
_POINT_MARGIN = 0.1


@dataclass
class InteractorRequest:
    image: bytes
    pos_points: np.ndarray  # [N, 2] float (x, y) image pixels
    neg_points: np.ndarray
    bbox: np.ndarray | None  # [x1, y1, x2, y2], x1 <= x2, y1 <= y2
    threshold: float | None
    brush: list = field(default_factory=list)  # [(label name, CVAT run-length mask)]


@dataclass
class DetectorRequest:
    image: bytes
    threshold: float | None


def parse_body(body) -> dict:
    """Nuclio hands over a dict for application/json, else bytes or str."""
    if isinstance(body, dict):
        return body
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("request body is not UTF-8 JSON") from None
    if body is None or (isinstance(body, str) and not body.strip()):
        raise RequestError("request body is empty; expected a JSON object with an 'image' key")
    if not isinstance(body, str):  # Nuclio already decoded a JSON body that is not an object
        raise RequestError(f"request body must be a JSON object, not a {type(body).__name__}")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # ValueError: also numbers over Python's 4300-digit limit
        raise RequestError("request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RequestError(f"request body must be a JSON object, not a {type(obj).__name__}")
    return obj


def _image(body: dict, max_bytes: int) -> bytes:
    value = body.get("image")
    if value is None:
        raise RequestError("missing 'image': base64 of the frame file")
    if not isinstance(value, str):
        raise RequestError(f"'image' must be a base64 string, not {type(value).__name__}")
    start = value.index(",") + 1 if value.startswith("data:") and "," in value else 0  # tolerate a data URL
    # Size first, before any copy of a large value (whitespace such as MIME line breaks does not count).
    size, limit = len(value) - start, max_bytes * 4 // 3 + 4
    if size > limit and size - sum(map(value.count, " \t\n\r\v\f")) > limit:
        raise RequestError(f"'image' is larger than {max_bytes} bytes", status=413)
    value = "".join(value[start:].split())
    if len(value) > max_bytes * 4 // 3 + 4:
        raise RequestError(f"'image' is larger than {max_bytes} bytes", status=413)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'image' is not valid base64") from None
    if not data:
        raise RequestError("'image' is empty")
    if len(data) > max_bytes:  # the length check above allows a few bytes of base64 slack
        raise RequestError(f"'image' is larger than {max_bytes} bytes", status=413)
    return data


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{what} must be a number, not {json.dumps(value)[:40]}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        raise RequestError(f"{what} must be finite, not an integer beyond float range") from None
    if not math.isfinite(value):
        raise RequestError(f"{what} must be finite, not {value}")
    return value


def _points(body: dict, key: str, max_points: int) -> np.ndarray:
    value = body.get(key)
    if value is None:
        return np.zeros((0, 2))
    if not isinstance(value, list):
        raise RequestError(f"'{key}' must be a list of [x, y] pairs")
    if len(value) > max_points:
        raise RequestError(f"'{key}' has {len(value)} points; at most {max_points} are accepted")
    out = np.zeros((len(value), 2))
    for i, p in enumerate(value):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise RequestError(f"'{key}[{i}]' must be an [x, y] pair")
        out[i] = [_number(c, f"'{key}[{i}]' coordinate") for c in p]
    return out


def _bbox(body: dict):
    value = body.get("obj_bbox")
    if value is None or (isinstance(value, list) and len(value) == 0):
        return None
    if not isinstance(value, list):
        raise RequestError("'obj_bbox' must be [[x1, y1], [x2, y2]]")
    if len(value) == 2 and all(isinstance(c, (list, tuple)) for c in value):
        flat = [c for corner in value for c in (corner if len(corner) == 2 else [None] * 3)]
    else:
        flat = value
    if len(flat) != 4:
        raise RequestError("'obj_bbox' must be [[x1, y1], [x2, y2]] (two corners)")
    x1, y1, x2, y2 = (_number(c, "'obj_bbox' coordinate") for c in flat)
    return np.array([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])


def _threshold(body: dict):
    value = body.get("threshold")
    if value is None:
        return None
    t = _number(value, "'threshold'")
    if not 0.0 <= t <= 1.0:
        raise RequestError(f"'threshold' must lie in [0, 1], not {t}")
    return t


def _brush(body: dict, max_items: int) -> list:
    value = body.get("brush")
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError("'brush' must be a list of {\"label\": NAME, \"mask\": [run lengths..., x1, y1, x2, y2]}")
    if len(value) > max_items:
        raise RequestError(f"'brush' has {len(value)} masks; at most {max_items} are accepted")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            raise RequestError(f"'brush[{i}]' must be an object with a string 'label'")
        rle = item.get("mask")
        if not isinstance(rle, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in rle):
            raise RequestError(f"'brush[{i}].mask' must be a list of integers (CVAT mask run lengths + box)")
        out.append((item["label"], rle))
    return out


def parse_interactor(body, *, max_points: int, max_image_bytes: int) -> InteractorRequest:
    body = parse_body(body)
    return InteractorRequest(
        image=_image(body, max_image_bytes),
        pos_points=_points(body, "pos_points", max_points),
        neg_points=_points(body, "neg_points", max_points),
        bbox=_bbox(body),
        threshold=_threshold(body),
        brush=_brush(body, max_points),
    )


def parse_detector(body, *, max_image_bytes: int) -> DetectorRequest:
    body = parse_body(body)
    return DetectorRequest(image=_image(body, max_image_bytes), threshold=_threshold(body))


def fit_points(points: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """Clip clicks that fall just outside the frame (edge clicks); refuse ones far outside."""
    margin = _POINT_MARGIN * max(height, width)
    far = (points[:, 0] < -margin) | (points[:, 0] > width + margin) | \
          (points[:, 1] < -margin) | (points[:, 1] > height + margin)
    if far.any():
        x, y = points[far][0]
        raise RequestError(f"{what} point ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return np.clip(points, 0, [width, height])


def fit_bbox(bbox: np.ndarray | None, height: int, width: int):
    if bbox is None:
        return None
    x1, y1, x2, y2 = np.clip(bbox, 0, [width, height, width, height])
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise RequestError(f"'obj_bbox' {bbox.tolist()} covers no pixel of the {width}x{height} image")
    return np.array([x1, y1, x2, y2])
