"""Synthetic OCT B-scans with exact label maps, drawn as a given "scanner" would show them.

The anatomy (layer boundaries, reflectivities) is drawn at random per B-scan; the scanner
parameters (speckle, gamma, contrast, blur, noise) decide how it is imaged. Two scanners that
differ only in those give a controlled domain shift for fine-tuning experiments
(benchmarks/bench_finetune.py) and tests. Classes are NR206's, in its channel order.

    gray, labels = synthetic_bscan(496, 768, SCANNER_A, np.random.default_rng(0))
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sam2oct.model.profiles import NR206_CLASSES

# Mean thickness of NFL, GCL+IPL, INL, OPL, ONL, ELM+IS, OS, RPE as a fraction of the height,
# and their reflectivity (0..1) before imaging; index 0 of the reflectivity is the vitreous.
_THICKNESS = np.array([0.040, 0.065, 0.035, 0.028, 0.070, 0.030, 0.022, 0.028])
_REFLECTIVITY = np.array([0.04, 0.80, 0.50, 0.22, 0.58, 0.18, 0.55, 0.32, 0.92])
_CHOROID = 0.45  # just below the RPE, fading with depth


@dataclass(frozen=True)
class Scanner:
    """How a device images the retina (not what the retina is)."""

    speckle_looks: float = 8.0  # multiplicative gamma noise, mean 1, variance 1/looks
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    blur_sigma: float = 0.7  # point spread, pixels (axial; lateral is 1.5 times this)
    noise: float = 0.02  # additive Gaussian noise floor
    layer_scale: float = 1.0  # thickness multiplier (axial resolution / magnification)


SCANNER_A = Scanner()
# Strong speckle, washed-out contrast, a blurrier point spread and a brighter floor.
SCANNER_B = Scanner(speckle_looks=1.5, gamma=0.55, contrast=0.65, brightness=0.08, blur_sigma=2.0, noise=0.05)
CLASS_NAMES = NR206_CLASSES


def _smooth_curve(width, rng, amplitude, waves=3):
    x = np.linspace(0, 1, width)
    curve = np.zeros(width)
    for _ in range(waves):
        curve += rng.normal(0, amplitude) * np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * x + rng.uniform(0, 2 * np.pi))
    return curve


def layer_boundaries(height, width, rng, layer_scale=1.0) -> np.ndarray:
    """[9, W] rows: the ILM, then the bottom of each of the 8 layers, increasing downwards."""
    x = np.linspace(-1, 1, width)
    centre = rng.uniform(-0.4, 0.4)
    # The outer retina (RPE) is the smooth reference; the layers stack upwards from it.
    floor = height * (rng.uniform(0.5, 0.65) + rng.uniform(-0.08, 0.08) * x - rng.uniform(0.0, 0.12) * (x - centre) ** 2)
    floor += height * _smooth_curve(width, rng, 0.01)
    # A foveal pit: the inner layers (NFL..OPL) thin towards its centre, so the ILM dips.
    pit = rng.uniform(0.0, 0.9) * np.exp(-(((x - centre) / rng.uniform(0.1, 0.25)) ** 2))
    thickness = []
    for i, mean in enumerate(_THICKNESS):
        t = height * mean * layer_scale * rng.uniform(0.8, 1.2) * (1 + _smooth_curve(width, rng, 0.08))
        if i < 4:
            t = t * (1 - pit)
        thickness.append(np.maximum(t, 0.0 if i < 4 else 0.5))
    above = np.cumsum(np.array(thickness)[::-1], axis=0)[::-1]  # from each boundary down to the floor
    bounds = np.concatenate([floor - above, floor[None]])
    return np.clip(bounds, 0, height)


def label_map(bounds: np.ndarray, height: int) -> np.ndarray:
    """Class of each pixel centre: 0 above the ILM and below the RPE, layer k between bounds k-1 and k."""
    rows = np.arange(height)[:, None] + 0.5
    below = (rows[None] >= bounds[:, None, :]).sum(axis=0)  # boundaries above each pixel
    return np.where(below >= len(bounds), 0, below).astype(np.uint8)


def synthetic_bscan(height, width, scanner: Scanner, rng: np.random.Generator):
    """(gray float32 [H,W] in [0,1], labels uint8 [H,W] in NR206 class indices)."""
    bounds = layer_boundaries(height, width, rng, scanner.layer_scale)
    labels = label_map(bounds, height)
    refl = _REFLECTIVITY[labels] * rng.uniform(0.85, 1.15, size=len(_REFLECTIVITY))[labels]
    depth = np.arange(height)[:, None] - bounds[-1][None]
    choroid = _CHOROID * np.exp(-np.maximum(depth, 0) / (0.12 * height))
    texture = ndimage.gaussian_filter(rng.random((height, width)), 3.0)
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-9)
    choroid = choroid * (0.6 + 0.8 * texture)
    refl = np.where(depth >= 0, choroid, refl)
    # Lateral shadows (vessels) and slow brightness changes across the scan.
    refl = refl * (1 + 0.15 * _smooth_curve(width, rng, 1.0, waves=2))[None]
    image = ndimage.gaussian_filter(refl, (scanner.blur_sigma, 1.5 * scanner.blur_sigma))
    image = image * rng.gamma(scanner.speckle_looks, 1.0 / scanner.speckle_looks, size=image.shape)
    image = np.clip(image, 0, 1) ** scanner.gamma
    image = (image - 0.5) * scanner.contrast + 0.5 + scanner.brightness
    image = image + rng.normal(0, scanner.noise, size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def synthetic_set(n, height, width, scanner: Scanner, seed: int):
    """n (gray, labels) pairs from one seed."""
    rng = np.random.default_rng(seed)
    return [synthetic_bscan(height, width, scanner, rng) for _ in range(n)]
