"""The pipeline's one cache: a frame's features and everything derived from them, bounded in bytes.

An entry is an item with ``nbytes`` (an ``EncodedImage``: the features, the memoised unprompted
prediction and the per-frame results the pipeline keeps with them, see ``FrameResults``; or a
grey frame kept by its file's digest). Evicting a frame's entry drops all of it at once.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from sam2oct.errors import ConfigError


class FrameCache:
    """A thread-safe LRU of items by key, bounded by the bytes they hold (``item.nbytes``).

    An item larger than the bound on its own is not kept; 0 bytes keeps nothing.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ConfigError(f"cache size must be 0 (off) or more, got {max_bytes} bytes", option="cache_mb")
        self.max_bytes = max_bytes
        self._items: OrderedDict = OrderedDict()  # key -> (item, bytes counted)
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key, *, count: bool = True):
        """The item kept under ``key`` (now the most recent), or None. ``count``: whether the
        lookup counts in ``hits`` and ``misses`` (the frames' features: what an encode costs)."""
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += count
                return None
            self.hits += count
            self._items.move_to_end(key)
            return entry[0]

    def put(self, key, item) -> None:
        with self._lock:
            self._drop(key)
            self._store(key, item)

    def recount(self, key, item) -> None:
        """The item grew (or shrank) since it was put: count it again, evict what no longer fits."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry[0] is item:
                self._drop(key)
                self._store(key, item)

    def _drop(self, key):
        entry = self._items.pop(key, None)
        if entry is not None:
            self.nbytes -= entry[1]

    def _store(self, key, item):
        size = item.nbytes
        if size > self.max_bytes:
            return
        self._items[key] = (item, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self.nbytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self):
        return len(self._items)

    @property
    def frames(self) -> int:
        """Entries that are encoded frames (the others: grey frames kept by their file's digest)."""
        with self._lock:
            return sum(1 for item, _ in self._items.values() if hasattr(item, "features"))


@dataclass
class FrameResults:
    """A frame's results, kept with its features (``EncodedImage.derived``) in the one cache.

    ``label_map``: the cleaned label map (read-only), the model's answer; ``shapes``: its
    polygons, never handed out (callers get copies); ``owner``: which pixels each shape holds
    (``i + 1``, 0 background); ``memo``: what a front door derives from these very shapes (their
    JSON texts, say), dropped with them.
    """

    label_map: np.ndarray
    shapes: tuple | None = None
    owner: np.ndarray | None = None
    memo: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        total = self.label_map.nbytes + (0 if self.owner is None else self.owner.nbytes)
        if self.shapes:
            # a shape's dict and strings, and per point a 2-list of floats (about 120 bytes)
            total += sum(300 + 120 * len(s["points"]) for s in self.shapes)
        for texts in self.memo.values():
            total += sum(sys.getsizeof(t) for t in (texts.values() if isinstance(texts, dict) else texts))
        return total


class ShapeCopy(dict):
    """A copy of a cached shape (a plain dict to its user) that knows the cached shape it was
    made from (``source``), so what is memoised for that shape can be found (see ModelHandler)."""

    __slots__ = ("source",)


def copy_shapes(shapes) -> list:
    """New shape dicts with new point lists: what a caller may change without touching the cache."""
    out = []
    for s in shapes:
        c = ShapeCopy(s)
        c["points"] = [list(p) for p in s["points"]]
        c.source = s
        out.append(c)
    return out
