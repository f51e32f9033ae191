"""Exceptions that carry what went wrong in words an admin or annotator can act on.

Lower modules speak neutrally ("model config file not found: PATH"). A setting's error names
the option it concerns (``option``, a field of ``PipelineOptions``); each front door spells
that option its own way (an environment variable, a CLI flag, a cvat-cli ``-p`` parameter)
through :func:`describe`.
"""


class Sam2OctError(Exception):
    """Base class of every error this package raises on purpose."""

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(message)
        self.option = option


class CheckpointError(Sam2OctError):
    """A checkpoint or config cannot be used: missing, corrupt, wrong model or wrong profile."""


class ConfigError(Sam2OctError):
    """A setting has a value the function cannot use."""


class DeviceError(ConfigError):
    """The torch device asked for cannot be used (absent, driver mismatch, out of memory)."""


class RequestError(Sam2OctError):
    """A request the function refuses; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 400, *, option: str | None = None):
        super().__init__(message, option=option)
        self.status = status


def describe(exc: Sam2OctError, names: dict) -> str:
    """The message with the front door's own name for the option it concerns, if any."""
    option = getattr(exc, "option", None)
    if option and option in names:
        return f"{names[option]}: {exc}"
    return str(exc)
