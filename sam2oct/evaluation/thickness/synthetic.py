"""A synthetic macular volume with analytic layer boundaries and a foveal pit (tests, docs).

Layers are NR206's (NFL .. RPE), stacked upwards from a curved Bruch's membrane. Each layer's
thickness is a smooth function of the en-face position around a fovea that need not sit on an
A-scan: the inner layers (NFL, GCL+IPL, INL, OPL) vanish or thin into the pit, the ONL thickens
under it, and the retina is thicker nasally than temporally (so the nasal and temporal sectors
differ, as in a real eye). A pixel belongs to the layer its centre lies in, as in
sam2oct.data.synthetic.label_map.

    vol = synthetic_macula(laterality="OD")
    vol.labels        # uint8 [N, H, W], frame 0 the most superior B-scan
    vol.boundaries    # float [9, N, W] rows: the ILM, then the bottom of each layer
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam2oct.evaluation.thickness.geometry import Spacing, nasal_sign
from sam2oct.model.profiles import NR206_CLASSES

# µm away from the fovea; the fraction each loses at the pit's centre; µm gained per mm nasally.
_LAYERS = (  # NFL, GCL+IPL, INL, OPL, ONL, ELM+IS, OS, RPE
    (38.0, 1.00, 9.0), (72.0, 1.00, 3.0), (36.0, 0.95, 1.0), (26.0, 0.60, 0.5),
    (70.0, -0.45, 1.0), (24.0, -0.10, 0.0), (32.0, -0.15, 0.0), (22.0, 0.0, 0.0),
)


@dataclass
class SyntheticMacula:
    labels: np.ndarray
    boundaries: np.ndarray  # [9, N, W] rows (pixel-edge coordinates), increasing downwards
    spacing: Spacing
    laterality: str
    fovea: tuple  # (bscan, column) of the pit's centre, not necessarily whole numbers
    class_names: tuple = NR206_CLASSES


def synthetic_macula(*, bscans=49, height=496, width=512, spacing=(3.9, 12.0, 125.0), laterality="OD",
                     fovea=(24.3, 260.6), pit_sigma_mm=0.45, waviness=0.0, seed=0) -> SyntheticMacula:
    """The volume; waviness adds smooth random bumps (fraction of each layer's thickness)."""
    spacing = Spacing.of(spacing)
    n, w = bscans, width
    x = (np.arange(w) - fovea[1])[None, :] * spacing.lateral * 1e-3  # mm, as the scanner's columns
    y = (fovea[0] - np.arange(n))[:, None] * spacing.bscan * 1e-3
    x, y = np.broadcast_arrays(x, y)
    nasal = x * nasal_sign(laterality)  # mm towards the optic disc
    pit = np.exp(-(x ** 2 + y ** 2) / (2 * pit_sigma_mm ** 2))
    rng = np.random.default_rng(seed)
    thickness = []
    for mean, loss, per_mm in _LAYERS:
        t = (mean + per_mm * nasal) * (1 - loss * pit)
        if waviness:
            phase = rng.uniform(0, 2 * np.pi, 2)
            t = t * (1 + waviness * np.sin(2.1 * x + phase[0]) * np.cos(1.7 * y + phase[1]))
        thickness.append(np.maximum(t, 0.0))
    thickness = np.array(thickness) / spacing.axial  # pixels
    bm = height * 0.72 - (0.018 * (x ** 2 + y ** 2) + 0.01 * y) * 1000 / spacing.axial
    above = np.cumsum(thickness[::-1], axis=0)[::-1]  # from each layer's top down to BM
    bounds = np.clip(np.concatenate([bm[None] - above, bm[None]]), 0, height)
    rows = np.arange(height, dtype=np.float64)[None, :, None] + 0.5
    labels = np.zeros((n, height, w), dtype=np.uint8)
    for b in range(n):
        below = (rows[0][None] >= bounds[:, b][:, None, :]).sum(axis=0)  # boundaries above each pixel
        labels[b] = np.where(below >= len(bounds), 0, below)
    return SyntheticMacula(labels, bounds, spacing, laterality, tuple(float(v) for v in fovea))
