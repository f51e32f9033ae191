"""How an annotator's clicks pick layers out of the model's label map.

- The box (obj_bbox), when given, limits everything to its pixels.
- A negative click removes the connected region of one class under it.
- Positive clicks pick the classes under them; the mask keeps, of those classes, only the
  connected regions that contain a positive click. No positive click picks the whole retina.
Regions are 4-connected, as the polygons are.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Selection:
    label_map: np.ndarray  # [H, W] the model's labels (same dtype) after box and negative clicks
    mask: np.ndarray  # [H, W] bool: what the annotator picked
    picked: list  # class indices picked, in order of first click
    ignored_clicks: list  # positive clicks that fell on background or a removed region


def _pixel(point, height, width):
    x, y = point
    return min(int(y), height - 1), min(int(x), width - 1)


def _region(label_map: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 4-connected region of one class that contains pixel (row, col)."""
    same = label_map == label_map[row, col]
    regions, _ = ndimage.label(same)
    return regions == regions[row, col]


def select(label_map: np.ndarray, pos_points, neg_points, bbox=None) -> Selection:
    h, w = label_map.shape
    labels = label_map.copy()
    if bbox is not None:
        x1, y1, x2, y2 = bbox
        inside = np.zeros_like(labels, dtype=bool)
        # pixel (c, r) is inside when its centre is: the box drawn in CVAT's pixel-edge space
        inside[int(np.ceil(y1 - 0.5)):int(np.ceil(y2 - 0.5)), int(np.ceil(x1 - 0.5)):int(np.ceil(x2 - 0.5))] = True
        labels[~inside] = 0
    for point in neg_points:
        r, c = _pixel(point, h, w)
        if labels[r, c] != 0:
            labels[_region(labels, r, c)] = 0

    picked, ignored = [], []
    if len(pos_points) == 0:
        mask = labels != 0
        picked = [int(k) for k in np.unique(labels) if k != 0]
    else:
        mask = np.zeros_like(labels, dtype=bool)
        for point in pos_points:
            r, c = _pixel(point, h, w)
            k = int(labels[r, c])
            if k == 0:
                ignored.append([float(point[0]), float(point[1])])
                continue
            if not mask[r, c]:
                mask |= _region(labels, r, c)
            if k not in picked:
                picked.append(k)
    return Selection(labels, mask, picked, ignored)
