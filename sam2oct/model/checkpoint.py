"""Reading the released SAM2-OCT checkpoints and building the model from them, strictly.

Every way a file can be the wrong one fails here, at load time, naming the file and the keys:
never run with random or cloned weights.
"""

import contextlib
import hashlib
import json
import pickle
import re
import threading
import zipfile
from importlib import resources
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam2oct.errors import CheckpointError
from sam2oct.model.modeling.semantic_sam2 import SEMANTIC_OVERRIDES, SemanticSAM2

CHECKSUMS_NAME = "checksums.json"  # written by `python -m sam2oct download`
DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_b+.yaml"  # inside the sam2 package
MASK_TOKENS_KEY = "sam_mask_decoder.mask_tokens.weight"
CLASS_EMBED_KEY = "sam_prompt_encoder.class_embeddings.weight"
_WEIGHT_CONTAINERS = ("model_state", "model", "model_state_dict")
# Modules of SAM2Base that the single-image forward pass never touches; trainers may drop them.
_UNUSED_PREFIXES = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "obj_ptr_proj.",
    "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial", "no_obj_ptr",
    "sam_mask_decoder.upscale_residual_proj.", "sam_mask_decoder.upscale_post_add_proj.",
)


def _keys(keys, limit=8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def read_state_dict(path) -> dict:
    """Load the weights of a checkpoint file without unpickling anything but tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}", option="checkpoint")
    # mmap keeps an 880 MB file out of RAM until the weights are copied into the model; files in
    # torch's legacy (pre-zip) format cannot be mapped, so only a zip archive is mapped.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        # torch names a refused global on a later line of its message; without one, the bytes
        # were simply not a pickle.
        lines = str(exc).splitlines() or [type(exc).__name__]
        refused = next((line.strip() for line in lines if "GLOBAL" in line or "global" in line), None)
        if refused is None:
            cause = next((ln.strip() for ln in lines if ln.startswith("Unsupported") or "load key" in ln), "not a pickle")
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({cause[:200]})",
                                  option="checkpoint") from exc
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than weights "
            f"(loading uses weights_only=True). Detail: {refused}", option="checkpoint",
        ) from exc
    except Exception as exc:  # torch.load fails in many ways on foreign or truncated bytes
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated download or another file type?): {detail}",
            option="checkpoint",
        ) from exc
    return extract_state_dict(obj, path)


def extract_state_dict(obj, path="checkpoint") -> dict:
    """Find the weights in a training checkpoint dict; strip DistributedDataParallel's prefix."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of weights", option="checkpoint")
    sd = next((obj[k] for k in _WEIGHT_CONTAINERS if isinstance(obj.get(k), dict)), obj)
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: no weights found (top-level keys: {_keys(map(str, obj))}); expected a state dict "
            f"or one under {', '.join(_WEIGHT_CONTAINERS)}", option="checkpoint",
        )
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def num_classes_of(sd: dict, path="checkpoint") -> int:
    """K, from the mask tokens; refuses the model variants this package does not implement."""
    if any("class_queries" in k for k in sd):
        raise CheckpointError(
            f"{path}: has class_queries ({_keys(k for k in sd if 'class_queries' in k)}): this is the "
            f"DCE decoder variant, not the released SAM2-OCT semantic decoder", option="checkpoint",
        )
    if any(k.startswith("sam_mask_decoders.") for k in sd):
        raise CheckpointError(
            f"{path}: has sam_mask_decoders.* keys ({_keys(k for k in sd if k.startswith('sam_mask_decoders.'))}): "
            f"this is the multi-decoder variant, not the released SAM2-OCT single semantic decoder",
            option="checkpoint",
        )
    if MASK_TOKENS_KEY not in sd:
        raise CheckpointError(f"{path}: no {MASK_TOKENS_KEY}: not a SAM 2 / SAM2-OCT checkpoint", option="checkpoint")
    if CLASS_EMBED_KEY not in sd:
        raise CheckpointError(
            f"{path}: a plain SAM 2 checkpoint (no {CLASS_EMBED_KEY}, no semantic head); use a SAM2-OCT "
            f"checkpoint (python -m sam2oct download nr206|mgu|mgu_prompted)", option="checkpoint",
        )
    return int(sd[MASK_TOKENS_KEY].shape[0])


def packaged_configs() -> list:
    """Names of the model configs inside the installed sam2 package, e.g.
    configs/sam2.1/sam2.1_hiera_l.yaml (training configs, which hold no model section, left out)."""
    root = resources.files("sam2").joinpath("configs")
    return sorted(
        f"configs/{folder.name}/{f.name}"
        for folder in root.iterdir() if folder.is_dir() and not folder.name.endswith("_training")
        for f in folder.iterdir() if f.name.endswith(".yaml")
    )


def load_config(config=None):
    """The hydra model config: a config packaged with sam2 by name (SAM 2.1 Hiera Base+ by
    default), or a YAML file path. A packaged name wins over a file of the same relative path."""
    name = DEFAULT_CONFIG if config is None else str(config)
    packaged = packaged_configs()
    if name in packaged:
        text, source = resources.files("sam2").joinpath(name).read_text(), f"sam2/{name}"
    else:
        path = Path(config)
        if not path.is_file():
            raise CheckpointError(
                f"model config file not found: {path}; give a config packaged with sam2 "
                f"({_keys(packaged, 8)}) or a YAML file path", option="config")
        text, source = path.read_text(), str(path)
    try:
        cfg = OmegaConf.create(text)
        model_cfg = cfg.model
    except Exception as exc:
        raise CheckpointError(f"{source}: not a SAM 2 model config: {exc}", option="config") from exc
    return model_cfg


def build_model(num_classes: int, config=None, *, init: bool = True) -> SemanticSAM2:
    """Build the network for K classes from a SAM 2 config: random weights, or with ``init``
    False, weights left as allocated (uninitialised memory) for a state dict to fill."""
    cfg = load_config(config)
    cfg._target_ = f"{SemanticSAM2.__module__}.{SemanticSAM2.__qualname__}"
    for key, value in SEMANTIC_OVERRIDES.items():
        cfg[key] = value
    cfg.pop("sam_mask_decoder_extra_args", None)
    with contextlib.nullcontext() if init else _no_weight_init():
        return instantiate(cfg, num_classes=num_classes, _recursive_=True)


_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_weight_init():
    """torch.nn.init's in-place initialisers as no-ops while the network is built: drawing random
    weights for Hiera B+ took over half a second of every start, only to be overwritten by the
    checkpoint. Modules call them through the torch.nn.init module at construction, so replacing
    the module's functions reaches them all (sam2's own trunc_normal_ calls fill parameters the
    checkpoint also holds). Process-wide while it lasts, hence the lock."""
    names = [n for n in vars(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    with _INIT_LOCK:
        saved = {n: getattr(torch.nn.init, n) for n in names}
        try:
            for n in names:
                setattr(torch.nn.init, n, _leave)
            yield
        finally:
            for n, f in saved.items():
                setattr(torch.nn.init, n, f)


def _leave(tensor, *args, **kwargs):
    return tensor


_TRUNK = "image_encoder.trunk."


def hiera_size(sd: dict) -> tuple | None:
    """(embed dim, blocks per stage) of the Hiera image encoder whose weights these are: what tells
    SAM 2's sizes apart (the rest of the model is the same for all). None if not a Hiera encoder."""
    patch = sd.get(_TRUNK + "patch_embed.proj.weight")
    if patch is None:
        return None
    dims, i = [], 0
    while (proj := sd.get(f"{_TRUNK}blocks.{i}.attn.proj.weight")) is not None:
        dims.append(int(proj.shape[0]))  # a block's output width; it doubles at each new stage
        i += 1
    stages = []
    for n, dim in enumerate(dims):
        if n and dim == dims[n - 1]:
            stages[-1] += 1
        else:
            stages.append(1)
    return int(patch.shape[0]), tuple(stages)


def _config_hiera_size(name) -> tuple | None:
    import inspect

    from sam2.modeling.backbones.hieradet import Hiera

    trunk = load_config(name).image_encoder.trunk
    defaults = inspect.signature(Hiera).parameters  # B+ leaves stages and embed dim at Hiera's defaults
    return (int(trunk.get("embed_dim", defaults["embed_dim"].default)),
            tuple(int(n) for n in trunk.get("stages", defaults["stages"].default)))


def fitting_config(sd: dict) -> str | None:
    """The SAM 2.1 config packaged with sam2 whose model these weights are the size of, if any."""
    size = hiera_size(sd)
    if size is None:
        return None
    return next((name for name in packaged_configs()
                 if name.startswith("configs/sam2.1/") and _config_hiera_size(name) == size), None)


def _size_words(size) -> str:
    return f"Hiera with embed dim {size[0]} and {'-'.join(map(str, size[1]))} blocks"


def check_state_dict(model: torch.nn.Module, sd: dict, path="checkpoint", config=None) -> None:
    """Every weight the forward pass uses must be there with its shape; nothing foreign may be.
    A checkpoint of another SAM 2 size is a config error that names the config that fits it."""
    expected = model.state_dict()
    used = {k for k in expected if not k.startswith(_UNUSED_PREFIXES)}
    missing = used - sd.keys()
    wrong_shape = any(k in sd and sd[k].shape != v.shape for k, v in expected.items())
    if missing or wrong_shape or sd.keys() - expected.keys():
        size, in_use = hiera_size(sd), hiera_size(expected)
        fit = fitting_config(sd) if size is not None and in_use is not None and size != in_use else None
        if fit is not None:
            current = f"the config in use ({config})" if config else "the config in use"
            raise CheckpointError(
                f"{path}: a checkpoint of another SAM 2 size ({_size_words(size)}), not of {current}, "
                f"which is {_size_words(in_use)}; set the model config to {fit}", option="config")
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} weights the model uses: {_keys(missing)}",
                              option="checkpoint")
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if wrong:
        raise CheckpointError(
            f"{path}: {len(wrong)} weights have the wrong shape for this config (another SAM 2 size? "
            f"choose the model config of that size): {_keys(wrong, 5)}", option="config"
        )
    unknown = sd.keys() - expected.keys()
    if unknown:
        raise CheckpointError(f"{path}: {len(unknown)} weights this model does not have: {_keys(unknown)}",
                              option="checkpoint")


def sha256_of(path, chunk=1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checksums_file_for(path) -> Path | None:
    """models/checksums.json beside the checkpoint or one folder up (models/<profile>/file.pt)."""
    path = Path(path).resolve()
    for folder in (path.parent, path.parent.parent):
        candidate = folder / CHECKSUMS_NAME
        if candidate.is_file():
            return candidate
    return None


def read_checksums(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable checksum record: {exc}", option="checkpoint") from exc


def verify_recorded_checksum(path) -> bool:
    """Refuse a checkpoint whose sha256 no longer matches the one recorded when it was fetched.
    Returns False when no record covers the file (nothing to check), True when it matched."""
    record_file = checksums_file_for(path)
    if record_file is None:
        return verify_hub_blob(path)
    path = Path(path).resolve()
    entry = read_checksums(record_file).get(path.relative_to(record_file.parent.resolve()).as_posix())
    if entry is None:
        return False
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise CheckpointError(
            f"{path}: sha256 {actual} does not match {entry['sha256']} recorded in {record_file} "
            f"when it was downloaded: the file changed; download it again", option="checkpoint",
        )
    return True


def verify_hub_blob(path) -> bool:
    """A file of the Hugging Face cache is a link to blobs/<sha256 of the file> (for LFS files):
    refuse it when its bytes no longer have that digest. False when it is not such a file."""
    blob = Path(path).resolve()
    if blob.parent.name != "blobs" or not re.fullmatch(r"[0-9a-f]{64}", blob.name):
        return False
    actual = sha256_of(blob)
    if actual != blob.name:
        raise CheckpointError(
            f"{path}: sha256 {actual} does not match {blob.name}, the digest the Hugging Face cache "
            f"stored it under: the file changed; delete {blob} and download it again", option="checkpoint",
        )
    return True


def load_model(path, config=None, device="cpu") -> SemanticSAM2:
    """Read, validate and load a SAM2-OCT checkpoint; returns the model in eval mode on `device`
    (None leaves it where it was built, on the CPU, for the caller to place)."""
    verify_recorded_checksum(path)
    sd = read_state_dict(path)
    k = num_classes_of(sd, path)
    model = build_model(k, config, init=False)
    check_state_dict(model, sd, path, config or DEFAULT_CONFIG)
    model.load_state_dict(sd, strict=False)
    # What the checkpoint may leave out (modules the forward pass never uses, see
    # _UNUSED_PREFIXES) was never initialised: zeros, not leftover memory.
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name not in sd:
                t.zero_()
    return (model if device is None else model.to(device)).eval()
