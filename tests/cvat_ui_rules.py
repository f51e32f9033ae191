"""What CVAT's web UI draws from an interactor reply, re-implemented here from CVAT's source,
independently of sam2oct's encoders, so that the tests can ask "where would this land?".
docs/cvat-replies.md cites the CVAT source (files and lines) each rule comes from.

CVAT 2.60 and later:
- cvat-core's ``LambdaManager.call``: a reply holding a ``mask`` key is wrapped as ONE mask shape
  whose points are ``mask2Rle(mask.flat())`` followed by ``[0, 0, maskWidth - 1, maskHeight - 1]``
  (``bounds`` is not read); otherwise, when ``shapes`` is a list, each shape keeps its
  ``points``; its ``attributes`` are kept only when every one has a numeric ``spec_id`` and a
  string ``value``; a missing ``type`` counts as ``mask``; shapes of another type are dropped.
- cvat-ui's AI tools control: a shape's confidence is ``+value`` of its attribute with
  ``spec_id`` 0, else 1; shapes below the confidence slider (0.5 by default) are neither drawn
  nor saved; saved masks need 6 or more numbers. A shape whose first OpenCV contour has fewer
  than 3 points (a mask of one or two pixels) is skipped too: not re-implemented here (it needs
  the UI's OpenCV contour finder).
- cvat-canvas's ``RLEToImageData`` and ``putShapes``: the last four numbers are ``left, top,
  right, bottom``; the runs, alternating from 0, fill a ``(right - left + 1) x (bottom - top +
  1)`` box row by row, drawn with its corner at ``(left, top)``.

CVAT 2.12 to 2.59 (the AI tools control before CVAT's PR #10329): the reply's ``mask`` (nested
rows) is run-length encoded by value change and placed by ``bounds`` when present, else at (0, 0).
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5


def js_mask2rle(values) -> list:
    """cvat-core's mask2Rle: runs by value change, the first a run of zeros (maybe empty)."""
    acc = [0]
    if not len(values):
        return acc
    if values[0] > 0:
        acc.append(1)
    else:
        acc[0] = 1
    for prev, val in zip(values[:-1], values[1:]):
        if prev == val:
            acc[-1] += 1
        else:
            acc.append(1)
    return acc


def core_shapes(reply) -> list:
    """``LambdaManager.call`` for an interactor: the shapes the UI goes on with."""
    if "mask" in reply:
        mask = reply["mask"]
        h, w = len(mask), len(mask[0])
        rle = js_mask2rle([v for row in mask for v in row])
        rle = [0, 0, 0, 0, 0] if len(rle) < 2 else rle + [0, 0, w - 1, h - 1]
        return [{"points": rle, "attributes": [], "type": "mask"}]
    if isinstance(reply.get("shapes"), list):
        out = []
        for item in reply["shapes"]:
            attrs = item.get("attributes")
            ok = isinstance(attrs, list) and all(
                isinstance(a, dict) and type(a.get("spec_id")) in (int, float) and isinstance(a.get("value"), str)
                for a in attrs)
            shape = {"points": [int(v) for v in item["points"]], "attributes": attrs if ok else [],
                     "type": item.get("type") or "mask"}
            if shape["type"] == "mask":
                out.append(shape)
        return out
    return []


def draw_rle(points, height, width) -> np.ndarray:
    """The canvas's RLEToImageData, placed at (left, top) on a height x width frame."""
    *runs, left, top, right, bottom = points
    bw, bh = right - left + 1, bottom - top + 1
    flat = np.zeros(bw * bh, bool)
    pos, value = 0, False
    for run in runs:
        flat[pos:pos + run] = value  # a typed array ignores writes past its end
        pos, value = pos + run, not value
    frame = np.zeros((height, width), bool)
    box = flat.reshape(bh, bw)
    ys, xs = slice(max(top, 0), min(top + bh, height)), slice(max(left, 0), min(left + bw, width))
    frame[ys, xs] = box[ys.start - top:ys.stop - top, xs.start - left:xs.stop - left]
    return frame


def current_ui_draws(reply, height, width, threshold=DEFAULT_THRESHOLD) -> list:
    """The masks CVAT >= 2.60's UI draws and saves for a reply: one [H, W] bool array per object."""
    out = []
    for shape in core_shapes(reply):
        conf = next((a["value"] for a in shape["attributes"] if a["spec_id"] == 0), None)
        confidence = 1.0 if conf is None else float(conf)
        if confidence < threshold or len(shape["points"]) < 6:
            continue
        out.append(draw_rle(shape["points"], height, width))
    return out


def legacy_ui_draws(reply, height, width) -> np.ndarray:
    """The mask CVAT 2.12 - 2.59's UI draws for a reply (``mask`` placed by ``bounds``)."""
    mask = reply["mask"]
    rle = js_mask2rle([v for row in mask for v in row])
    box = list(reply["bounds"]) if "bounds" in reply else [0, 0, len(mask[0]) - 1, len(mask) - 1]
    return draw_rle(rle + box, height, width)
