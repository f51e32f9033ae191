"""What the pipeline answers: a click's picked layers, a detector's regions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Interaction:
    """What a set of clicks picked on one frame."""

    mask: np.ndarray  # [H, W] bool: the picked regions (empty when nothing was picked)
    label_map: np.ndarray  # the model's labels after the box and negative clicks
    picked: list  # class indices picked, in order of first click
    labels: list  # their reply names
    ignored_clicks: list  # positive clicks that picked nothing
    snapped_clicks: list  # positive clicks just off a layer, moved onto its nearest pixel
    prompts: str  # "model" (clicks were prompts to the model) or "selection" (they only select)
    brush: str | None  # None (no brush), "used" or "ignored: why"
    score: float | None = None  # mean probability of the picked classes over the mask, when asked
    reason: str = ""  # why nothing was picked, when the mask is empty
    shapes: list | None = None  # polygons of the layers left after box and negative clicks, when asked


@dataclass
class Region:
    """One connected region of one layer: its polygon and exactly the pixels the polygon holds."""

    class_index: int
    label: str
    points: list  # [[x, y], ...] on pixel edges
    mask: np.ndarray  # [h, w] bool crop
    offset: tuple  # (x, y) of the crop in the frame
    score: float  # mean probability of its class over its pixels

    def full_mask(self, height: int, width: int) -> np.ndarray:
        full = np.zeros((height, width), dtype=bool)
        x, y = self.offset
        full[y:y + self.mask.shape[0], x:x + self.mask.shape[1]] = self.mask
        return full
