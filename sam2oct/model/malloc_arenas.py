"""A cap on glibc's malloc arenas for long-running workers that use OpenVINO.

OpenVINO runs inference on its own worker threads, and glibc gives each thread that allocates
its own malloc arena (up to 8 per core), each keeping the memory freed into it. A Nuclio worker
answering a few hundred requests grew by about 150 MiB that way and then stayed there
(tests/test_soak.py); with two arenas the growth stays under the soak's 64 MiB bound.
``MALLOC_ARENA_MAX`` in the environment does the same when it is set before the process
starts, and then wins: this only applies where it is not set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
ARENAS = 2
_applied = False


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Limit glibc malloc to ``arenas`` arenas for the rest of the process (once; before the
    worker threads first allocate). False where it does not apply: not glibc, or
    MALLOC_ARENA_MAX already set."""
    global _applied
    if _applied:
        return True
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError) as exc:  # a libc without mallopt: nothing to cap
        log.debug("mallopt unavailable: %s", exc)
        return False
    _applied = ok
    return ok
