"""Encode a B-scan once, then decode any number of prompts against the cached features."""

import contextlib
import hashlib
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from sam2oct.errors import ConfigError
from sam2oct.model.modeling.semantic_sam2 import ImageFeatures, SemanticSAM2
from sam2oct.model.preprocessing import FrameGeometry, check_mode, model_input
from sam2oct.pipeline.cache import FrameCache

DEFAULT_CACHE_BYTES = 2 << 30
# bf16 autocast runs natively from Ampere (compute capability 8.0) on; T4, V100 and Turing
# emulate it and run it slower than fp32, and CPUs about ten times slower.
BF16_MIN_CAPABILITY = (8, 0)
# Full-resolution floats per step when the label map is taken class by class (64 MB): the
# memory of one step, whatever K and the frame size.
_STEP_ELEMENTS = 1 << 24


def use_bf16(requested: bool | None, device: torch.device) -> bool:
    """Whether to run under bf16 autocast: as requested, or (None, "auto") only on a CUDA GPU of
    compute capability 8.0 or newer."""
    if requested is not None:
        return bool(requested)
    if device.type != "cuda":
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY


def label_dtype(num_classes: int):
    """The smallest unsigned type that holds class indices 0..K-1."""
    if num_classes <= 1 << 8:
        return np.uint8
    return np.uint16 if num_classes <= 1 << 16 else np.uint32


@dataclass
class Prediction:
    label_map: np.ndarray  # [H, W] class index per image pixel (label_dtype(K))
    ious: np.ndarray  # [K] float32, the model's IoU estimate per class
    confidence: np.ndarray | None = None  # [H, W] float32 softmax probability of that class (if asked)
    low_res_logits: torch.Tensor | None = None  # [K, h, w] float32 on the CPU, model space (if asked)


@dataclass
class _Unprompted:
    """The memoised unprompted decode: what later calls may ask for, or compute from."""

    low_res_logits: torch.Tensor  # [K, h, w] float32 on the CPU
    ious: np.ndarray
    label_map: np.ndarray
    confidence: np.ndarray | None = None


def _held_bytes(*objs) -> int:
    """Bytes of the tensors' storages (each counted once) and numpy arrays given; None is 0."""
    seen, total = set(), 0
    for obj in objs:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = (obj.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
        elif obj is not None:
            total += obj.nbytes
    return total


@dataclass
class EncodedImage:
    key: str
    geometry: FrameGeometry
    features: ImageFeatures
    # The unprompted prediction depends on the image alone, so it is kept with the features.
    unprompted: _Unprompted | None = field(default=None, repr=False)
    # What the pipeline derives from the frame (its cleaned label map, shapes, reply texts): each
    # value has ``nbytes``; kept, counted and evicted with the features in the one cache.
    derived: dict = field(default_factory=dict, repr=False)

    @property
    def nbytes(self) -> int:
        """Memory this entry holds: features, the memoised unprompted prediction, derived results."""
        f, u = self.features, self.unprompted
        held = [f.image_embed, *f.high_res_feats]
        if u is not None:
            held += [u.low_res_logits, u.ious, u.label_map, u.confidence]
        return _held_bytes(*held) + sum(v.nbytes for v in list(self.derived.values()))


def image_digest(gray: np.ndarray, mode: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{mode}|{gray.shape}|{gray.dtype}|".encode())
    h.update(np.ascontiguousarray(gray).data)
    return h.hexdigest()


def _read_only(a: np.ndarray | None) -> np.ndarray | None:
    # Memoised arrays are handed to every caller: one caller must not change another's result.
    if a is not None:
        a.flags.writeable = False
    return a


class SemanticPredictor:
    """The model plus its preprocessing and frame cache; safe to share between threads.

    ``cache`` is the frame cache to keep encoded frames in (the pipeline's one cache); without
    one, a cache of ``cache_bytes`` is made (0 disables it). ``bf16`` None picks bf16 autocast
    where it is faster (see :func:`use_bf16`).
    """

    def __init__(self, model: SemanticSAM2, preprocess: str = "stretch", cache_bytes: int = DEFAULT_CACHE_BYTES,
                 bf16: bool | None = None, cache: FrameCache | None = None, *, encoder=None):
        self.model = model.eval()
        self.preprocess = check_mode(preprocess)
        self.device = next(model.parameters()).device
        self.bf16 = use_bf16(bf16, self.device)
        self.cache = cache if cache is not None else FrameCache(cache_bytes)
        # Another runtime's encode_image ([B,3,S,S] -> ImageFeatures), or None: the model's own.
        self.encoder = encoder
        self.encoder_calls = 0  # frames encoded
        self.decoder_calls = 0
        self._lock = threading.RLock()  # one forward pass at a time on the one model

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def encode(self, gray: np.ndarray) -> EncodedImage:
        """Grey [H,W] in [0,1] -> features, from the cache when this exact frame was seen."""
        return self.encode_batch([gray])[0]

    def encode_batch(self, grays, batch_size: int | None = None) -> list:
        """Grey frames -> their EncodedImage, in order. Frames the cache holds come from it; the
        others are encoded ``batch_size`` to one encoder call (None: all in one), and a frame
        given twice is encoded once. Each frame's features are copied out of the batch, so one
        kept frame holds only its own."""
        step = None if batch_size is None else int(batch_size)
        if step is not None and step < 1:
            raise ConfigError(f"encode batch must be 1 or more, got {step}", option="batch")
        keys = [image_digest(g, self.preprocess) for g in grays]
        out = {}
        # Look up under the model lock: a thread that waited for another's encode of the same
        # frame then finds it cached instead of encoding it again.
        with self._lock:
            todo = {}  # key -> the frame, for keys neither cached nor seen earlier in this call
            for key, gray in zip(keys, grays):
                if key in out or key in todo:
                    continue
                cached = self.cache.get(key)
                if cached is not None:
                    out[key] = cached
                else:
                    todo[key] = gray
            pending = list(todo.items())
            step = step or max(1, len(pending))
            for start in range(0, len(pending), step):
                for encoded in self._encode_frames(pending[start:start + step]):
                    self.cache.put(encoded.key, encoded)
                    out[encoded.key] = encoded
        return [out[key] for key in keys]

    def _encode_frames(self, frames) -> list:
        """[(key, grey frame)] -> [EncodedImage] in one encoder call (under the model lock)."""
        size = self.model.image_size
        geometries = [FrameGeometry.for_image(*g.shape, size=size, mode=self.preprocess) for _, g in frames]
        with torch.inference_mode():
            x = torch.cat([model_input(g, geo) for (_, g), geo in zip(frames, geometries)]).to(self.device)
            self.encoder_calls += len(frames)
            if self.encoder is not None:
                features = self.encoder(x)
            else:
                with self._autocast():
                    features = self.model.encode_image(x)
            maps = [features.image_embed, *features.high_res_feats]
            if len(frames) > 1:
                # Own storage per frame: the cache counts and frees each frame's features alone.
                per_frame = [[m[i:i + 1].clone() for m in maps] for i in range(len(frames))]
            else:
                per_frame = [maps]
        return [EncodedImage(key, geo, ImageFeatures(image_embed=f[0], high_res_feats=f[1:]))
                for (key, _), geo, f in zip(frames, geometries, per_frame)]

    def decode(self, encoded: EncodedImage, points=None, labels=None, box=None, dense_labels=None, *,
               confidence: bool = False, logits: bool = False) -> Prediction:
        """Prompts in image pixels -> the label map at the image size and per-class IoU estimates.

        points [N,2] (x, y) with labels [N] (1 positive, 0 negative); box (x1, y1, x2, y2);
        dense_labels [H,W] integer class indices of a painted prompt, -1 (or any index outside
        0..K-1) where unpainted. ``confidence`` adds the softmax probability of each pixel's
        class, ``logits`` the low-resolution logits; neither is computed unless asked for.
        """
        geo = encoded.geometry
        coords, point_labels = self._sparse_prompt(geo, points, labels, box)
        # Built before taking the model lock: it is image-sized work that needs no model.
        dense = None if dense_labels is None else self.dense_prompt(geo, dense_labels)
        if coords is None and dense is None:
            return self._unprompted(encoded, confidence, logits)
        low_res, ious = self._run_decoder(encoded, coords, point_labels, dense)
        label_map, conf = self._label_map(low_res, geo, confidence)
        return Prediction(label_map, ious, conf, low_res[0].cpu() if logits else None)

    def predict(self, gray: np.ndarray, **kwargs) -> Prediction:
        """encode + decode; ``kwargs`` are decode's prompts and flags."""
        return self.decode(self.encode(gray), **kwargs)

    def dense_prompt(self, geo: FrameGeometry, dense_labels) -> torch.Tensor:
        """[H,W] class indices (-1 unpainted) -> [1,K,m,m] class logits at the model's mask-input size.

        The same as resizing the per-pixel logits of ``class_label_logits`` (painted class ``on``,
        the other classes ``off``, unpainted 0) to m x m, built without them: the resize is
        linear, so resized logit_k = on * cov_k + off * (cov_all - cov_k), with cov_k the resized
        indicator of class k. Only one float [H,W] map exists at a time, never a [K,H,W] one.
        """
        labels = np.asarray(dense_labels)
        if labels.shape != (geo.height, geo.width):
            raise ValueError(f"dense_labels is {labels.shape}, the image {(geo.height, geo.width)}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"dense_labels must hold integer class indices, got {labels.dtype}")
        k, m = self.num_classes, self.model.mask_input_size[0]
        pe = self.model.sam_prompt_encoder
        with torch.inference_mode():
            on, off = (float(v) for v in pe.class_label_logits(torch.zeros(1, 1, 1, dtype=torch.long))[0, :2, 0, 0])
            out = torch.zeros(1, k, m, m)
            indicator = np.empty(labels.shape, np.float32)
            coverage = {}
            for c in _painted_classes(labels, k):
                np.equal(labels, c, out=indicator, casting="unsafe")
                coverage[c] = geo.raster_to_model(torch.from_numpy(indicator)[None, None], out_size=m)[0, 0].clone()
            if coverage:
                everything = torch.stack(list(coverage.values())).sum(0)
                out[0] = off * everything
                for c, cov in coverage.items():
                    out[0, c] = on * cov + off * (everything - cov)
        return out

    def _run_decoder(self, encoded: EncodedImage, coords, point_labels, dense):
        """The mask decoder on the cached features -> (low-res logits [1,K,h,w] float32, ious [K])."""
        dev = self.device
        with self._lock, torch.inference_mode(), self._autocast():
            self.decoder_calls += 1
            low_res, ious = self.model.decode(
                encoded.features,
                None if coords is None else coords.to(dev),
                None if point_labels is None else point_labels.to(dev),
                None if dense is None else dense.to(dev),
            )
        return low_res.float(), ious[0].float().cpu().numpy()

    def _unprompted(self, encoded: EncodedImage, confidence: bool, logits: bool) -> Prediction:
        # Under the model lock, so that threads asking at once compute the memo once.
        with self._lock:
            memo = encoded.unprompted
            if memo is None:
                low_res, ious = self._run_decoder(encoded, None, None, None)
                label_map, conf = self._label_map(low_res, encoded.geometry, confidence)
                memo = _Unprompted(low_res[0].cpu(), _read_only(ious), _read_only(label_map), _read_only(conf))
                encoded.unprompted = memo
                self.cache.recount(encoded.key, encoded)
            elif confidence and memo.confidence is None:
                _, conf = self._label_map(memo.low_res_logits[None].to(self.device), encoded.geometry, True)
                memo.confidence = _read_only(conf)
                self.cache.recount(encoded.key, encoded)
        return Prediction(memo.label_map, memo.ious, memo.confidence if confidence else None,
                          memo.low_res_logits.clone() if logits else None)

    def _label_map(self, low_res: torch.Tensor, geo: FrameGeometry, confidence: bool):
        """[1,K,h,w] logits -> label map [H,W] (argmax of the bilinearly upsampled logits) and,
        if asked, the softmax probability of that class; no full-resolution softmax.

        Classes are upsampled a few at a time (``_STEP_ELEMENTS``), keeping a running maximum,
        its class and, for the confidence, a running sum of exp(logit - maximum).
        """
        k = low_res.shape[1]
        step = max(1, _STEP_ELEMENTS // (geo.height * geo.width))
        best = best_class = total = None
        with torch.inference_mode():
            for c0 in range(0, k, step):
                up = geo.raster_to_image(low_res[:, c0:c0 + step])[0]
                if len(up) == 1:  # one class per step (large frames): no index map to build
                    value = up[0]
                    cls = torch.full_like(value, c0, dtype=torch.int32) if best is None else c0
                else:
                    value, cls = up.max(dim=0)  # ties: the first class, as argmax
                    cls = cls.to(torch.int32) + c0
                if best is None:
                    best, best_class = value, cls
                    if confidence:
                        total = torch.exp(up - best).sum(dim=0)
                    continue
                top = torch.maximum(best, value)
                if confidence:
                    total = total * torch.exp(best - top) + torch.exp(up - top).sum(dim=0)
                best_class = torch.where(value > best, cls, best_class)  # strictly: ties keep the first
                best = top
            label_map = best_class.cpu().numpy().astype(label_dtype(k))
            conf = None if total is None else total.reciprocal().float().cpu().numpy()
        return label_map, conf

    @staticmethod
    def _sparse_prompt(geo: FrameGeometry, points, labels, box):
        xy, lab = [], []
        if points is not None and len(points):
            xy.append(geo.to_model(points))
            lab.append(np.asarray(labels, dtype=np.int64).reshape(-1))
        if box is not None:
            # The model was trained with boxes as two corner points labelled 2 and 3.
            xy.append(geo.to_model(np.asarray(box, dtype=np.float64).reshape(2, 2)))
            lab.append(np.array([2, 3]))
        if not xy:
            return None, None
        coords = torch.from_numpy(np.concatenate(xy)).float()[None]
        return coords, torch.from_numpy(np.concatenate(lab)).to(torch.int32)[None]


def _painted_classes(labels: np.ndarray, k: int, rows: int = 256) -> list:
    """The classes 0..K-1 that occur in labels, found a block of rows at a time (no full-size copy)."""
    seen = np.zeros(k, bool)
    for r in range(0, labels.shape[0], rows):
        block = labels[r:r + rows]
        seen[np.unique(block[(block >= 0) & (block < k)])] = True
    return [int(c) for c in np.flatnonzero(seen)]
