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

import functools
from itertools import chain

import numpy as np
import rasterio.features
import scipy.sparse
import shapely
from scipy.sparse import csgraph

__all__ = ["label_map_to_shapes", "mask_outline", "rasterize_shapes", "flatten_points"]

# At most this many small regions (times classes present) are merged in one
# round: bounds the border table's memory on maps with thousands of classes.
_MERGE_TABLE_LIMIT = 1 << 24

_OUTSIDE = -1  # "region" beyond the image border


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
    labels = _check_label_map(label_map, len(class_names))
    if tolerance < 0 or min_area < 0:
        raise ValueError("tolerance and min_area must be >= 0")
    runs = _Runs.of_raster(labels)
    runs, region = _merge_small_regions(runs, min_area)
    classes = _region_values(runs, region)
    holed = np.flatnonzero((_hole_counts(runs, region) > 0) & (classes != 0))
    if holed.size:
        runs, region = _cut_holes(runs, region, *_hole_spans(runs, region, holed))
        classes = _region_values(runs, region)
    geoms = _trace(runs, region)
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
    runs = _Runs.of_raster(mask != 0)
    upper, lower = runs.vertical_pairs
    region = _components(runs, upper, lower, runs.key)
    foreground = np.flatnonzero(_region_values(runs, region) != 0)
    if not foreground.size:
        return []
    area = np.bincount(region, weights=runs.x1 - runs.x0)
    geoms = _trace(runs, region)
    return _exterior_points(geoms[[foreground[np.argmax(area[foreground])]]])[0]


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
    return labels


class _Runs:
    """Maximal horizontal runs of equal ``key`` in a raster, row by row.

    ``start`` is each run's first pixel as a flat index ``row * width + x``,
    ascending; a run ends where the next one starts, so runs tile the raster.
    Neighbouring runs in a row have different keys, except where
    :func:`_cut_holes` splits runs at its cuts.
    """

    def __init__(self, start, key, shape):
        self.start, self.key, self.shape = start, key, shape
        width = shape[1]
        self.row = start // width
        self.x0 = start - self.row * width
        self.x1 = np.concatenate([start[1:], [shape[0] * width]]) - self.row * width

    @classmethod
    def of_raster(cls, labels):
        flat = labels.ravel()
        change = np.empty(flat.size, bool)
        change[0] = True
        np.not_equal(flat[1:], flat[:-1], out=change[1:])
        change[:: labels.shape[1]] = True
        start = np.flatnonzero(change)
        return cls(start, flat[start].astype(np.intp), labels.shape)

    def rekeyed(self, key):
        """The same pixels with run ``i`` keyed ``key[i]``, neighbours in a row with equal keys joined.

        Returns the new runs and which old runs start one.
        """
        keep = np.empty(len(key), bool)
        keep[0] = True
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        keep |= self.x0 == 0
        return _Runs(self.start[keep], key[keep], self.shape), keep

    @functools.cached_property
    def vertical_pairs(self):
        """``(upper, lower)``: every pair of runs in consecutive rows that share a pixel edge, once.

        The x-ranges of two such runs overlap in one interval, which starts
        where one of the two starts: each pair is found from that run.
        """
        width = self.shape[1]
        lower = np.flatnonzero(self.start >= width)
        above = np.searchsorted(self.start, self.start[lower] - width, "right") - 1
        upper = np.flatnonzero(self.start < self.shape[0] * width - width)
        below = np.searchsorted(self.start, self.start[upper] + width, "right") - 1
        later = self.start[below] != self.start[upper] + width  # same start: found from below
        return np.concatenate([above, upper[later]]), np.concatenate([lower, below[later]])

    def overlap(self, upper, lower):
        """``(x0, x1)`` of the pixel edges shared by runs ``upper[i]`` and ``lower[i]``."""
        return np.maximum(self.x0[upper], self.x0[lower]), np.minimum(self.x1[upper], self.x1[lower])


def _components(runs, upper, lower, key):
    """Region id of each run: runs of equal ``key`` that share a pixel edge are one region."""
    same = key[upper] == key[lower]
    return _connected(len(runs.start), upper[same], lower[same])


def _connected(n, one, other):
    """Connected component of each of ``n`` nodes joined by the edges ``one[i] -- other[i]``."""
    # float64 data and int32 indices are what csgraph works on: no conversion copies
    graph = scipy.sparse.coo_array((np.ones(len(one)), (one.astype(np.int32), other.astype(np.int32))),
                                   shape=(n, n))
    return csgraph.connected_components(graph, directed=False)[1]


def _region_values(runs, region):
    """The key (class) of each region."""
    return _scatter(region, runs.key, region.max() + 1)


def _hole_counts(runs, region):
    """Number of holes of each region, from its runs alone.

    A region's pixels, as closed squares, are connected; with ``h`` holes
    their Euler characteristic is ``1 - h``.  Runs are intervals and contacts
    between them (a shared pixel edge, or one shared corner where two runs
    touch diagonally) intervals or points, so that characteristic is the
    number of runs minus the number of contacts: ``h = contacts - runs + 1``.
    Diagonal contacts count because a hole may touch the outline at a point.
    """
    width = runs.shape[1]
    upper, lower = runs.vertical_pairs
    contacts = np.bincount(region[upper[region[upper] == region[lower]]], minlength=region.max() + 1)
    # diagonal contacts, counted from the run on the left: a run of the row below or above starts where it ends
    for row_step in (1, -1):
        corner = runs.start + row_step * width + (runs.x1 - runs.x0)
        possible = np.flatnonzero((runs.x1 < width) & (corner >= 0) & (corner < runs.shape[0] * width))
        other = np.minimum(np.searchsorted(runs.start, corner[possible]), len(runs.start) - 1)
        touch = possible[(runs.start[other] == corner[possible]) & (region[other] == region[possible])]
        contacts += np.bincount(region[touch], minlength=len(contacts))
    return contacts - np.bincount(region, minlength=len(contacts)) + 1


def _merge_small_regions(runs, min_area):
    """Merge regions under ``min_area`` pixels into a neighbouring class, in rounds (see label_map_to_shapes).

    Returns the merged runs and their region ids.  Regions that move in one
    round touch no other moving region, so each one's longest border is
    measured against classes that stay put; a round merges at least the
    smallest region that has a neighbour, so the rounds end.  The rounds work
    on the graph of regions and their shared borders, not on the runs: a
    mover and its neighbours of the class it takes become one region.
    """
    if min_area > 1 and _SPECKS_FIRST:
        runs = _merge_specks(runs)
    upper, lower = runs.vertical_pairs
    region = _components(runs, upper, lower, runs.key)
    area = np.bincount(region, weights=runs.x1 - runs.x0)
    if not (area < min_area).any():
        return runs, region
    value = _region_values(runs, region)
    first = np.full(len(area), runs.start[-1])  # each region's first pixel, for the order of equal sizes
    np.minimum.at(first, region, runs.start)
    present = np.flatnonzero(np.bincount(value))  # merging never adds a class
    class_rank = np.zeros(present[-1] + 1, np.intp)
    class_rank[present] = np.arange(len(present))
    # borders between regions: across horizontal pixel edges (by their length), then vertical ones (one pixel)
    across = runs.key[upper] != runs.key[lower]
    upper, lower = upper[across], lower[across]
    x0, x1 = runs.overlap(upper, lower)
    right = np.flatnonzero(runs.x0 > 0)
    one = region[np.concatenate([upper, right - 1])]
    other = region[np.concatenate([lower, right])]
    length = np.concatenate([x1 - x0, np.ones(len(right), np.intp)])
    current = np.arange(len(area))  # each first region's region now
    while True:
        small = area < min_area
        # a border matters while it is between two regions, one of them small (regions only grow)
        live = (one != other) & (small[one] | small[other])
        one, other, length = one[live], other[live], length[live]
        if not live.any():
            break
        # order of the small regions: by size, equal sizes in a fixed pseudo-random order (in
        # scan order, equal-sized neighbours would block each other in long chains and need many rounds)
        n = len(area)
        rank = np.where(small, area + _fibonacci_hash(first), np.inf)
        moves = small.copy()
        moves[one[rank[other] < rank[one]]] = False
        moves[other[rank[one] < rank[other]]] = False
        touches = np.zeros(n, bool)
        touches[one] = touches[other] = True
        movers = np.flatnonzero(moves & touches)
        cap = max(1, _MERGE_TABLE_LIMIT // len(present))
        if len(movers) > cap:
            movers = movers[np.argsort(rank[movers])[:cap]]
        index = np.full(n, -1)
        index[movers] = np.arange(len(movers))
        # each mover's borders with its neighbours' classes (no two movers touch)
        forward, backward = index[one] >= 0, index[other] >= 0
        mover = np.concatenate([index[one[forward]], index[other[backward]]])
        neighbour = np.concatenate([other[forward], one[backward]])
        border = np.bincount(class_rank[value[neighbour]] * len(movers) + mover,
                             weights=np.concatenate([length[forward], length[backward]]),
                             minlength=len(movers) * len(present))
        # longest border, ties to the lowest class: a maximum over classes with the rank in the low digits
        # (a column-wise maximum is much faster than argmax along a short axis)
        score = border.astype(np.int64).reshape(len(present), len(movers)) * len(present)
        score += np.arange(len(present) - 1, -1, -1)[:, None]
        target = present[len(present) - 1 - score.max(axis=0) % len(present)]
        # a mover becomes one region with its neighbours of the class it takes
        joins = value[neighbour] == target[mover]
        merged = _connected(n, movers[mover[joins]], neighbour[joins])
        n_regions = merged.max() + 1
        value[movers] = target
        value = _scatter(merged, value, n_regions)
        area = np.bincount(merged, weights=area, minlength=n_regions)
        merged_first = np.full(n_regions, runs.start[-1])
        np.minimum.at(merged_first, merged, first)
        first = merged_first
        current, one, other = merged[current], merged[one], merged[other]
    region = current[region]
    runs, starts = runs.rekeyed(value[region])
    return runs, region[starts]


def _merge_specks(runs):
    """The first round of the merge for regions of one pixel, on the runs (before regions are found).

    Noise is mostly single pixels; moving them here leaves far fewer runs
    and regions for the rounds.  A pixel region moves unless a neighbouring
    pixel region comes first in the order of equal sizes, and takes the
    class most of its 4 neighbours have (ties: the lowest): exactly what the
    first round does to it.  Larger regions that would move in that round
    touch no pixel region, so they are not affected by going later.
    """
    height, width = runs.shape
    key = runs.key
    single = np.flatnonzero(runs.x1 - runs.x0 == 1)
    start = runs.start[single]
    # neighbours: left, right, above, below (-1 beyond the image)
    above = np.searchsorted(runs.start, start - width, "right") - 1
    below = np.searchsorted(runs.start, start + width, "right") - 1
    near = np.stack([np.where(runs.x0[single] > 0, single - 1, -1),
                     np.where(runs.x1[single] < width, single + 1, -1),
                     np.where(start >= width, above, -1),
                     np.where(start < (height - 1) * width, below, -1)])
    near_key = np.where(near >= 0, key[near], -1)
    alone = (near_key != key[single]).all(axis=0)
    if alone.sum() < len(key) // 20:  # few: not worth a second set of runs
        return runs
    specks, near, near_key = single[alone], near[:, alone], near_key[:, alone]
    is_speck = np.zeros(len(key), bool)
    is_speck[specks] = True
    order = _fibonacci_hash(runs.start[near])
    earlier = (near >= 0) & is_speck[near] & (order < _fibonacci_hash(runs.start[specks]))
    movers = ~earlier.any(axis=0) & (near >= 0).any(axis=0)  # (a 1x1 image has no neighbour)
    near_key = near_key[:, movers]
    # most common neighbour class, ties to the lowest: the maximum of count * (top + 1) + (top - class)
    top = key.max() + 1
    count = sum((near_key == near_key[i]) for i in range(4))
    score = np.where(near_key >= 0, count * (top + 1) + (top - near_key), -1).max(axis=0)
    key = key.copy()
    key[specks[movers]] = top - score % (top + 1)
    return runs.rekeyed(key)[0]


_SPECKS_FIRST = True  # tests switch the shortcut off to check it changes nothing


def _fibonacci_hash(index):
    """A fixed pseudo-random value in [0, 1) for each non-negative integer."""
    return (index * 0x9E3779B1 % (1 << 32)) / (1 << 32)


def _scatter(index, values, size):
    """``out[index[i]] = values[i]``, for values that agree wherever indices repeat."""
    out = np.empty(size, values.dtype)
    out[index] = values
    return out


def _trace(runs, region):
    """Exact pixel-edge polygons (holes included) of the regions of ``runs``, indexed by ``region`` id."""
    sx, sy, ex, ey, side, successor = _walks(runs, region)
    n = len(sx)
    ring_count, ring = _cycles(successor)
    doubled_area = np.bincount(ring, weights=sx * ey - ex * sy, minlength=ring_count)
    ring_region = _scatter(ring, side, ring_count)
    ring_order = np.lexsort((doubled_area < 0, ring_region))  # per region, the shell (positive area) first
    heads = _scatter(ring, np.arange(n), ring_count)[ring_order]
    # chain the rings into one cycle (each one's last half-edge leads to the next ring's head)
    # and read it off in one traversal
    predecessor = _scatter(successor, np.arange(n), n)
    chained = successor.copy()
    chained[predecessor[heads]] = np.roll(heads, -1)
    walk = csgraph.depth_first_order(_path_graph(chained), heads[0], directed=True, return_predecessors=False)
    position = _scatter(ring_order, np.arange(ring_count), ring_count)
    xy = np.column_stack([sx[walk], sy[walk]]).astype(np.float64)
    rings = shapely.linearrings(xy, indices=position[ring[walk]])
    return shapely.polygons(rings, indices=ring_region[ring_order])


def _hole_spans(runs, region, holed):
    """``(region, xmin, xmax)`` of every hole of the regions ``holed``: its owner and x-range."""
    sx, sy, ex, ey, side, successor = _walks(runs, region, only=holed)
    ring_count, ring = _cycles(successor)
    hole = np.bincount(ring, weights=sx * ey - ex * sy, minlength=ring_count) < 0
    xmin = np.full(ring_count, runs.shape[1])
    xmax = np.zeros(ring_count, np.intp)
    np.minimum.at(xmin, ring, sx)
    np.maximum.at(xmax, ring, sx)
    return _scatter(ring, side, ring_count)[hole], xmin[hole], xmax[hole]


def _cycles(successor):
    """Number of cycles of the permutation ``successor`` and the cycle of each element."""
    return csgraph.connected_components(_path_graph(successor), directed=True, connection="strong")


def _walks(runs, region, only=None):
    """The boundary of every region of ``runs`` as half-edges and how they follow each other.

    Every boundary is cut into straight segments at each corner where a
    boundary turns or three or more regions meet, and each segment is walked
    once per side, with the region on that side on the left (in x/y).  A walk
    continues at the segment's end with the segment of the same region that
    turns right, else goes straight, else turns left: a region that touches
    itself diagonally is then one ring touching another at a point, as valid
    polygons need.  These vertices are shared by the regions on both sides,
    which ``coverage_simplify`` needs.  ``only`` (region ids) limits the
    walks to those regions.

    Returns ``(sx, sy, ex, ey, side, successor)``: start and end corner, the
    region on the left, and the next half-edge of each half-edge.
    """
    height, width = runs.shape
    upper, lower = runs.vertical_pairs
    across = region[upper] != region[lower]
    upper, lower = upper[across], lower[across]
    # horizontal segments: between runs of consecutive rows, then the image's top and bottom
    top = np.arange(np.searchsorted(runs.start, width))
    bottom = np.arange(np.searchsorted(runs.start, (height - 1) * width), len(runs.start))
    x0, x1 = runs.overlap(upper, lower)
    hy = np.concatenate([runs.row[lower], np.zeros(len(top), np.intp), np.full(len(bottom), height)])
    hx0 = np.concatenate([x0, runs.x0[top], runs.x0[bottom]])
    hx1 = np.concatenate([x1, runs.x1[top], runs.x1[bottom]])
    h_above = np.concatenate([region[upper], np.full(len(top), _OUTSIDE), region[bottom]])
    h_below = np.concatenate([region[lower], region[top], np.full(len(bottom), _OUTSIDE)])
    # vertical unit edges: where each run starts, and the image's right side
    last = np.flatnonzero(runs.x1 == width)
    vx = np.concatenate([runs.x0, np.full(len(last), width)])
    vy = np.concatenate([runs.row, runs.row[last]])
    v_left = np.concatenate([np.where(runs.x0 > 0, np.roll(region, 1), _OUTSIDE), region[last]])
    v_right = np.concatenate([region, np.full(len(last), _OUTSIDE)])
    if only is not None:  # keep the edges of those regions (index -1, outside, is never wanted)
        wanted = np.zeros(region.max() + 2, bool)
        wanted[only] = True
        keep = wanted[h_above] | wanted[h_below]
        hy, hx0, hx1, h_above, h_below = hy[keep], hx0[keep], hx1[keep], h_above[keep], h_below[keep]
        keep = wanted[v_left] | wanted[v_right]
        vx, vy, v_left, v_right = vx[keep], vy[keep], v_left[keep], v_right[keep]
    # join unit edges above each other into segments, except at corners a horizontal segment ends at
    corners = np.zeros((height + 1) * (width + 1), bool)
    corners[hy * (width + 1) + hx0] = True
    corners[hy * (width + 1) + hx1] = True
    order = np.argsort(vx * height + vy)
    vx, vy, v_left, v_right = vx[order], vy[order], v_left[order], v_right[order]
    below = (vx[1:] == vx[:-1]) & (vy[1:] == vy[:-1] + 1)
    joined = np.concatenate([[False], below & (v_left[1:] == v_left[:-1]) & (v_right[1:] == v_right[:-1])])
    joined[joined] = ~corners[vy[joined] * (width + 1) + vx[joined]]
    first = np.flatnonzero(~joined)
    vx, vy0, v_left, v_right = vx[first], vy[first], v_left[first], v_right[first]
    vy1 = np.concatenate([vy[first[1:] - 1], vy[-1:]]) + 1
    # half-edges: direction 0 east, 1 south, 2 west, 3 north; the region lies on side d + 1
    sx = np.concatenate([hx0, hx1, vx, vx])
    sy = np.concatenate([hy, hy, vy0, vy1])
    ex = np.concatenate([hx1, hx0, vx, vx])
    ey = np.concatenate([hy, hy, vy1, vy0])
    side = np.concatenate([h_below, h_above, v_left, v_right])
    direction = np.repeat([0, 2, 1, 3], [len(hx0), len(hx0), len(vx), len(vx)])
    inside = side != _OUTSIDE if only is None else wanted[side]
    sx, sy, ex, ey, side, direction = sx[inside], sy[inside], ex[inside], ey[inside], side[inside], direction[inside]
    n = len(sx)
    # at each corner, the walks of one region come in and go out in pairs;
    # sorting arrivals by their right turn and departures by direction pairs
    # each arrival with the departure that turns right, else straight, else
    # left (two pairs only where a region touches itself diagonally)
    n_regions = side.max() + 1
    arrive = ((ey * (width + 1) + ex) * n_regions + side) * 4 + (direction + 3) % 4
    depart = ((sy * (width + 1) + sx) * n_regions + side) * 4 + direction
    successor = np.empty(n, np.intp)
    successor[np.argsort(arrive, kind="stable")] = np.argsort(depart, kind="stable")
    return sx, sy, ex, ey, side, successor


def _path_graph(successor):
    """Sparse graph with one edge ``i -> successor[i]`` per node."""
    n = len(successor)
    return scipy.sparse.csr_array((np.ones(n), successor.astype(np.int32), np.arange(n + 1, dtype=np.int32)),
                                  shape=(n, n))


def _cut_holes(runs, region, hole_region, hole_xmin, hole_xmax):
    """Split the regions that own holes into hole-free pieces; returns the split runs and their piece ids.

    ``hole_region``, ``hole_xmin`` and ``hole_xmax`` give each hole's owner
    and x-range (pixel edges).

    Cuts are vertical lines at integer x, so the pieces stay on pixel edges.
    A cut at any integer x within a hole's x-range opens that hole: every part
    of the hole on either side then touches the cut along a pixel edge, i.e.
    lies outside the piece.  The fewest cuts that reach every hole are chosen
    greedily (interval stabbing), each in the middle of the holes it serves.
    """
    width = runs.shape[1]
    holes = np.lexsort((hole_xmax, hole_region))
    cut_region, cut_x = [], []
    hole_region = hole_region[holes].tolist()
    lefts, rights = hole_xmin[holes].tolist(), hole_xmax[holes].tolist()
    i = 0
    while i < len(holes):  # greedy stabbing per region, holes sorted by right end
        lo, hi, j = lefts[i], rights[i], i + 1
        while j < len(holes) and hole_region[j] == hole_region[i] and lefts[j] <= hi:
            lo = max(lo, lefts[j])
            j += 1
        cut_region.append(hole_region[i])
        cut_x.append((lo + hi) // 2)
        i = j
    cut_key = np.array(cut_region, np.intp) * (width + 1) + np.array(cut_x, np.intp)
    # split every run of a holed region at the cuts strictly inside it
    run_key = region * (width + 1)
    after_start = np.searchsorted(cut_key, run_key + runs.x0, "right")
    before_end = np.searchsorted(cut_key, run_key + runs.x1, "left")
    splits = np.maximum(before_end - after_start, 0)
    split_run = np.repeat(np.arange(len(runs.start)), splits)
    split_cut = np.repeat(after_start - np.cumsum(splits) + splits, splits) + np.arange(splits.sum())
    cut_at = cut_key[split_cut] - run_key[split_run]
    start = np.concatenate([runs.start, runs.start[split_run] - runs.x0[split_run] + cut_at])
    owner = np.concatenate([np.arange(len(runs.start)), split_run])
    order = np.argsort(start, kind="stable")
    start, owner = start[order], owner[order]
    split = _Runs(start, runs.key[owner], runs.shape)
    # a piece: runs of one region between the same two cuts
    strip = np.searchsorted(cut_key, region[owner] * (width + 1) + split.x0, "right") - np.searchsorted(
        cut_key, region[owner] * (width + 1), "left")
    piece_key = region[owner] + (region.max() + 1) * strip
    upper, lower = split.vertical_pairs
    return split, _components(split, upper, lower, piece_key)


def _exterior_points(geoms):
    """Counter-clockwise (in x/y) exterior rings as lists of ``[x, y]`` floats, closing point dropped."""
    rings = shapely.get_exterior_ring(shapely.orient_polygons(geoms, exterior_cw=False))
    xy, index = shapely.get_coordinates(rings, return_index=True)
    ends = np.cumsum(np.bincount(index, minlength=len(geoms))).tolist()
    points = xy.tolist()
    return [points[start:end - 1] for start, end in zip([0] + ends[:-1], ends)]
