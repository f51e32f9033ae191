"""Logging: every module logs to its own logger (``logging.getLogger(__name__)``), all under
``sam2oct``; nothing is printed or handed back in lists.

A warning about a setting names it the way the front door in use does (an environment variable,
a flag, a ``-p`` parameter, a keyword argument): the front door sets its names around its calls
(:func:`option_names`) and the library warns with :func:`warn_option`. A front door that has its
own output (the command line's stderr, Nuclio's logger) takes this thread's records meanwhile
with :func:`forwarded`.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from contextvars import ContextVar

PACKAGE_LOGGER = "sam2oct"
_NAMES: ContextVar = ContextVar("sam2oct_option_names", default=None)


def warn_option(logger: logging.Logger, message: str, option: str) -> None:
    """Log a warning about an option, named as the front door in use names it."""
    name = (_NAMES.get() or {}).get(option, option)
    logger.warning("%s: %s", name, message, extra={"option": option})


@contextmanager
def option_names(names):
    """Inside: options are named by ``names`` (a mapping read when a warning is logged)."""
    token = _NAMES.set(names)
    try:
        yield
    finally:
        _NAMES.reset(token)


class _Forward(logging.Handler):
    def __init__(self, emit, level, thread):
        super().__init__(level)
        self._emit, self._thread, self._busy = emit, thread, False

    def emit(self, record):
        # Another thread's records are not this call's; a record emit() itself logs (emit
        # writing to a Python logger under sam2oct) is not forwarded again.
        if record.thread != self._thread or self._busy:
            return
        self._busy = True
        try:
            self._emit(record.levelno, record.getMessage())
        except Exception:
            self.handleError(record)
        finally:
            self._busy = False


@contextmanager
def forwarded(emit, level=logging.WARNING):
    """Inside: the package's records of ``level`` or more, logged by this thread, go to
    ``emit(levelno, message)`` too."""
    handler = _Forward(emit, level, threading.get_ident())
    logger = logging.getLogger(PACKAGE_LOGGER)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
