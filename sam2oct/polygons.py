"""Label maps and binary masks to CVAT polygons on pixel edges.

Pixel ``(x, y)`` covers the square ``[x, x+1] x [y, y+1]`` (the way CVAT draws
mask pixels), so polygon coordinates lie in ``[0, W] x [0, H]``.  The polygons of
one label map form a *coverage*: neighbouring layers share the same boundary
vertices, with no gap and no overlap, before and after simplification.

CVAT polygons cannot have holes.  A region that encloses another region is cut
into hole-free pieces along vertical pixel-edge lines through its holes (see
``docs/polygons.md``); the pieces still tile the region exactly.
"""

from __future__ import annotations

import warnings
from itertools import chain

import numpy as np
import rasterio.features
from rasterio.errors import NotGeoreferencedWarning
import shapely

# Label maps are pixel grids, not maps: rasterio's "no georeference" warning is noise here.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)

__all__ = ["label_map_to_shapes", "mask_outline", "rasterize_shapes", "flatten_points"]

# The exact merge loop costs ~0.1-0.2 ms per small region; noisier maps are
# first merged in vectorised rounds on the raster (keep >= 1: a lone region
# has no neighbour to join, so a round would change nothing).
_EXACT_MERGE_LIMIT = 500


def label_map_to_shapes(label_map, class_names, *, tolerance=1.0, min_area=25):
    """Trace a label map into CVAT polygon shapes that tile the image exactly.

    ``label_map`` is a 2-D integer array of class indices; ``class_names[k]``
    names class ``k`` and class 0 is background, never returned.  Returns one
    ``{"label", "type": "polygon", "points": [[x, y], ...]}`` per 4-connected
    region of each other class, sorted by class index, then top to bottom.

    - Regions of fewer than ``min_area`` pixels (background included) first
      join the neighbouring class they share the longest border with,
      smallest first, so no gap is left where they were (maps with hundreds
      of them, i.e. noise, go through vectorised rounds of the same rule first).
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
    labels = _check_label_map(label_map, len(class_names))
    if tolerance < 0 or min_area < 0:
        raise ValueError("tolerance and min_area must be >= 0")
    geoms, classes = _regions(labels)
    while np.count_nonzero(shapely.area(geoms) < min_area) > _EXACT_MERGE_LIMIT:
        labels = _merge_round(labels, geoms, min_area)
        geoms, classes = _regions(labels)
    geoms, classes = _absorb_small_regions(geoms, classes, min_area)
    geoms, classes = _cut_holes(geoms, classes)
    geoms = _node(geoms, labels.shape)
    if tolerance > 0:
        geoms = shapely.coverage_simplify(geoms, tolerance, simplify_boundary=False)
    keep = classes != 0
    geoms, classes = geoms[keep], classes[keep]
    bounds = shapely.bounds(geoms)
    order = np.lexsort((bounds[:, 0], bounds[:, 1], classes))
    return [
        {"label": class_names[classes[i]], "type": "polygon", "points": points}
        for i, points in zip(order, _exterior_points(geoms[order]))
    ]


def mask_outline(mask):
    """Outer boundary ``[[x, y], ...]`` of the largest 4-connected region of a 2-D mask.

    Non-zero pixels are foreground.  Holes are ignored (an outline, not a
    shape), the ring is exact on pixel edges and oriented as in
    :func:`label_map_to_shapes`.  An empty mask gives ``[]``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    geoms, classes = _regions((mask != 0).astype(np.uint8))
    geoms = geoms[classes == 1]
    if not geoms.size:
        return []
    return _exterior_points(geoms[[np.argmax(shapely.area(geoms))]])[0]


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
    labels = np.asarray(label_map)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"label_map must be a non-empty 2-D array, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"label_map must hold integer class indices, got {labels.dtype}")
    if n_classes < 1:
        raise ValueError("class_names must name at least the background class 0")
    low, high = labels.min(), labels.max()
    if low < 0 or high >= n_classes:
        raise ValueError(f"label_map values {low}..{high} are outside 0..{n_classes - 1}")
    # GDAL polygonizes only a few integer types
    return labels.astype(np.uint8 if n_classes <= 256 else np.int32, copy=False)


def _regions(labels):
    """Exact pixel-edge polygons (holes included) of all 4-connected regions, and their classes."""
    found = list(rasterio.features.shapes(labels, connectivity=4))
    rings = [ring for geom, _ in found for ring in geom["coordinates"]]
    sizes = np.fromiter(map(len, rings), np.intp, len(rings))
    # one flat read of all coordinates is several times faster than a geometry per region
    xy = np.fromiter(chain.from_iterable(chain.from_iterable(rings)), np.float64, 2 * sizes.sum())
    ring_of = np.repeat(np.arange(len(rings)), sizes)
    polygon_of = np.repeat(np.arange(len(found)), [len(geom["coordinates"]) for geom, _ in found])
    geoms = shapely.polygons(shapely.linearrings(xy.reshape(-1, 2), indices=ring_of), indices=polygon_of)
    return geoms, np.array([value for _, value in found], dtype=np.intp)


def _absorb_small_regions(geoms, classes, min_area):
    """Merge every region under ``min_area`` pixels into the neighbouring class with the longest shared border.

    Works on the geometry (exact at integer coordinates) rather than relabelling
    the raster, which would cost a second polygonization.  Regions are taken
    smallest first; one that grew past ``min_area`` by an earlier merge stays.
    """
    area = shapely.area(geoms)
    if not (area < min_area).any():
        return geoms, classes
    edges = shapely.boundary(geoms)
    tree = shapely.STRtree(geoms)
    geoms, classes, area = geoms.copy(), classes.copy(), area.copy()  # indexed by group id
    group = np.arange(len(geoms))  # group id of each original region
    members = {}  # original regions of each group that has more than one
    order = np.argsort(area, kind="stable")
    for i in order[: np.count_nonzero(area < min_area)]:
        g = group[i]
        if area[g] >= min_area:
            continue
        near = tree.query(geoms[g])
        near = near[group[near] != g]
        # clip first (intersecting a whole layer's outline is slow); the margin
        # keeps edges that lie on the group's bounding box
        box = shapely.bounds(geoms[g]) + [-1, -1, 1, 1]
        shared = shapely.length(shapely.intersection(
            shapely.boundary(geoms[g]), shapely.clip_by_rect(edges[near], *box)))
        if not shared.any():  # the only region in the image
            continue
        border = np.bincount(classes[group[near]], weights=shared)
        target = border.argmax()
        merged = np.unique(np.r_[g, group[near][(classes[group[near]] == target) & (shared > 0)]])
        # the group with most members keeps its id, so relabelling stays cheap
        sizes = [len(members.get(k, (k,))) for k in merged]
        keep = merged[np.argmax(sizes)]
        geoms[keep] = _union(geoms[g], geoms[merged[merged != g]])
        classes[keep], area[keep] = target, area[merged].sum()
        union = members.setdefault(keep, [keep])
        for k in merged[merged != keep]:
            moved = members.pop(k, [k])
            group[moved] = keep
            union += moved
    roots = np.flatnonzero(group == np.arange(len(group)))
    return geoms[roots], classes[roots]


def _merge_round(labels, geoms, min_area):
    """One round of :func:`_absorb_small_regions`' rule for many regions at once, on the raster.

    Every region under ``min_area`` pixels with no smaller small neighbour
    takes the class it shares the longest border with.
    Such regions cannot affect each other's choice, so they can go together.
    Each round merges at least the smallest region (given two or more
    regions), so repeating it ends.  On noise the result can differ from the
    one-by-one loop, which keeps ordering by the original sizes.
    """
    area = shapely.area(geoms)
    small = np.flatnonzero(area < min_area)
    ids = _region_ids(geoms[small], labels.shape)
    # ties broken at random (fixed seed): by index, equal-sized neighbours
    # would block each other in long chains and need many rounds
    tie = np.random.default_rng(0).permutation(len(small))
    rank = np.r_[np.inf, np.argsort(np.lexsort((tie, area[small])))]
    n_classes = int(labels.max()) + 1
    border = np.zeros((len(small) + 1) * n_classes)
    blocked = np.zeros(len(small) + 1, dtype=bool)
    for here, there in [(np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1], np.s_[1:])]:
        for p, q in ((here, there), (there, here)):
            edge = (ids[p] > 0) & (labels[p] != labels[q])
            mine, theirs = ids[p][edge], ids[q][edge]
            border += np.bincount(mine * n_classes + labels[q][edge], minlength=border.size)
            blocked[mine[rank[theirs] < rank[mine]]] = True
    target = border.reshape(-1, n_classes).argmax(axis=1)
    blocked[0] = True
    return np.where(blocked[ids], labels, target[ids]).astype(labels.dtype)


def _region_ids(geoms, shape):
    """Raster holding ``k + 1`` on the pixels of ``geoms[k]`` and 0 elsewhere.

    Sums each ring's vertical edges into the pixel column right of them with a
    sign by direction, then along the rows: a winding-number fill that needs
    no per-polygon Python work (rasterize converts every shape).
    """
    rings, owner = shapely.get_rings(shapely.orient_polygons(geoms), return_index=True)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    xy = np.rint(xy).astype(np.int64)
    vertical = (ring_of[:-1] == ring_of[1:]) & (xy[:-1, 0] == xy[1:, 0])
    x, top, bottom = xy[:-1][vertical, 0], xy[:-1][vertical, 1], xy[1:][vertical, 1]
    lengths = np.abs(bottom - top)
    rows = np.repeat(np.minimum(top, bottom), lengths) + _steps(lengths)
    # counter-clockwise shells run up (-y) on their left side, holes the other way
    value = np.repeat(np.sign(top - bottom) * (owner[ring_of[:-1][vertical]] + 1), lengths)
    width = shape[1] + 1
    delta = np.bincount(rows * width + np.repeat(x, lengths), weights=value, minlength=shape[0] * width)
    return np.rint(np.cumsum(delta.reshape(shape[0], width), axis=1)[:, :-1]).astype(np.int64)


def _union(piece, others):
    """Union of touching regions; an island in one region just closes its hole (a full overlay is slow)."""
    if len(others) == 1 and shapely.get_num_interior_rings(others[0]):
        outer = others[0]
        holes = np.array(outer.interiors)
        fills = shapely.equals(shapely.polygons(holes), piece)
        if fills.any():
            return shapely.polygons(outer.exterior, holes[~fills])
    return shapely.union_all(np.r_[piece, others])


def _cut_holes(geoms, classes):
    """Split each non-background polygon with holes into hole-free pieces.

    Cuts are vertical lines at integer x, so the pieces stay on pixel edges.
    A cut at any integer x within a hole's x-range opens that hole: every part
    of the hole on either side then touches the cut along a pixel edge, i.e.
    lies outside the piece.  The fewest cuts that reach every hole are chosen
    greedily (interval stabbing), each in the middle of the holes it serves.
    """
    holed = (shapely.get_num_interior_rings(geoms) > 0) & (classes != 0)
    if not holed.any():
        return geoms, classes
    pieces, piece_classes = [], []
    for geom, cls in zip(geoms[holed], classes[holed]):
        xmin, ymin, xmax, ymax = geom.bounds
        cuts = [xmin]
        spans = sorted((h.bounds[2], h.bounds[0]) for h in geom.interiors)
        hi, lo = spans[0]
        for right, left in spans[1:] + [(np.inf, np.inf)]:
            if left > hi:  # this hole is not reached by a cut in [lo, hi]
                cuts.append((lo + hi) // 2)
                hi, lo = right, left
            lo = max(lo, left)
        cuts.append(xmax)
        # clip_by_rect is fast but can return a ring pinched at a vertex (invalid);
        # the exact overlay redoes those
        left, right = np.array(cuts[:-1]), np.array(cuts[1:])
        parts = np.array([shapely.clip_by_rect(geom, x0, ymin, x1, ymax) for x0, x1 in zip(left, right)])
        bad = ~shapely.is_valid(parts)
        parts[bad] = shapely.intersection(geom, shapely.box(left[bad], ymin, right[bad], ymax))
        parts = shapely.get_parts(parts)
        parts = parts[(shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)]
        pieces.append(parts)
        piece_classes.append(np.full(len(parts), cls))
    return (np.concatenate([geoms[~holed], *pieces]),
            np.concatenate([classes[~holed], *piece_classes]))


def _node(geoms, shape):
    """Give every polygon a vertex wherever another polygon has one on its boundary.

    GDAL leaves out collinear vertices, so where three regions meet only two
    of them may have a vertex; ``coverage_simplify`` needs shared edges to have
    identical vertices.  All edges are axis-aligned between integer points, so
    each is walked in unit steps and the steps that are some polygon's vertex are kept.
    """
    width = shape[1] + 1
    rings, polygon_of = shapely.get_rings(geoms, return_index=True)
    xy, ring_of = shapely.get_coordinates(rings, return_index=True)
    xy = np.rint(xy).astype(np.int64)
    is_vertex = np.zeros((shape[0] + 1) * width, dtype=bool)
    is_vertex[xy[:, 1] * width + xy[:, 0]] = True
    inner = ring_of[:-1] == ring_of[1:]  # edge i runs from vertex i to i+1 of the same ring
    start, step = xy[:-1][inner], np.sign(xy[1:] - xy[:-1])[inner]
    lengths = np.abs(xy[1:] - xy[:-1])[inner].sum(axis=1)
    walk = np.repeat(start, lengths, axis=0) + np.repeat(step, lengths, axis=0) * _steps(lengths)[:, None]
    keep = is_vertex[walk[:, 1] * width + walk[:, 0]]
    # the closing vertex is not walked; linearrings closes each ring again
    walk_ring = np.repeat(ring_of[:-1][inner], lengths)
    rings = shapely.linearrings(walk[keep].astype(np.float64), indices=walk_ring[keep])
    return shapely.polygons(rings, indices=polygon_of)


def _steps(lengths):
    """``0, 1, ..., n-1`` for each ``n`` in ``lengths``, concatenated."""
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _exterior_points(geoms):
    """Counter-clockwise (in x/y) exterior rings as lists of ``[x, y]`` floats, closing point dropped."""
    rings = shapely.get_exterior_ring(shapely.orient_polygons(geoms, exterior_cw=False))
    xy, index = shapely.get_coordinates(rings, return_index=True)
    ends = np.cumsum(np.bincount(index, minlength=len(geoms)))
    return [xy[end - size:end - 1].tolist() for end, size in zip(ends, np.diff(ends, prepend=0))]
