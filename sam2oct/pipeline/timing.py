"""Per-request stage timings: the pipeline marks its stages, a front door that records them
(:func:`recording`) logs them at debug level, one line per request."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger(__name__)
_CURRENT: ContextVar = ContextVar("sam2oct_timings", default=None)


class Timings:
    """What the stages of one request took, in order: (name, milliseconds or a note)."""

    def __init__(self):
        self.stages = []

    def __str__(self) -> str:
        return ", ".join(f"{name} {value:.1f} ms" if isinstance(value, float) else f"{name} {value}"
                         for name, value in self.stages)


class _Stage:
    def __init__(self, name):
        self.name = name


@contextmanager
def recording():
    """Inside: the stages this context runs are recorded in the Timings yielded."""
    timings = Timings()
    token = _CURRENT.set(timings)
    try:
        yield timings
    finally:
        _CURRENT.reset(token)


@contextmanager
def stage(name: str):
    """Time the block; the yielded object's ``name`` may be changed inside (e.g. to say a cache served it)."""
    mark, start = _Stage(name), time.perf_counter()
    try:
        yield mark
    finally:
        ms = (time.perf_counter() - start) * 1e3
        timings = _CURRENT.get()
        if timings is not None:
            timings.stages.append((mark.name, ms))
        log.debug("%s: %.1f ms", mark.name, ms)


def note(name: str, text: str) -> None:
    """A stage that took no work (served from a cache, say)."""
    timings = _CURRENT.get()
    if timings is not None:
        timings.stages.append((name, text))
    log.debug("%s: %s", name, text)
