"""Exceptions that carry what went wrong in words an admin or annotator can act on."""


class Sam2OctError(Exception):
    """Base class of every error this package raises on purpose."""


class CheckpointError(Sam2OctError):
    """A checkpoint or config cannot be used: missing, corrupt, wrong model or wrong profile."""


class ConfigError(Sam2OctError):
    """An environment variable or option has a value the function cannot use."""


class RequestError(Sam2OctError):
    """A request the function refuses; ``status`` is the HTTP status to answer with (4xx)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
