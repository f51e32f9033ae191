"""Augmentations that keep OCT geometry: the retina stays a stack of roughly horizontal layers.

Applied to the grey B-scan in image space, before the serving preprocessing. Geometric changes
(horizontal flip, small rotation and shift) move the label map with the image (nearest
neighbour); intensity changes (gamma, contrast, speckle-like multiplicative noise, blur) touch
the image only. Never a vertical flip: the vitreous is above the retina and the choroid below,
and the layers' order from top to bottom is what the classes mean. Edges are filled by
replicating the border pixels, so no pixel lacks a label.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentOptions:
    p_flip: float = 0.5
    max_rotate_deg: float = 5.0
    max_shift: float = 0.05  # fraction of the image height / width
    gamma: tuple = (0.7, 1.4)
    contrast: tuple = (0.75, 1.25)
    brightness: float = 0.08  # additive, +- this
    p_speckle: float = 0.5
    speckle_looks: tuple = (2.0, 12.0)  # gamma-distributed noise, mean 1; fewer looks = stronger
    p_blur: float = 0.3
    blur_sigma: tuple = (0.3, 1.5)


def augment(gray: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            options: AugmentOptions = AugmentOptions()):
    """One random draw: (gray float32 [H,W] in [0,1], labels [H,W] same dtype as given)."""
    gray = np.asarray(gray, dtype=np.float32)
    if rng.random() < options.p_flip:
        gray, labels = gray[:, ::-1], labels[:, ::-1]
    gray, labels = _rotate_shift(gray, labels, rng, options)
    gray = _intensity(gray, rng, options)
    return np.ascontiguousarray(gray, dtype=np.float32), np.ascontiguousarray(labels)


def _rotate_shift(gray, labels, rng, o: AugmentOptions):
    h, w = gray.shape
    angle = np.deg2rad(rng.uniform(-o.max_rotate_deg, o.max_rotate_deg))
    shift = rng.uniform(-o.max_shift, o.max_shift, size=2) * (h, w)
    if angle == 0 and not shift.any():
        return gray, labels
    # ndimage maps output (row, col) to input = M @ out + offset; rotate about the centre.
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]])
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - m @ centre - shift
    g = ndimage.affine_transform(gray, m, offset, order=1, mode="nearest")
    lab = ndimage.affine_transform(labels, m, offset, order=0, mode="nearest")
    return g, lab


def _intensity(gray, rng, o: AugmentOptions):
    g = np.clip(gray, 0.0, 1.0) ** rng.uniform(*o.gamma)
    if rng.random() < o.p_speckle:
        looks = rng.uniform(*o.speckle_looks)
        g = g * rng.gamma(looks, 1.0 / looks, size=g.shape)
    if rng.random() < o.p_blur:
        g = ndimage.gaussian_filter(g, rng.uniform(*o.blur_sigma))
    g = (g - 0.5) * rng.uniform(*o.contrast) + 0.5 + rng.uniform(-o.brightness, o.brightness)
    return np.clip(g, 0.0, 1.0)
