"""Region outlines traced from the runs' edges, and regions with holes cut into hole-free pieces
along vertical pixel-edge lines (CVAT polygons cannot have holes; docs/polygons.md)."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import shapely
from scipy.sparse import csgraph

from sam2oct.geometry.runs import OUTSIDE, Runs, components, scatter


def trace(runs, region):
    """Exact pixel-edge polygons (holes included) of the regions of ``runs``, indexed by ``region`` id."""
    sx, sy, ex, ey, side, successor = _walks(runs, region)
    n = len(sx)
    ring_count, ring = _cycles(successor)
    doubled_area = np.bincount(ring, weights=sx * ey - ex * sy, minlength=ring_count)
    ring_region = scatter(ring, side, ring_count)
    ring_order = np.lexsort((doubled_area < 0, ring_region))  # per region, the shell (positive area) first
    heads = scatter(ring, np.arange(n), ring_count)[ring_order]
    # chain the rings into one cycle (each one's last half-edge leads to the next ring's head)
    # and read it off in one traversal
    predecessor = scatter(successor, np.arange(n), n)
    chained = successor.copy()
    chained[predecessor[heads]] = np.roll(heads, -1)
    walk = csgraph.depth_first_order(_path_graph(chained), heads[0], directed=True, return_predecessors=False)
    position = scatter(ring_order, np.arange(ring_count), ring_count)
    xy = np.column_stack([sx[walk], sy[walk]]).astype(np.float64)
    rings = shapely.linearrings(xy, indices=position[ring[walk]])
    return shapely.polygons(rings, indices=ring_region[ring_order])


def hole_spans(runs, region, holed):
    """``(region, xmin, xmax)`` of every hole of the regions ``holed``: its owner and x-range."""
    sx, sy, ex, ey, side, successor = _walks(runs, region, only=holed)
    ring_count, ring = _cycles(successor)
    hole = np.bincount(ring, weights=sx * ey - ex * sy, minlength=ring_count) < 0
    xmin = np.full(ring_count, runs.shape[1])
    xmax = np.zeros(ring_count, np.intp)
    np.minimum.at(xmin, ring, sx)
    np.maximum.at(xmax, ring, sx)
    return scatter(ring, side, ring_count)[hole], xmin[hole], xmax[hole]


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
    h_above = np.concatenate([region[upper], np.full(len(top), OUTSIDE), region[bottom]])
    h_below = np.concatenate([region[lower], region[top], np.full(len(bottom), OUTSIDE)])
    # vertical unit edges: where each run starts, and the image's right side
    last = np.flatnonzero(runs.x1 == width)
    vx = np.concatenate([runs.x0, np.full(len(last), width)])
    vy = np.concatenate([runs.row, runs.row[last]])
    v_left = np.concatenate([np.where(runs.x0 > 0, np.roll(region, 1), OUTSIDE), region[last]])
    v_right = np.concatenate([region, np.full(len(last), OUTSIDE)])
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
    inside = side != OUTSIDE if only is None else wanted[side]
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


def cut_holes(runs, region, hole_region, hole_xmin, hole_xmax):
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
    split = Runs(start, runs.key[owner], runs.shape)
    # a piece: runs of one region between the same two cuts
    strip = np.searchsorted(cut_key, region[owner] * (width + 1) + split.x0, "right") - np.searchsorted(
        cut_key, region[owner] * (width + 1), "left")
    piece_key = region[owner] + (region.max() + 1) * strip
    upper, lower = split.vertical_pairs
    return split, components(split, upper, lower, piece_key)


def exterior_points(geoms):
    """Counter-clockwise (in x/y) exterior rings as lists of ``[x, y]`` floats, closing point dropped."""
    rings = shapely.get_exterior_ring(shapely.orient_polygons(geoms, exterior_cw=False))
    xy, index = shapely.get_coordinates(rings, return_index=True)
    ends = np.cumsum(np.bincount(index, minlength=len(geoms))).tolist()
    points = xy.tolist()
    return [points[start:end - 1] for start, end in zip([0] + ends[:-1], ends)]
