"""How an annotator's clicks pick layers out of the model's label map.

- The box (obj_bbox), when given, limits everything to its pixels.
- A negative click removes the connected region of one class under it.
- Positive clicks pick the classes under them; the mask keeps, of those classes, only the
  connected regions that contain a positive click. No positive click picks the whole retina.
- A positive click just off a layer (on background, within ``snap`` pixels of a layer pixel)
  picks the nearest layer pixel's region: thin layers are easy to miss by a pixel or two.
Regions are 4-connected, as the polygons are.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class Selection:
    label_map: np.ndarray  # [H, W] class indices: the model's labels after box and negative clicks
    mask: np.ndarray  # [H, W] bool: what the annotator picked
    picked: list  # class indices picked, in order of first click
    ignored_clicks: list  # positive clicks that picked nothing
    snapped_clicks: list = field(default_factory=list)  # [[x, y], [x', y']]: click moved to a layer pixel
    reason: str = ""  # why the mask is empty, in the annotator's words


def _pixel(point, height, width):
    x, y = point
    return min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)


def _region(label_map: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 4-connected region of one class that contains pixel (row, col)."""
    same = label_map == label_map[row, col]
    regions, _ = ndimage.label(same)
    return regions == regions[row, col]


def _nearest_layer_pixel(labels: np.ndarray, row: int, col: int, snap: float):
    """The closest non-background pixel within ``snap`` pixels (centre to centre), or None."""
    r = int(np.floor(snap))
    if r < 1:
        return None
    h, w = labels.shape
    r0, r1, c0, c1 = max(row - r, 0), min(row + r + 1, h), max(col - r, 0), min(col + r + 1, w)
    rows, cols = np.nonzero(labels[r0:r1, c0:c1])
    if not rows.size:
        return None
    d2 = (rows + r0 - row) ** 2 + (cols + c0 - col) ** 2
    best = np.argmin(d2)  # ties: the first in row-major order, so the answer is deterministic
    if d2[best] > snap * snap:
        return None
    return int(rows[best] + r0), int(cols[best] + c0)


def _box_inside(shape, bbox) -> np.ndarray:
    x1, y1, x2, y2 = bbox
    inside = np.zeros(shape, dtype=bool)
    # pixel (c, r) is inside when its centre is: the box drawn in CVAT's pixel-edge space
    inside[int(np.ceil(y1 - 0.5)):int(np.ceil(y2 - 0.5)), int(np.ceil(x1 - 0.5)):int(np.ceil(x2 - 0.5))] = True
    return inside


def select(label_map: np.ndarray, pos_points, neg_points, bbox=None, snap: float = 0.0) -> Selection:
    h, w = label_map.shape
    labels = label_map.copy()
    inside = None
    if bbox is not None:
        inside = _box_inside(labels.shape, bbox)
        labels[~inside] = 0
    for point in neg_points:
        r, c = _pixel(point, h, w)
        if labels[r, c] != 0:
            labels[_region(labels, r, c)] = 0

    picked, ignored, snapped, why = [], [], [], []
    if len(pos_points) == 0:
        mask = labels != 0
        picked = [int(k) for k in np.unique(labels) if k != 0]
        if not picked:
            why.append("the model found no retinal layer" + ("" if bbox is None and not len(neg_points) else
                                                              " left after the box and negative clicks"))
    else:
        mask = np.zeros_like(labels, dtype=bool)
        for point in pos_points:
            r, c = _pixel(point, h, w)
            if labels[r, c] == 0:
                # only a click truly off every layer snaps, not one on a region the box or a
                # negative click removed
                off_layer = label_map[r, c] == 0 and (inside is None or inside[r, c])
                near = _nearest_layer_pixel(labels, r, c, snap) if off_layer else None
                if near is None:
                    ignored.append([float(point[0]), float(point[1])])
                    why.append(_why_empty(label_map, inside, r, c, point))
                    continue
                snapped.append([[float(point[0]), float(point[1])], [near[1] + 0.5, near[0] + 0.5]])
                r, c = near
            k = int(labels[r, c])
            if not mask[r, c]:
                mask |= _region(labels, r, c)
            if k not in picked:
                picked.append(k)
    reason = "" if mask.any() else "; ".join(dict.fromkeys(why)) or "nothing was picked"
    return Selection(labels, mask, picked, ignored, snapped, reason)


def _why_empty(label_map, inside, r, c, point) -> str:
    """Why a positive click at pixel (r, c) picked nothing: what removed the layer under it."""
    at = f"the positive click at ({float(point[0]):g}, {float(point[1]):g})"
    if inside is not None and not inside[r, c]:
        return f"{at} lies outside the box"
    if label_map[r, c] == 0:
        return f"{at} falls on background (no layer within reach); click inside a layer"
    return f"{at} is on a region a negative click removed"
