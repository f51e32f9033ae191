"""Loading a checkpoint for a front door: whatever goes wrong becomes one CheckpointError that
says what is wrong and how to get a good file."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from sam2oct.errors import CheckpointError, Sam2OctError
from sam2oct.model.checkpoint import load_model
from sam2oct.model.device import first_line

DOWNLOAD_HINT = "download one with: python -m sam2oct download nr206   (or mgu, mgu_prompted)"


@contextmanager
def checkpoint_errors(path):
    """Whatever reading the checkpoint raises becomes one CheckpointError that says how to get a good file."""
    if not path:
        raise CheckpointError(f"no checkpoint given: name a SAM2-OCT checkpoint file; {DOWNLOAD_HINT}",
                              option="checkpoint")
    try:
        yield
    except Sam2OctError as exc:
        if exc.option == "config":
            raise
        raise CheckpointError(f"{exc}; {DOWNLOAD_HINT}", option=exc.option or "checkpoint") from exc
    except Exception as exc:  # torch.load fails on foreign files in ways the loader does not name
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {first_line(exc)}); "
                              f"{DOWNLOAD_HINT}", option="checkpoint") from exc


def load_checkpoint(path, config) -> torch.nn.Module:
    """The model on the CPU, or one CheckpointError that says what is wrong and how to get a good file."""
    with checkpoint_errors(path):
        return load_model(path, config, None)  # placed on the device by move_to_device
