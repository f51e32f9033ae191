"""Per-frame caches of the pipeline."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class FrameShapes:
    """A frame's traced shapes, cached per frame, and what front doors derive from them."""

    shapes: list
    memo: dict = field(default_factory=dict)


class SmallLRU:
    """A few recent frames' traced shapes: a click on a frame seen before only selects among them."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self):
        with self._lock:
            self._items.clear()
