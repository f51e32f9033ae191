"""A label map as horizontal runs of equal pixels, and its 4-connected regions.

Regions are found on the graph of runs (scipy), never pixel by pixel in Python: the base of
merging small regions (merge.py) and tracing outlines (trace.py).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse
from scipy.sparse import csgraph

OUTSIDE = -1  # "region" beyond the image border


class Runs:
    """Maximal horizontal runs of equal ``key`` in a raster, row by row.

    ``start`` is each run's first pixel as a flat index ``row * width + x``,
    ascending; a run ends where the next one starts, so runs tile the raster.
    Neighbouring runs in a row have different keys, except where
    :func:`cut_holes` splits runs at its cuts.
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
        return Runs(self.start[keep], key[keep], self.shape), keep

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


def components(runs, upper, lower, key):
    """Region id of each run: runs of equal ``key`` that share a pixel edge are one region."""
    same = key[upper] == key[lower]
    return connected(len(runs.start), upper[same], lower[same])


def connected(n, one, other):
    """Connected component of each of ``n`` nodes joined by the edges ``one[i] -- other[i]``."""
    # float64 data and int32 indices are what csgraph works on: no conversion copies
    graph = scipy.sparse.coo_array((np.ones(len(one)), (one.astype(np.int32), other.astype(np.int32))),
                                   shape=(n, n))
    return csgraph.connected_components(graph, directed=False)[1]


def region_values(runs, region):
    """The key (class) of each region."""
    return scatter(region, runs.key, region.max() + 1)


def hole_counts(runs, region):
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


def scatter(index, values, size):
    """``out[index[i]] = values[i]``, for values that agree wherever indices repeat."""
    out = np.empty(size, values.dtype)
    out[index] = values
    return out
