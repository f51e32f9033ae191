"""The scan's geometry: voxel spacing, laterality, and the en-face plane around the fovea.

Frame 0 of a label volume is the most superior B-scan; columns run left to right as the scanner
writes them (on the fundus image as the examiner sees it, so the optic disc lies at +x in a right
eye). En-face coordinates, in mm, centred on the fovea, superior positive:

    x = (column - fovea column) * lateral spacing,  y = (fovea B-scan - B-scan) * B-scan spacing
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sam2oct.errors import Sam2OctError

LATERALITIES = ("OD", "OS")


class ThicknessError(Sam2OctError):
    """A label volume, spacing, laterality or fovea that thickness cannot be computed from."""


@dataclass(frozen=True)
class Spacing:
    """Distance between voxel centres in µm: along the A-scan, between A-scans, between B-scans."""

    axial: float
    lateral: float
    bscan: float

    def __post_init__(self):
        for name in ("axial", "lateral", "bscan"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)
            # a single B-scan has no distance to a next one: 0 is allowed there (the grid refuses it)
            if not ok or value < 0 or (value == 0 and name != "bscan"):
                raise ThicknessError(f"{name} spacing must be a positive number of µm, not {value!r}",
                                     option="spacing")

    @classmethod
    def of(cls, values) -> "Spacing":
        """From a Spacing, a mapping {axial, lateral, bscan} or a sequence [axial, lateral, bscan]."""
        if isinstance(values, Spacing):
            return values
        if isinstance(values, dict):
            missing = [k for k in ("axial", "lateral", "bscan") if k not in values]
            if missing:
                raise ThicknessError(f"spacing lacks {', '.join(missing)}", option="spacing")
            return cls(*(float(values[k]) for k in ("axial", "lateral", "bscan")))
        try:
            seq = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ThicknessError(f"spacing must be three numbers (axial, lateral, B-scan µm), not {values!r}",
                                 option="spacing") from None
        if len(seq) != 3:
            raise ThicknessError(f"spacing must be three numbers (axial, lateral, B-scan µm), got {len(seq)}",
                                 option="spacing")
        return cls(*seq)

    def as_dict(self) -> dict:
        return {"axial": float(self.axial), "lateral": float(self.lateral), "bscan": float(self.bscan)}

    @property
    def ascan_area_mm2(self) -> float:
        """The en-face area one A-scan stands for: lateral x B-scan spacing."""
        return self.lateral * self.bscan * 1e-6


def laterality_of(value) -> str:
    """'OD' or 'OS' from the common spellings (R/L, right/left, any case)."""
    text = str(value or "").strip().upper()
    text = {"R": "OD", "RIGHT": "OD", "L": "OS", "LEFT": "OS"}.get(text, text)
    if text not in LATERALITIES:
        raise ThicknessError(f"laterality must be OD or OS, not {value!r}", option="laterality")
    return text


def enface_xy(shape, fovea, spacing: Spacing):
    """(x, y) in mm of every A-scan centre of a [N, W] grid, around fovea (bscan, column)."""
    n, w = shape
    bscan, column = fovea
    x = (np.arange(w, dtype=np.float64) - column) * spacing.lateral * 1e-3
    y = (bscan - np.arange(n, dtype=np.float64)) * spacing.bscan * 1e-3
    return np.broadcast_to(x[None, :], (n, w)), np.broadcast_to(y[:, None], (n, w))


def nasal_sign(laterality: str) -> int:
    """+1 where nasal is +x (right eye), -1 where it is -x (left eye)."""
    return 1 if laterality_of(laterality) == "OD" else -1
