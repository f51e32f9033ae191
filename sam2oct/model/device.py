"""The torch device: resolved and proven usable before any checkpoint work, so a device fault
is reported as one, not as a bad checkpoint."""

from __future__ import annotations

import torch

from sam2oct.errors import DeviceError

def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``, proven usable by a small allocation (before any checkpoint work)."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        device = torch.device("cuda" if name == "auto" else name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{name!r} is not a torch device (auto, cpu, cuda, cuda:N)", option="device") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"{name!r}: only cpu and cuda devices are supported", option="device")
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise DeviceError(f"{name!r} asked for, but CUDA is not available here ({built}; "
                          f"check the NVIDIA driver and the container's GPU access)", option="device")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"{name!r} does not exist: this host has {count} CUDA device(s), "
                          f"cuda:0..cuda:{count - 1}", option="device")
    try:
        torch.zeros(1, device=device)
    except Exception as exc:  # driver/runtime mismatch, a device in use exclusively, ...
        raise DeviceError(f"{name!r} cannot be used: {type(exc).__name__}: {first_line(exc)}",
                          option="device") from exc
    return device


def first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def move_to_device(model, device: torch.device):
    try:
        return model.to(device)
    except Exception as exc:  # out of memory, driver faults: a device problem, not a checkpoint one
        raise DeviceError(f"the model could not be placed on {device}: {type(exc).__name__}: "
                          f"{first_line(exc)}", option="device") from exc
