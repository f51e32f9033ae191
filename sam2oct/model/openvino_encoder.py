"""The image encoder through OpenVINO on the CPU: converted once, cached on disk, fp32 or bf16.

What is converted is exactly what ``SemanticSAM2.encode_image`` runs: the Hiera trunk and FPN
neck, the decoder's conv_s0/conv_s1 projections of the high-resolution levels, and the
no-memory embedding; its outputs are the cached ``ImageFeatures``. The decoder stays in PyTorch.

Two cache layers, both under ``cache_dir`` (see :class:`EntryCache` for the atomic writes):
- ``ir-<key>``: the converted model (OpenVINO IR, fp32 weights). The key covers the encoder's
  weights (a sha256 of every tensor the graph reads, so a checkpoint that differs only in the
  decoder shares it), the network's structure (the config), the input size and the versions of
  the converter and of this graph. Precision is not part of it: the IR is the same for both.
- ``cpu-<key>-<precision>-<cpu>``: the model compiled for this CPU at that precision, so a warm
  start skips both the conversion (about a minute for Hiera B+) and the compilation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from sam2oct.errors import ConfigError
from sam2oct.model.cpu_features import cpu_signature, require_bf16
from sam2oct.model.encoder_cache import EntryCache
from sam2oct.model.malloc_arenas import cap_malloc_arenas
from sam2oct.model.modeling.semantic_sam2 import ImageFeatures

log = logging.getLogger(__name__)

# Raise when the converted graph changes (what encode_image computes, its inputs or outputs).
GRAPH_VERSION = 1
# precision option -> OpenVINO's inference precision hint
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
ENCODER_PREFIXES = ("image_encoder.", "sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.", "no_mem_embed")
CACHE_FOLDER = "sam2oct-openvino"
_IR, _BLOB = "encoder.xml", "encoder.blob"


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError("openvino is not installed (pip install -r requirements-cpu.txt); "
                          "or use runtime torch", option="runtime") from None
    return openvino


def default_cache_dir() -> Path:
    """Beside the Hugging Face hub cache: $HF_HOME/sam2oct-openvino (huggingface_hub's HF_HOME:
    $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface unless set)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME).expanduser() / CACHE_FOLDER


class _EncoderGraph(torch.nn.Module):
    """encode_image as a module with tensor outputs: (image_embed, *high_res_feats)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        features = self.model.encode_image(x)
        return (features.image_embed, *features.high_res_feats)


def encoder_state(model) -> dict:
    """The tensors the converted graph reads, by name."""
    state = model.state_dict(keep_vars=False)
    return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(encoder_state(model).items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _plain(value):
    if isinstance(value, (bool, int, float, str, type(None))):
        return True
    return isinstance(value, (tuple, list)) and all(_plain(v) for v in value)


def structure(model) -> dict:
    """The encoder's hyperparameters (what its config set): each submodule's type and plain
    attributes (window sizes, heads, strides, ...) and the model's own encode settings."""
    modules = {}
    for prefix in ("image_encoder", "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1"):
        try:
            root = model.get_submodule(prefix)
        except AttributeError:
            continue
        for name, m in root.named_modules(prefix=prefix):
            attrs = {k: v for k, v in sorted(vars(m).items())
                     if not k.startswith("_") and k != "training" and _plain(v)}
            modules[name] = [f"{type(m).__module__}.{type(m).__qualname__}", attrs]
    top = {k: getattr(model, k, None) for k in (
        "image_size", "use_high_res_features_in_sam", "num_feature_levels", "directly_add_no_mem_embed")}
    return {"modules": modules, "model": top}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def encoder_key(model) -> str:
    basis = {
        "graph": GRAPH_VERSION,
        "openvino": _version("openvino"),
        "torch": torch.__version__,
        "sam2": _version("sam2"),
        "weights": weights_digest(model),
        "structure": structure(model),
    }
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:32]


class OpenVINOEncoder:
    """``model.encode_image`` compiled by OpenVINO for this CPU; call it as encode_image is called.

    ``precision`` fp32 or bf16 (bf16 only on a CPU with AVX512-BF16 or AMX, else ConfigError);
    ``cache_dir`` None = :func:`default_cache_dir`; ``threads`` 0 = OpenVINO's default (all cores).
    ``source`` says where the compiled model came from: "compiled" (the cache held it),
    "ir" (compiled from the cached conversion) or "converted" (converted from PyTorch now).
    """

    def __init__(self, model, precision: str = "fp32", cache_dir=None, threads: int = 0):
        if precision not in OV_PRECISION:
            raise ConfigError(f"{precision!r} is not one of {', '.join(OV_PRECISION)}", option="precision")
        if precision == "bf16":
            require_bf16()
        self.ov = _openvino()
        cap_malloc_arenas()  # before OpenVINO's threads first allocate (see malloc_arenas)
        self.precision = precision
        self.image_size = int(model.image_size)
        self.cache = EntryCache(default_cache_dir() if cache_dir is None else cache_dir)
        self.key = encoder_key(model)
        self.source = None
        self.calls = 0
        self._lock = threading.Lock()
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = self._load(model, config)
        self._request = self._compiled.create_infer_request()

    @property
    def source_note(self) -> str:
        return {"compiled": "loaded from the cache", "ir": "compiled from the cached conversion",
                "converted": "converted now"}.get(self.source, str(self.source)) + f" in {self.cache.root}"

    @property
    def ir_key(self) -> str:
        return f"ir-{self.key}"

    @property
    def compiled_key(self) -> str:
        return f"cpu-{self.key}-{self.precision}-{cpu_signature()}"

    def _load(self, model, config):
        core = self.ov.Core()
        folder = self.cache.load(self.compiled_key)
        if folder is not None:
            try:
                compiled = core.import_model((folder / _BLOB).read_bytes(), "CPU", config)
                self.source = "compiled"
                return compiled
            except Exception as exc:  # an OpenVINO upgrade or a foreign blob: compile again
                log.warning("cached compiled encoder %s unusable (%s); compiling again", folder, exc)
                self.cache.remove(self.compiled_key)
        ov_model = self._read_or_convert(model, core)
        compiled = core.compile_model(ov_model, "CPU", config)
        def write(d: Path):
            blob = compiled.export_model()
            (d / _BLOB).write_bytes(blob.getbuffer() if hasattr(blob, "getbuffer") else blob)

        try:
            self.cache.store(self.compiled_key, write, meta={"precision": self.precision, "cpu": cpu_signature()})
        except OSError as exc:  # a read-only cache costs the compilation at the next start, nothing else
            log.warning("could not cache the compiled encoder in %s: %s", self.cache.root, exc)
        return compiled

    def _read_or_convert(self, model, core):
        folder = self.cache.load(self.ir_key)
        if folder is not None:
            try:
                ov_model = core.read_model(str(folder / _IR))
                self.source = "ir"
                return ov_model
            except Exception as exc:
                log.warning("cached converted encoder %s unreadable (%s); converting again", folder, exc)
        ov_model = self._convert(model)
        self.source = "converted"

        def write(d: Path):
            # compress_to_fp16 would halve the file but round the weights: fp32 must stay exact.
            self.ov.save_model(ov_model, str(d / _IR), compress_to_fp16=False)

        try:
            self.cache.store(self.ir_key, write, meta={"image_size": self.image_size})
        except OSError as exc:
            log.warning("could not cache the converted encoder in %s: %s", self.cache.root, exc)
        return ov_model

    def _convert(self, model):
        """Trace encode_image at batch 1, convert, and leave the batch dimension dynamic."""
        s = self.image_size
        log.info("converting the image encoder to OpenVINO (once per checkpoint; about a minute for Hiera B+)")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # Hiera's padding tests on the (fixed) image size are traced as constants: right.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                # torch 2.13 deprecates jit.trace; torch.export converts too, but twice as slowly
                # here, and leaves the image size dynamic.
                warnings.simplefilter("ignore", DeprecationWarning)
                example = torch.zeros(1, 3, s, s)
                # Traced here without torch's trace check (which runs the model twice more): the
                # test suite holds the converted features to PyTorch's instead.
                traced = torch.jit.trace(_EncoderGraph(model), example, check_trace=False)
                ov_model = self.ov.convert_model(traced, example_input=example)
        finally:
            model.train(was_training)
        ov_model.reshape({ov_model.inputs[0]: self.ov.PartialShape([-1, 3, s, s])})
        return ov_model

    def __call__(self, x: torch.Tensor) -> ImageFeatures:
        """[B,3,S,S] float32 normalised images -> ImageFeatures, as ``model.encode_image``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"expected [B,3,{self.image_size},{self.image_size}], got {tuple(x.shape)}")
        data = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        with self._lock:
            self.calls += 1
            result = self._request.infer({0: data})
            # The request reuses its output memory on the next call: copy out.
            outputs = [torch.from_numpy(np.array(result[out], copy=True)) for out in self._compiled.outputs]
        return ImageFeatures(image_embed=outputs[0], high_res_feats=outputs[1:])
