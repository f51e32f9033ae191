"""From a grey B-scan to the model's square input, and exact coordinate maps both ways.

Two modes, because which one the released weights expect is not proven:
- ``stretch`` (default, the model card): stretch-resize to S x S (bilinear, antialiased), grey
  copied to three channels, ImageNet mean/std.
- ``pad-equalize`` (the CVAT-OCT interactor): PIL histogram equalisation, centred in an S x S
  black canvas without resizing (images larger than S are first shrunk to fit, keeping their
  aspect ratio), values in [0, 1], no normalisation.
S is the model's image size; nothing here assumes 1024.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sam2oct.errors import ConfigError

PREPROCESS_MODES = ("stretch", "pad-equalize")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_mode(mode: str) -> str:
    if mode not in PREPROCESS_MODES:
        raise ConfigError(f"preprocessing {mode!r} is not one of {', '.join(PREPROCESS_MODES)}",
                          option="preprocess")
    return mode


@dataclass(frozen=True)
class FrameGeometry:
    """Affine map between image pixels and the model's S x S input: model = image * scale + offset."""

    height: int
    width: int
    size: int
    mode: str
    scale_x: float
    scale_y: float
    offset_x: int = 0
    offset_y: int = 0

    @classmethod
    def for_image(cls, height: int, width: int, size: int, mode: str) -> "FrameGeometry":
        check_mode(mode)
        if mode == "stretch":
            return cls(height, width, size, mode, size / width, size / height)
        h, w = cls._fitted(height, width, size)
        return cls(height, width, size, mode, w / width, h / height, (size - w) // 2, (size - h) // 2)

    @staticmethod
    def _fitted(height, width, size):
        r = min(1.0, size / max(height, width))
        return max(1, round(height * r)), max(1, round(width * r))

    @property
    def content_box(self):
        """(x0, y0, w, h) of the image inside the model canvas."""
        if self.mode == "stretch":
            return 0, 0, self.size, self.size
        h, w = self._fitted(self.height, self.width, self.size)
        return self.offset_x, self.offset_y, w, h

    def to_model(self, xy) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return xy * (self.scale_x, self.scale_y) + (self.offset_x, self.offset_y)

    def to_image(self, xy) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return (xy - (self.offset_x, self.offset_y)) / (self.scale_x, self.scale_y)

    def raster_to_model(self, t: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
        """[B,C,H,W] image-space raster -> [B,C,out,out] model-space raster (zeros outside the image)."""
        out = out_size or self.size
        if self.mode == "stretch":
            return _resize(t, (out, out), antialias=True)
        x0, y0, w, h = self.content_box
        canvas = t.new_zeros(*t.shape[:2], self.size, self.size)
        canvas[..., y0:y0 + h, x0:x0 + w] = _resize(t, (h, w), antialias=True)
        return canvas if out == self.size else _resize(canvas, (out, out), antialias=True)

    def raster_to_image(self, t: torch.Tensor) -> torch.Tensor:
        """[B,C,s,s] model-space raster (any s) -> [B,C,H,W] in image pixels (bilinear)."""
        if self.mode == "stretch":
            return _resize(t, (self.height, self.width))
        x0, y0, w, h = self.content_box
        full = _resize(t, (self.size, self.size))[..., y0:y0 + h, x0:x0 + w]
        return _resize(full, (self.height, self.width))


def _resize(t: torch.Tensor, size, antialias=False) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def model_input(gray: np.ndarray, geometry: FrameGeometry) -> torch.Tensor:
    """float [H,W] grey in [0,1] -> [1,3,S,S] float32 model input."""
    if geometry.mode == "stretch":
        x = geometry.raster_to_model(torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None])
        x = x.expand(1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std
    u8 = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
    eq = np.asarray(ImageOps.equalize(Image.fromarray(u8)), dtype=np.float32) / 255.0
    return geometry.raster_to_model(torch.from_numpy(eq)[None, None]).expand(1, 3, -1, -1).contiguous()
