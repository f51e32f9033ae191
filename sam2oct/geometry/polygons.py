"""Label maps and binary masks to CVAT polygons on pixel edges.

Pixel ``(x, y)`` covers the square ``[x, x+1] x [y, y+1]`` (the way CVAT draws
mask pixels), so polygon coordinates lie in ``[0, W] x [0, H]``.  The polygons of
one label map form a *coverage*: neighbouring layers share the same boundary
vertices, with no gap and no overlap, before and after simplification.

CVAT polygons cannot have holes.  A region that encloses another region is cut
into hole-free pieces along vertical pixel-edge lines through its holes (see
``docs/polygons.md``); the pieces still tile the region exactly.

The map is handled as horizontal runs of equal pixels, never pixel by pixel in
Python: regions are the connected runs, small regions are merged on the graph
of regions, and the region outlines are traced from the runs' edges with numpy
and scipy's graph routines.  GDAL's polygonize and sieve were used before; each
costs 12-13 ms on a blank 1024x1024 map, most of the 20 ms budget, and sieve
follows a different rule (see ``docs/polygons.md``).
"""


from __future__ import annotations

from itertools import chain

import numpy as np
import rasterio.features
import shapely

from sam2oct.geometry.merge import as_label_raster, merge_small_regions, paint
from sam2oct.geometry.runs import Runs, components, hole_counts, region_values
from sam2oct.geometry.trace import cut_holes, exterior_points, hole_spans, trace

__all__ = ["label_map_to_shapes", "trace_label_map", "mask_outline", "rasterize_shapes", "flatten_points"]


def label_map_to_shapes(label_map, class_names, *, tolerance, min_area):
    """Trace a label map into CVAT polygon shapes that tile the image exactly.

    ``label_map`` is a 2-D array of class indices, of any integer type
    (uint16 for more than 256 classes); ``class_names[k]`` names class ``k``
    and class 0 is background, never returned.  Returns one
    ``{"label", "type": "polygon", "points": [[x, y], ...]}`` per 4-connected
    region of each other class, sorted by class index, then top to bottom.

    - Regions of fewer than ``min_area`` pixels (background included) first
      join the neighbouring class they share the longest border with, in
      pixel edges (ties: the lowest class index); their pixels take that
      class, so the image stays tiled.  This runs in rounds: in each, every
      small region that touches no smaller small region moves (equal sizes
      are ordered by a fixed pseudo-random hash of the region's first pixel),
      then a moved region and its neighbours of the class it took are one
      region.  It stops when every region has ``min_area`` pixels or no small
      region has a neighbour.
    - A region that encloses other regions is cut into hole-free pieces by
      vertical lines at integer x through its holes; each piece is returned
      as its own shape of the same label.
    - All regions, background included, are simplified together with
      ``shapely.coverage_simplify(tolerance)`` (``0`` keeps the exact pixel
      outline), so a shared boundary gets the same vertices on both sides;
      the image border is kept fixed.

    Points are plain floats, the ring is not closed (first point not
    repeated), and runs counter-clockwise in x/y (clockwise on screen,
    where y points down).
    """
    return trace_label_map(label_map, class_names, tolerance=tolerance, min_area=min_area)[0]


def trace_label_map(label_map, class_names, *, tolerance, min_area):
    """:func:`label_map_to_shapes` and which pixels each shape holds: ``(shapes, owner)``.

    ``owner`` is an int32 raster: ``i + 1`` on the pixels of ``shapes[i]`` in the merged map
    (exactly, whatever ``tolerance``: the pieces before simplification), 0 on background.
    A map already cleaned by ``clean_label_map(label_map, min_area)`` traced with ``min_area``
    0 gives the same shapes as the raw map traced with ``min_area``.
    """
    labels = _check_label_map(label_map, len(class_names))
    if tolerance < 0 or min_area < 0:
        raise ValueError("tolerance and min_area must be >= 0")
    runs = Runs.of_raster(labels)
    runs, region = merge_small_regions(runs, min_area)
    classes = region_values(runs, region)
    holed = np.flatnonzero((hole_counts(runs, region) > 0) & (classes != 0))
    if holed.size:
        runs, region = cut_holes(runs, region, *hole_spans(runs, region, holed))
        classes = region_values(runs, region)
    geoms = trace(runs, region)
    if tolerance > 0:
        geoms = shapely.coverage_simplify(geoms, tolerance, simplify_boundary=False)
    keep = np.flatnonzero(classes != 0)
    geoms, classes = geoms[keep], classes[keep]
    bounds = shapely.bounds(geoms)
    order = np.lexsort((bounds[:, 0], bounds[:, 1], classes))
    shapes = [
        {"label": class_names[classes[i]], "type": "polygon", "points": points}
        for i, points in zip(order, exterior_points(geoms[order]))
    ]
    shape_of_piece = np.zeros(region.max() + 1, np.int32)
    shape_of_piece[keep[order]] = np.arange(1, len(order) + 1, dtype=np.int32)
    owner = paint(Runs(runs.start, shape_of_piece[region], runs.shape), np.int32)
    return shapes, owner


def mask_outline(mask):
    """Outer boundary ``[[x, y], ...]`` of the largest 4-connected region of a 2-D mask.

    Non-zero pixels are foreground.  Holes are ignored (an outline, not a
    shape), the ring is exact on pixel edges and oriented as in
    :func:`label_map_to_shapes`.  An empty mask gives ``[]``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    runs = Runs.of_raster(mask != 0)
    upper, lower = runs.vertical_pairs
    region = components(runs, upper, lower, runs.key)
    foreground = np.flatnonzero(region_values(runs, region) != 0)
    if not foreground.size:
        return []
    area = np.bincount(region, weights=runs.x1 - runs.x0)
    geoms = trace(runs, region)
    return exterior_points(geoms[[foreground[np.argmax(area[foreground])]]])[0]


def rasterize_shapes(shapes, shape):
    """Raster of ``shapes``: ``i + 1`` on pixels whose centre ``shapes[i]`` holds, 0 where none does.

    For the shapes of one label map this partitions the pixels as the polygons
    tile the image: GDAL's fill rule gives a centre on a shared edge to one
    side only (tested on simplified coverages).
    """
    if not shapes:
        return np.zeros(shape, dtype=np.int32)
    pairs = ((shapely.Polygon(s["points"]), i + 1) for i, s in enumerate(shapes))
    return rasterio.features.rasterize(pairs, out_shape=shape, fill=0, dtype=np.int32)


def flatten_points(points):
    """``[[x0, y0], [x1, y1], ...]`` to the flat ``[x0, y0, x1, y1, ...]`` CVAT detectors return."""
    return list(chain.from_iterable(points))


def _check_label_map(label_map, n_classes):
    labels = as_label_raster(label_map)
    if n_classes < 1:
        raise ValueError("class_names must name at least the background class 0")
    low, high = labels.min(), labels.max()
    if low < 0 or high >= n_classes:
        raise ValueError(f"label_map values {low}..{high} are outside 0..{n_classes - 1}")
    return labels
