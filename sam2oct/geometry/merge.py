"""Regions under ``min_area`` pixels join the neighbouring class they share the longest border
with, in rounds, on the graph of regions (rule: ``label_map_to_shapes``, docs/polygons.md)."""

from __future__ import annotations

import numpy as np

from sam2oct.geometry.runs import Runs, components, connected, region_values, scatter

# At most this many small regions (times classes present) are merged in one
# round: bounds the border table's memory on maps with thousands of classes.
MERGE_TABLE_LIMIT = 1 << 24


def clean_label_map(label_map, min_area):
    """The label map after the min-area merge: the map every front door answers with.

    Regions under ``min_area`` pixels take the class that :func:`merge_small_regions` gives them
    (the rule of ``label_map_to_shapes``), painted back to a raster of the input's shape and
    dtype. ``min_area`` 0 or 1 changes nothing (a copy is still returned).
    """
    labels = as_label_raster(label_map)
    if min_area < 0:
        raise ValueError("min_area must be >= 0")
    if min_area <= 1:  # every region has at least one pixel
        return labels.copy()
    runs, _ = merge_small_regions(Runs.of_raster(labels), min_area)
    return paint(runs, labels.dtype)


def as_label_raster(label_map) -> np.ndarray:
    """``label_map`` as an array, refused unless it is a non-empty 2-D array of integers."""
    labels = np.asarray(label_map)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"label_map must be a non-empty 2-D array, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"label_map must hold integer class indices, got {labels.dtype}")
    return labels


def paint(runs, dtype):
    """The raster of ``runs``: each run's pixels set to its key."""
    lengths = np.diff(np.append(runs.start, runs.shape[0] * runs.shape[1]))
    return np.repeat(runs.key.astype(dtype), lengths).reshape(runs.shape)


def merge_small_regions(runs, min_area):
    """Merge regions under ``min_area`` pixels into a neighbouring class, in rounds (see label_map_to_shapes).

    Returns the merged runs and their region ids.  Regions that move in one
    round touch no other moving region, so each one's longest border is
    measured against classes that stay put; a round merges at least the
    smallest region that has a neighbour, so the rounds end.  The rounds work
    on the graph of regions and their shared borders, not on the runs: a
    mover and its neighbours of the class it takes become one region.
    """
    if min_area > 1 and SPECKS_FIRST:
        runs = _merge_specks(runs)
    upper, lower = runs.vertical_pairs
    region = components(runs, upper, lower, runs.key)
    area = np.bincount(region, weights=runs.x1 - runs.x0)
    if not (area < min_area).any():
        return runs, region
    value = region_values(runs, region)
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
        cap = max(1, MERGE_TABLE_LIMIT // len(present))
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
        merged = connected(n, movers[mover[joins]], neighbour[joins])
        n_regions = merged.max() + 1
        value[movers] = target
        value = scatter(merged, value, n_regions)
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


SPECKS_FIRST = True  # tests switch the shortcut off to check it changes nothing


def _fibonacci_hash(index):
    """A fixed pseudo-random value in [0, 1) for each non-negative integer."""
    return (index * 0x9E3779B1 % (1 << 32)) / (1 << 32)
