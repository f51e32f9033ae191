"""The ETDRS grid: nine sectors in circles of 1, 3 and 6 mm diameter around the fovea.

An A-scan belongs to the sector its centre lies in (en-face coordinates of
:mod:`.geometry`): CSF for r < 0.5 mm, the inner ring for 0.5 <= r < 1.5, the outer ring for
1.5 <= r < 3; superior or inferior when |y| >= |x|, else nasal or temporal (nasal is +x in a right
eye, -x in a left eye). A sector's value is the mean over its A-scans.

Coverage: every A-scan stands for the lateral x B-scan spacing rectangle around its centre;
a sector's coverage is the area of its intersection with the union of those rectangles (of the
A-scans that hold retina), over the sector's area, computed on polygons with shapely. A scan
that reaches only part of a sector thus reports that fraction and the mean of what it covers.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import shapely
from shapely.geometry import Point, Polygon

from sam2oct.evaluation.thickness.geometry import Spacing, nasal_sign

SECTORS = ("CSF", "SIM", "NIM", "IIM", "TIM", "SOM", "NOM", "IOM", "TOM")
RADII_MM = (0.5, 1.5, 3.0)  # circles of 1, 3 and 6 mm diameter
QUADRANTS = ("S", "N", "I", "T")  # order of the ring sectors in SECTORS: SIM NIM IIM TIM, SOM ...
_CIRCLE_SEGMENTS = 512  # per quarter circle: polygon area within 2e-6 of the circle's


def sector_area_mm2(name: str) -> float:
    """The sector's exact area: pi/4 x (R^2 - r^2) for a ring sector, pi/4 for the CSF."""
    if name == "CSF":
        return math.pi * RADII_MM[0] ** 2
    inner, outer = (RADII_MM[0], RADII_MM[1]) if name.endswith("IM") else (RADII_MM[1], RADII_MM[2])
    return math.pi * (outer ** 2 - inner ** 2) / 4


def sector_index(shape, fovea, spacing: Spacing, laterality: str) -> np.ndarray:
    """[N, W] int8: the index in SECTORS of each A-scan's sector, -1 outside the 6 mm circle.

    Computed in µm on squared radii, so an A-scan exactly on a circle goes to the outer side."""
    n, w = shape
    bscan, column = fovea
    x = (np.arange(w, dtype=np.float64) - column)[None, :] * spacing.lateral
    y = (bscan - np.arange(n, dtype=np.float64))[:, None] * spacing.bscan
    x, y = np.broadcast_arrays(x, y)
    r2 = x * x + y * y
    ring = np.full((n, w), -1, dtype=np.int8)
    for k, radius in reversed(list(enumerate(RADII_MM))):
        ring[r2 < (radius * 1000.0) ** 2] = k
    vertical = np.abs(y) >= np.abs(x)
    nasal = x * nasal_sign(laterality) > 0
    quadrant = np.where(vertical, np.where(y > 0, 0, 2), np.where(nasal, 1, 3))
    index = np.where(ring == 0, 0, np.where(ring == 1, 1 + quadrant, 5 + quadrant))
    return np.where(ring < 0, -1, index).astype(np.int8)


@lru_cache(maxsize=2)
def sector_polygons(laterality: str) -> dict:
    """{sector: shapely polygon} in en-face mm around the fovea."""
    discs = [Point(0, 0).buffer(r, quad_segs=_CIRCLE_SEGMENTS) for r in RADII_MM]
    far = 2 * RADII_MM[-1]
    sign = nasal_sign(laterality)
    wedges = {  # |y| >= |x| wedges for S and I, the rest for N and T
        "S": Polygon([(0, 0), (-far, far), (far, far)]),
        "I": Polygon([(0, 0), (far, -far), (-far, -far)]),
        "N": Polygon([(0, 0), (sign * far, far), (sign * far, -far)]),
        "T": Polygon([(0, 0), (-sign * far, -far), (-sign * far, far)]),
    }
    rings = {"IM": discs[1].difference(discs[0]), "OM": discs[2].difference(discs[1])}
    polygons = {"CSF": discs[0]}
    for ring, shape in rings.items():
        for q in QUADRANTS:
            polygons[q + ring] = shape.intersection(wedges[q])
    return {name: polygons[name] for name in SECTORS}


def footprint(valid: np.ndarray, fovea, spacing: Spacing):
    """The union of the A-scan rectangles of the valid A-scans, in en-face mm (shapely geometry)."""
    bscan, column = fovea
    lat, bs = spacing.lateral * 1e-3, spacing.bscan * 1e-3
    boxes = []
    for b in range(valid.shape[0]):
        row = np.concatenate([[False], valid[b], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(row))  # starts and ends of the runs of valid columns
        y0, y1 = (bscan - b - 0.5) * bs, (bscan - b + 0.5) * bs
        for start, stop in zip(edges[::2], edges[1::2]):
            boxes.append(shapely.box((start - 0.5 - column) * lat, y0, (stop - 0.5 - column) * lat, y1))
    return shapely.union_all(boxes) if boxes else shapely.Polygon()


def coverage(valid: np.ndarray, fovea, spacing: Spacing, laterality: str) -> dict:
    """{sector: fraction of its area covered by the valid A-scans' footprint, 0..1}."""
    area = footprint(np.asarray(valid, dtype=bool), fovea, spacing)
    out = {}
    for name, polygon in sector_polygons(laterality).items():
        fraction = polygon.intersection(area).area / polygon.area
        out[name] = float(min(max(fraction, 0.0), 1.0))
    return out


def sector_means(values: np.ndarray, index: np.ndarray, valid: np.ndarray) -> dict:
    """{sector: mean of values over its valid A-scans, None where it has none}."""
    out = {}
    for k, name in enumerate(SECTORS):
        picked = values[(index == k) & valid]
        out[name] = float(picked.mean()) if picked.size else None
    return out
