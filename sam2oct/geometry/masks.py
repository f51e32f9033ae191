"""Binary masks in the encodings CVAT exchanges with serverless functions.

All boxes are ``[xtl, ytl, xbr, ybr]`` with *inclusive* pixel indices, and all
values are plain Python ints (CVAT's server does arithmetic on them that
booleans break).  Encoders take a full-image 2-D mask (non-zero = set) and
refuse an empty mask with ``ValueError``: none of these formats can express one,
so the caller decides what an empty result means.  ``rle_to_mask`` reads what
a client sends and refuses malformed input with ``RequestError``.

CVAT's stored mask format (run lengths over a box) is written with ``cvat_sdk.masks.encode_mask``
where cvat-sdk is installed (sam2oct/cvat_function.py); the Nuclio image has no cvat-sdk and
only reads that format, hence ``rle_to_mask`` here (checked against ``decode_mask`` in the tests).
"""

from __future__ import annotations

import numpy as np

from sam2oct.errors import RequestError

__all__ = ["crop_to_box", "to_interactor_crop", "to_detector_mask", "rle_to_mask"]


def to_interactor_crop(mask):
    """Interactor reply ``mask`` and ``bounds``: ``([[0/1, ...], ...], [xtl, ytl, xbr, ybr])``, the crop of the box."""
    crop, box = crop_to_box(mask)
    return crop.astype(np.uint8).tolist(), box


def to_detector_mask(mask, offset=(0, 0)):
    """Detector ``mask`` field: the box's 0/255 bitmap, row-major and flattened, then ``[xtl, ytl, xbr, ybr]``.

    ``offset`` (x, y) places a mask that is itself a crop of the frame at that corner."""
    crop, (x1, y1, x2, y2) = crop_to_box(mask)
    dx, dy = (int(v) for v in offset)
    return (crop.astype(np.uint8) * 255).ravel().tolist() + [x1 + dx, y1 + dy, x2 + dx, y2 + dy]


def rle_to_mask(points, height, width):
    """Decode CVAT run lengths + inclusive box into a ``(height, width)`` bool mask.

    Refuses with ``RequestError`` (400) anything but numbers, a box outside the
    image or inverted, negative or fractional runs, or runs that do not add up
    to exactly the box's area.  Runs with no set pixel decode to an empty mask.
    """
    if not isinstance(points, (list, tuple, np.ndarray)):
        raise RequestError(f"mask points must be a list of numbers, got {type(points).__name__}")
    if not 5 <= len(points) <= height * width + 5:  # at most one run per pixel plus the leading zero run
        raise RequestError(
            f"mask points must hold 1 to {height * width + 1} run lengths and a box, got {len(points)} values")
    values = np.asarray(points)
    if values.ndim != 1 or values.dtype.kind not in "iuf" or any(type(v) is bool for v in points):
        raise RequestError("mask points must be a flat list of numbers")
    if not (np.isfinite(values).all() and (values == np.round(values)).all()):
        raise RequestError("mask run lengths and box must be whole numbers")
    if np.abs(values).max() > height * width:  # also keeps the int64 sums below from overflowing
        raise RequestError(f"mask points hold values larger than the {width}x{height} image allows")
    values = values.astype(np.int64)
    runs, (x1, y1, x2, y2) = values[:-4], values[-4:].tolist()
    if x2 < x1 or y2 < y1:
        raise RequestError(f"mask box [{x1}, {y1}, {x2}, {y2}] is inverted (need x2 >= x1 and y2 >= y1)")
    if x1 < 0 or y1 < 0 or x2 >= width or y2 >= height:
        raise RequestError(f"mask box [{x1}, {y1}, {x2}, {y2}] lies outside the {width}x{height} image")
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    if (runs < 0).any():
        raise RequestError("mask run lengths must not be negative")
    if runs.sum() != area:
        raise RequestError(f"mask run lengths add up to {runs.sum()}, but the box holds {area} pixels")
    bitmap = np.zeros((height, width), dtype=bool)
    bitmap[y1:y2 + 1, x1:x2 + 1] = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(y2 - y1 + 1, x2 - x1 + 1)
    return bitmap


def crop_to_box(mask):
    """The set pixels' bounding box crop (bool) and its inclusive ``[xtl, ytl, xbr, ybr]``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        raise ValueError("mask is empty: CVAT mask encodings need at least one set pixel")
    y1, y2, x1, x2 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return mask[y1:y2 + 1, x1:x2 + 1] != 0, [x1, y1, x2, y2]
