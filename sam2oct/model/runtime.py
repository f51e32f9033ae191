"""Which runtime encodes images (PyTorch or OpenVINO) and at what precision.

- ``torch``: the model's own encode_image (precision: bf16 autocast where asked or, under
  ``auto``, on CUDA devices of compute capability 8.0 or more).
- ``openvino``: the image encoder compiled by OpenVINO (CPU only); the decoder stays in PyTorch,
  in fp32. ``fp32``; ``bf16`` only on a CPU with AVX512-BF16 or AMX; ``auto``: bf16 on such a
  CPU (AUTO_BF16), else fp32.
- ``auto``: OpenVINO on a CPU device when the openvino package is installed, else torch.
"""

from __future__ import annotations

import importlib.util

import torch

from sam2oct.errors import ConfigError
from sam2oct.model import cpu_features

RUNTIMES = ("auto", "torch", "openvino")
# Whether precision auto takes bf16 on a CPU with bf16 instructions under OpenVINO. Decided from
# the label agreement measured by benchmarks/bench_cpu_runtime.py: see docs/cpu.md ("the decision").
AUTO_BF16 = True


def openvino_installed() -> bool:
    """Without importing it (the import alone takes a while)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``torch`` or ``openvino`` for this device; a ConfigError (option ``runtime``) where
    openvino is asked for and cannot run."""
    if runtime == "torch":
        return "torch"
    if runtime not in RUNTIMES:
        raise ConfigError(f"{runtime!r} is not one of {', '.join(RUNTIMES)}", option="runtime")
    if device.type != "cpu":
        if runtime == "openvino":
            raise ConfigError(f"openvino runs the encoder on the CPU only, and the device is {device}: "
                              f"use runtime torch (or auto) on a GPU, or device cpu", option="runtime")
        return "torch"
    if runtime == "openvino" and not openvino_installed():
        raise ConfigError("openvino is not installed (pip install -r requirements-cpu.txt); "
                          "or use runtime torch", option="runtime")
    return "openvino" if openvino_installed() else "torch"


def openvino_precision(precision: str) -> str:
    """The OpenVINO encoder's precision for the precision option: fp32, or bf16 (asked for, on a
    CPU that has the instructions; or auto where AUTO_BF16 and the CPU has them)."""
    if precision == "fp32":
        return "fp32"
    if precision == "bf16":
        cpu_features.require_bf16()
        return "bf16"
    if precision != "auto":
        raise ConfigError(f"{precision!r} is not one of auto, bf16, fp32", option="precision")
    return "bf16" if AUTO_BF16 and cpu_features.has_bf16() else "fp32"


def check_runtime(runtime: str, precision: str, device: torch.device) -> tuple:
    """(runtime, encoder precision) as the pipeline will run them, checked without a model."""
    resolved = resolve_runtime(runtime, device)
    if resolved == "openvino":
        return resolved, openvino_precision(precision)
    return resolved, precision


def build_encoder(model, runtime: str, precision: str, device: torch.device, *, cache_dir: str = "",
                  threads: int = 0):
    """The OpenVINO encoder for ``model`` where the runtime resolves to openvino, else None
    (the predictor then runs the model's own encode_image)."""
    resolved, prec = check_runtime(runtime, precision, device)
    if resolved != "openvino":
        return None
    from sam2oct.model.openvino_encoder import OpenVINOEncoder

    return OpenVINOEncoder(model, prec, cache_dir=cache_dir or None, threads=threads)
