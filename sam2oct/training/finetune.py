"""Fine-tuning a SAM2-OCT checkpoint on a user's own labelled B-scans.

Training sees exactly what serving sees: the same preprocessing (FrameGeometry, model_input)
and the model's own forward path (encode_image, then decode with no prompt). Modes:

- ``lora`` (default): low-rank adapters on the image encoder's attention (Hiera ``qkv``,
  ``proj``) and the mask decoder's transformer attention (``q/k/v/out_proj``); the per-class
  heads (mask tokens, hypernetwork MLPs, IoU token and head) are trained fully; all else frozen.
- ``decoder``: the image encoder is frozen and each training image is encoded once per cached
  view (the original plus ``views - 1`` augmented copies); the mask decoder is trained on those
  cached features. Augmentation therefore happens only before each view's one encoding.
- ``full``: every weight the single-image forward pass uses.

The prompt encoder is frozen in ``lora`` and ``decoder`` modes and, for a prompted profile, in
every mode: training is unprompted (see docs/finetune.md). The result is written as a plain
checkpoint with exactly the base checkpoint's keys and shapes (adapters folded in).
"""

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sam2oct.training.augment import AugmentOptions, augment
from sam2oct.model.checkpoint import load_model, read_state_dict, sha256_of
from sam2oct.errors import ConfigError
from sam2oct.training.lora import add_lora, merge_lora
from sam2oct.training.losses import LossWeights, total_loss
from sam2oct.model.modeling.semantic_sam2 import ImageFeatures
from sam2oct.model.runtime import build_encoder
from sam2oct.model.predictor import SemanticPredictor
from sam2oct.model.preprocessing import FrameGeometry, model_input

MODES = ("lora", "decoder", "full")
ENCODER_LORA = r"image_encoder\.trunk\.blocks\.\d+\.attn\.(qkv|proj)"
DECODER_LORA = r"sam_mask_decoder\.transformer\..*(q_proj|k_proj|v_proj|out_proj)"
HEADS = ("sam_mask_decoder.mask_tokens.", "sam_mask_decoder.output_hypernetworks_mlps.",
         "sam_mask_decoder.iou_token.", "sam_mask_decoder.iou_prediction_head.")
# conv_s0/conv_s1 live in the decoder but run inside forward_image: in decoder mode their output
# is part of the cached features, so they cannot learn there.
_ENCODER_PASS_DECODER_PARTS = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")
# (encoder-side, decoder-side) learning rates per mode; see docs/finetune.md.
DEFAULT_LR = {"lora": (1e-3, 3e-3), "decoder": (0.0, 1e-3), "full": (1e-5, 1e-3)}


@dataclass(frozen=True)
class FinetuneOptions:
    mode: str = "lora"
    steps: int = 300
    batch: int = 2
    rank: int = 8
    alpha: float | None = None  # LoRA scale = alpha / rank; None: alpha = rank
    lr_encoder: float | None = None  # None: DEFAULT_LR[mode]
    lr_decoder: float | None = None
    weight_decay: float = 0.01
    clip: float = 2.0
    warmup: int | None = None  # None: 5% of the steps
    seed: int = 0
    augment: bool = True
    views: int = 3  # decoder mode: cached encodings per image (the original + views-1 augmented)
    preprocess: str = "stretch"
    prompted: bool = False  # the profile takes prompts: keep its prompt encoder frozen
    loss: LossWeights = field(default_factory=LossWeights)
    augmentation: AugmentOptions = field(default_factory=AugmentOptions)

    def resolved(self) -> "FinetuneOptions":
        """The options with every default filled in (what the report records); checked first."""
        check_options(self)
        enc, dec = DEFAULT_LR[self.mode]
        return replace(
            self,
            lr_encoder=enc if self.lr_encoder is None else self.lr_encoder,
            lr_decoder=dec if self.lr_decoder is None else self.lr_decoder,
            warmup=max(1, round(0.05 * self.steps)) if self.warmup is None else self.warmup,
            alpha=float(self.rank) if self.alpha is None else self.alpha,
        )


def check_options(o: FinetuneOptions) -> None:
    """Raise ConfigError (``option`` = the field) for the first option that cannot work."""
    if o.mode not in MODES:
        raise ConfigError(f"{o.mode!r} is not one of {', '.join(MODES)}", option="mode")
    for name in ("steps", "batch", "rank", "views"):
        if getattr(o, name) < 1:
            raise ConfigError(f"must be at least 1, got {getattr(o, name)}", option=name)
    for name in ("lr_encoder", "lr_decoder"):
        value = getattr(o, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"must be a finite number >= 0, got {value}", option=name)
    if o.warmup is not None and not 0 <= o.warmup <= o.steps:
        raise ConfigError(f"must be between 0 and the number of steps ({o.steps}), got {o.warmup}", option="warmup")
    if not o.clip > 0:
        raise ConfigError(f"must be > 0, got {o.clip}", option="clip")
    if not o.weight_decay >= 0:
        raise ConfigError(f"must be >= 0, got {o.weight_decay}", option="weight_decay")


# --- which weights learn ----------------------------------------------------------------------

def _set_trainable(model, prefixes, flag=True):
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(flag)


def prepare_model(model, o: FinetuneOptions) -> dict:
    """Freeze / adapt the model for the mode; returns {"encoder": [params], "decoder": [params]}."""
    model.requires_grad_(False)
    if o.mode == "lora":
        gen = torch.Generator().manual_seed(o.seed)
        add_lora(model, ENCODER_LORA, o.rank, o.alpha, gen)
        add_lora(model, DECODER_LORA, o.rank, o.alpha, gen)
        _set_trainable(model, HEADS)
    elif o.mode == "decoder":
        _set_trainable(model, ("sam_mask_decoder.",))
        _set_trainable(model, _ENCODER_PASS_DECODER_PARTS, False)
    else:
        _set_trainable(model, ("image_encoder.", "no_mem_embed", "sam_mask_decoder."))
        if not o.prompted:
            _set_trainable(model, ("sam_prompt_encoder.",))
    groups = {"encoder": [], "decoder": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            side = "encoder" if name.startswith(("image_encoder.", "no_mem_embed")) else "decoder"
            groups[side].append(p)
    return groups


def _schedule(steps, warmup):
    def factor(step):  # step = optimiser steps taken so far
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


# --- data to tensors ------------------------------------------------------------------------------

def _targets(labels: np.ndarray, geo: FrameGeometry, k: int):
    """Soft one-hot target [K,S,S] and valid weight [1,S,S] in the model frame, as serving maps rasters."""
    lab = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    onehot = F.one_hot(lab, k).permute(2, 0, 1).float()[None]
    target = geo.raster_to_model(onehot)[0]
    valid = geo.raster_to_model(torch.ones(1, 1, *labels.shape))[0]
    return target / target.sum(0, keepdim=True).clamp(min=1e-6), valid


class _Examples:
    """Draws (augmented) training examples and turns them into model inputs and targets."""

    def __init__(self, samples, o: FinetuneOptions, size: int, k: int):
        self.samples, self.o, self.size, self.k = samples, o, size, k
        self.rng = np.random.default_rng(o.seed)
        self._order = []

    def next_indices(self, n):
        """Sample without replacement within an epoch, reshuffled each epoch."""
        out = []
        while len(out) < n:
            if not self._order:
                self._order = list(self.rng.permutation(len(self.samples)))
            out.append(int(self._order.pop()))
        return out

    def view(self, index, augmented=True):
        """(gray, labels, geometry) of one (augmented) draw of a sample."""
        s = self.samples[index]
        gray, labels = s.gray, s.labels
        if augmented and self.o.augment:
            gray, labels = augment(gray, labels, self.rng, self.o.augmentation)
        return gray, labels, FrameGeometry.for_image(*gray.shape, size=self.size, mode=self.o.preprocess)

    def targets(self, labels, geo):
        return _targets(labels, geo, self.k)

    def draw(self, index, augmented=True):
        gray, labels, geo = self.view(index, augmented)
        target, valid = self.targets(labels, geo)
        return model_input(gray, geo)[0], target, valid


def _stack(items, device):
    return [torch.stack(parts).to(device) for parts in zip(*items)]


def _cat_features(feats):
    return ImageFeatures(torch.cat([f.image_embed for f in feats]),
                         [torch.cat(level) for level in zip(*(f.high_res_feats for f in feats))])


# --- training ---------------------------------------------------------------------------------------

def train(model, samples, o: FinetuneOptions, callback=None, progress=False, *, encoder=None,
          encode_batch: int = 1) -> dict:
    """Fine-tune ``model`` in place for exactly ``o.steps`` optimiser steps; adapters are folded
    in at the end. ``callback(step, loss, parts)`` runs after each step (it may raise to stop).
    Decoder mode encodes its views ``encode_batch`` to a call, with ``encoder`` (another runtime's
    encode_image, e.g. OpenVINO's) or, when None, the model's own."""
    o = o.resolved()
    check_options(o)
    torch.manual_seed(o.seed)
    device = next(model.parameters()).device
    k = model.num_classes
    for s in samples:
        if int(s.labels.max()) >= k:
            raise ValueError(f"{s.name}: label {int(s.labels.max())} but the model has {k} classes")
    groups = prepare_model(model, o)
    lrs = {"encoder": o.lr_encoder, "decoder": o.lr_decoder}
    param_groups = [{"params": ps, "lr": lrs[side]} for side, ps in groups.items() if ps and lrs[side] > 0]
    params = [p for g in param_groups for p in g["params"]]
    opt = torch.optim.AdamW(param_groups, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(o.steps, o.warmup))
    examples = _Examples(samples, o, model.image_size, k)
    # The forward path has no dropout or batch norm: eval mode is the serving computation.
    model.eval()
    cache = None
    if o.mode == "decoder":
        cache = _encode_views(encoder or model.encode_image, examples, o.views, device, encode_batch)

    bar = _progress(o.steps, progress)
    losses, started = [], time.perf_counter()
    try:
        for step in range(1, o.steps + 1):
            idx = examples.next_indices(o.batch)
            if cache is None:
                x, target, valid = _stack([examples.draw(i) for i in idx], device)
                features = model.encode_image(x)
            else:
                picks = [cache[i][int(examples.rng.integers(len(cache[i])))] for i in idx]
                features = _cat_features([f for f, _, _ in picks])
                # Targets are built per step from the cached label map: a [K,S,S] float target
                # per view would hold ~40 MB each at S=1024 (18 GiB for a 97-B-scan volume).
                target, valid = _stack([examples.targets(labels, geo) for _, labels, geo in picks], device)
            low_res, ious = model.decode(features)
            logits = F.interpolate(low_res, size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss, parts = total_loss(logits, ious, target, valid, o.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, o.clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if callback is not None:
                callback(step, losses[-1], parts)
    finally:
        if bar is not None:
            bar.close()
    merge_lora(model)
    model.requires_grad_(False)
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": len(losses), "train_s": round(time.perf_counter() - started, 3),
            "loss_first": losses[0], "loss_last": float(np.mean(tail)), "options": _jsonable(asdict(o)),
            "trainable_parameters": sum(p.numel() for p in params)}


@torch.no_grad()
def _encode_views(encode, examples: _Examples, views: int, device, batch: int = 1):
    """Decoder mode: per image, (features, label map, geometry) of the original and views-1
    augmented copies, the label map in the smallest integer type that holds it; encoded ``batch``
    views to one ``encode`` call, the views drawn in the same order whatever the batch."""
    pairs = [(i, v) for i in range(len(examples.samples)) for v in range(views)]
    cache = [[] for _ in examples.samples]
    for start in range(0, len(pairs), max(1, batch)):
        chunk = []  # drawn a chunk at a time: model inputs are 12 MB each at 1024 px
        for i, v in pairs[start:start + max(1, batch)]:
            gray, labels, geo = examples.view(i, augmented=v > 0)
            labels = np.ascontiguousarray(labels, dtype=np.min_scalar_type(max(int(labels.max()), 0)))
            chunk.append((i, model_input(gray, geo)[0], labels, geo))
        features = encode(torch.stack([x for _, x, _, _ in chunk]).to(device))
        for j, (i, _, labels, geo) in enumerate(chunk):
            one = ImageFeatures(features.image_embed[j:j + 1].clone(),
                                [level[j:j + 1].clone() for level in features.high_res_feats])
            cache[i].append((one, labels, geo))
    return cache


def _progress(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# --- evaluation and output ---------------------------------------------------------------------------

def predictor_fn(model, preprocess: str):
    """gray -> label map, through the serving predictor (no feature cache)."""
    predictor = SemanticPredictor(model, preprocess, 0)  # no feature cache
    return lambda gray: predictor.predict(gray).label_map


def save_checkpoint(model, base_sd: dict, out, metadata: dict | None = None) -> Path:
    """Write the model's weights under the base checkpoint's keys, shapes and dtypes, atomically:
    a temporary file in the same folder, then os.replace, so an interrupt leaves no partial OUT."""
    sd = model.state_dict()
    weights = {}
    for key, base in base_sd.items():
        t = sd[key]
        if t.shape != base.shape:
            raise RuntimeError(f"{key}: trained shape {tuple(t.shape)} != base {tuple(base.shape)}")
        weights[key] = t.detach().to("cpu", base.dtype).contiguous().clone()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"model_state": weights, "sam2oct_finetune": metadata or {}}, f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def run(train_set, val_set, checkpoint, out, *, config=None, class_names=(), options=FinetuneOptions(),
        device="cpu", data=None, callback=None, progress=False, runtime="torch", precision="auto",
        ov_cache_dir="", encode_batch=1) -> dict:
    """Evaluate (if val_set), fine-tune, save OUT atomically, evaluate the saved file; the report.
    Decoder mode encodes its (frozen-encoder) features with ``runtime`` at ``precision``,
    ``encode_batch`` views to a call (sam2oct.model.runtime)."""
    from sam2oct.evaluation.evaluate import score

    o = options.resolved()
    started = time.perf_counter()
    base_sha = sha256_of(checkpoint)
    base_sd = read_state_dict(checkpoint)
    model = load_model(checkpoint, config, device)
    before = score(val_set, predictor_fn(model, o.preprocess)) if val_set is not None else None
    encoder = None
    if o.mode == "decoder":
        encoder = build_encoder(model, runtime, precision, torch.device(device), cache_dir=ov_cache_dir)
    stats = train(model, train_set.samples, o, callback=callback, progress=progress, encoder=encoder,
                  encode_batch=encode_batch)
    meta = {"base_sha256": base_sha, "mode": o.mode, "steps": stats["steps"], "seed": o.seed,
            "class_names": list(class_names)}
    save_checkpoint(model, base_sd, out, meta)
    after = None
    if val_set is not None:
        # Score the file as written, loaded as the function loads it.
        after = score(val_set, predictor_fn(load_model(out, config, device), o.preprocess))
    return {
        "base_checkpoint": {"path": str(checkpoint), "sha256": base_sha},
        "output": {"path": str(out), "sha256": sha256_of(out)},
        "config": None if config is None else str(config),
        "class_names": list(class_names),
        "device": str(device),
        "data": data or {},
        "hyperparameters": stats.pop("options"),
        **stats,
        "wall_s": round(time.perf_counter() - started, 3),
        "validation": None if val_set is None else {"before": before, "after": after},
    }
