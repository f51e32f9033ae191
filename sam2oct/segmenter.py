"""The Python API: a released SAM2-OCT model on a B-scan, through the same Pipeline as every front door.

    from sam2oct import Segmenter
    segmenter = Segmenter.from_pretrained("nr206")   # the Hugging Face cache; downloaded on first use
    result = segmenter.segment("bscan.png")           # a path, a PIL image or a numpy array
    result.label_map, result.shapes, result.scores

Options are :class:`~sam2oct.pipeline.options.PipelineOptions` keywords (``device="cuda"``,
``simplify=0``, ...); errors and warnings name them as keywords.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sam2oct.errors import CheckpointError, RequestError, Sam2OctError, describe
from sam2oct.logs import option_names
from sam2oct.model.discovery import cached_checkpoint
from sam2oct.model.profiles import PROFILES
from sam2oct.pipeline.options import PipelineOptions
from sam2oct.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)

_KEYWORDS = {name: name for name in PipelineOptions.names()}  # how errors name an option here


@dataclass(frozen=True)
class Segmentation:
    """One B-scan's layers."""

    label_map: np.ndarray  # [H, W] class index per pixel (0 is background)
    classes: tuple  # class names in channel order
    shapes: list  # one {"label", "type": "polygon", "points": [[x, y], ...]} per layer region
    scores: dict  # class -> mean probability of that class over the pixels given it (None: no pixel)
    ious: dict  # class -> the model's own IoU estimate for its mask

    def mask(self, name: str) -> np.ndarray:
        """[H, W] bool: the pixels of one class."""
        return self.label_map == self.classes.index(name)


class Segmenter:
    """A SAM2-OCT model ready to segment B-scans (its :class:`Pipeline` is ``.pipeline``)."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    @classmethod
    def from_pretrained(cls, name_or_path="nr206", *, revision: str | None = None, cache_dir=None,
                        download: bool = True, **options) -> "Segmenter":
        """A released model by profile name (nr206, mgu, mgu_prompted), from the Hugging Face cache;
        downloaded there on first use (huggingface_hub's progress bar, sha256 checked against the
        hub's, load-checked), or the path of a checkpoint file. ``revision``: a hub commit to fetch;
        ``download=False`` never goes online. ``options``: PipelineOptions keywords; the feature
        cache is off unless ``cache_mb`` is given."""
        name = str(name_or_path)
        try:
            if name.strip().lower() in PROFILES:
                name = name.strip().lower()
                path = None if revision else cached_checkpoint(name, cache_dir)
                if path is None:
                    if not download:
                        raise CheckpointError(f"no {name} checkpoint in the Hugging Face cache and download=False",
                                              option="checkpoint")
                    from sam2oct.model.hub import fetch_to_cache

                    path = fetch_to_cache(name, revision, cache_dir)
                options.setdefault("profile", name)
            elif Path(name).is_file():
                path = Path(name)
            else:
                raise CheckpointError(f"{name!r} is neither a released model ({', '.join(PROFILES)}) nor a "
                                      f"checkpoint file", option="checkpoint")
            log.info("loading %s", path)
            options.setdefault("cache_mb", 0)  # each image is encoded once: no feature cache
            with option_names(_KEYWORDS):
                return cls(Pipeline(PipelineOptions(checkpoint=str(path), **options)))
        except Sam2OctError as exc:  # the same error, naming the keyword
            raise type(exc)(describe(exc, _KEYWORDS), option=exc.option) from exc

    @property
    def classes(self) -> tuple:
        return tuple(self.pipeline.labels)

    def segment(self, image) -> Segmentation:
        """A B-scan (a file path, a PIL image, or a numpy array: 8-bit or integer grey, RGB, or
        float grey in [0, 1]) -> its label map, layer polygons and per-class scores."""
        p = self.pipeline
        gray = self._gray(image)
        prediction = p.predict(p.encode(gray), confidence=True)
        label_map = prediction.label_map
        k = p.num_classes
        counts = np.bincount(label_map.ravel(), minlength=k)
        sums = np.bincount(label_map.ravel(), weights=prediction.confidence.ravel(), minlength=k)
        classes = self.classes
        return Segmentation(
            label_map=label_map, classes=classes, shapes=p.shapes(label_map),
            scores={name: (float(sums[i] / counts[i]) if counts[i] else None) for i, name in enumerate(classes)},
            ious={name: float(v) for name, v in zip(classes, prediction.ious)},
        )

    def _gray(self, image) -> np.ndarray:
        p = self.pipeline
        if isinstance(image, (str, Path)):
            return p.read_image(Path(image).read_bytes())
        if isinstance(image, Image.Image):
            return p.read_pil(image)
        a = np.asarray(image)
        if a.ndim not in (2, 3) or a.size == 0:
            raise RequestError(f"image array has shape {a.shape}; expected [H, W] grey or [H, W, 3|4] colour")
        if a.dtype.kind == "f":
            if a.ndim != 2 or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise RequestError("a float image array must be [H, W] grey with finite values in [0, 1]")
            if a.size > p.options.max_pixels:
                raise RequestError(f"image is {a.shape[1]}x{a.shape[0]} = {a.size} pixels, over the pixel "
                                   f"limit of {p.options.max_pixels}", status=413, option="max_pixels")
            return a.astype(np.float32)
        if a.dtype.kind in "iu" and a.ndim == 2 and a.dtype != np.uint8:
            if a.min() < 0:
                raise RequestError("integer image has negative pixel values; expected a B-scan of intensities")
            a = a.astype(np.int32)  # PIL's 32-bit grey: read as v / the frame's maximum
        elif a.dtype != np.uint8:
            raise RequestError(f"image array of dtype {a.dtype}; expected uint8, an integer grey or float grey")
        return p.read_pil(Image.fromarray(a))
