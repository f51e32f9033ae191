"""Encode a B-scan once, then decode any number of prompts against the cached features."""

import contextlib
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from sam2oct.modeling.semantic_sam2 import ImageFeatures, SemanticSAM2
from sam2oct.preprocessing import FrameGeometry, check_mode, model_input


@dataclass
class Prediction:
    low_res_logits: torch.Tensor  # [K, h, w] float32 on the CPU, model space
    ious: np.ndarray  # [K] the model's IoU estimate per class
    label_map: np.ndarray  # [H, W] uint8 class index per image pixel
    confidence: np.ndarray  # [H, W] float32 softmax probability of that class


@dataclass
class EncodedImage:
    key: str
    geometry: FrameGeometry
    features: ImageFeatures
    # The unprompted prediction depends on the image alone, so it is kept with the features.
    unprompted: Prediction | None = field(default=None, repr=False)


def image_digest(gray: np.ndarray, mode: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{mode}|{gray.shape}|{gray.dtype}|".encode())
    h.update(np.ascontiguousarray(gray).data)
    return h.hexdigest()


class FeatureCache:
    """A thread-safe LRU of EncodedImage by image digest, bounded by entry count."""

    def __init__(self, max_entries: int):
        if max_entries < 0:
            raise ValueError("cache size must be >= 0")
        self.max_entries = max_entries
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return item

    def put(self, key, item) -> None:
        with self._lock:
            if self.max_entries == 0:
                return
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self):
        return len(self._items)


class SemanticPredictor:
    """The model plus its preprocessing and feature cache; safe to share between threads."""

    def __init__(self, model: SemanticSAM2, preprocess: str = "stretch", cache_bytes: int = 2 << 30,
                 bf16: bool | None = None, cache_size: int = 8):
        self.model = model.eval()
        self.preprocess = check_mode(preprocess)
        self.device = next(model.parameters()).device
        # bf16 autocast pays off on GPUs; on CPUs it is about ten times slower than fp32.
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bf16
        self.cache = FeatureCache(cache_size)
        self.encoder_calls = 0
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
        key = image_digest(gray, self.preprocess)
        # Look up under the model lock: a thread that waited for another's encode of the same
        # frame then finds it cached instead of encoding it again.
        with self._lock:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
            geometry = FrameGeometry.for_image(*gray.shape, size=self.model.image_size, mode=self.preprocess)
            with torch.inference_mode(), self._autocast():
                x = model_input(gray, geometry).to(self.device)
                self.encoder_calls += 1
                features = self.model.encode_image(x)
            encoded = EncodedImage(key, geometry, features)
            self.cache.put(key, encoded)
        return encoded

    def decode(self, encoded: EncodedImage, points=None, labels=None, box=None, dense_labels=None, *,
               confidence=False, logits=False) -> Prediction:
        """Prompts in image pixels -> per-class logits and the label map at the image size.

        points [N,2] (x, y) with labels [N] (1 positive, 0 negative); box (x1, y1, x2, y2);
        dense_labels [H,W] class indices of a painted prompt, -1 where unpainted.
        """
        unprompted = points is None and box is None and dense_labels is None
        if unprompted and encoded.unprompted is not None:
            return encoded.unprompted
        geo = encoded.geometry
        coords, point_labels = self._sparse_prompt(geo, points, labels, box)
        with self._lock, torch.inference_mode(), self._autocast():
            dense = None
            if dense_labels is not None:
                if np.shape(dense_labels) != (geo.height, geo.width):
                    raise ValueError(f"dense_labels is {np.shape(dense_labels)}, the image {(geo.height, geo.width)}")
                pe = self.model.sam_prompt_encoder
                lab = torch.as_tensor(np.asarray(dense_labels), dtype=torch.long)[None]
                logits = pe.class_label_logits(lab)
                dense = geo.raster_to_model(logits, out_size=self.model.mask_input_size[0]).to(self.device)
            low_res, ious = self.model.decode(
                encoded.features,
                None if coords is None else coords.to(self.device),
                None if point_labels is None else point_labels.to(self.device),
                dense,
            )
            low_res = low_res.float()
            probs = torch.softmax(geo.raster_to_image(low_res), dim=1)[0]
            confidence, label_map = probs.max(dim=0)
        prediction = Prediction(
            low_res_logits=low_res[0].cpu(),
            ious=ious[0].float().cpu().numpy(),
            label_map=label_map.to(torch.uint8).cpu().numpy(),
            confidence=confidence.cpu().numpy(),
        )
        if unprompted:
            encoded.unprompted = prediction
        return prediction

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

    def predict(self, gray: np.ndarray, **prompts) -> Prediction:
        return self.decode(self.encode(gray), **prompts)
