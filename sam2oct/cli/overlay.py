"""The overlay PNG: layers tinted over the grey B-scan, each polygon outlined."""

import numpy as np
from PIL import Image, ImageDraw

# Distinct, colour-blind-friendlier hues for up to 12 layers (background is left uncoloured).
PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
]

# the same colours as CVAT label colours ('#rrggbb'), so a task shows the layers as the overlays do
PALETTE_HEX = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in PALETTE]


def render_overlay(gray: np.ndarray, label_map: np.ndarray, shapes: list, class_names, alpha=0.4) -> Image.Image:
    """Layers tinted over the grey B-scan, each polygon outlined in its layer's colour."""
    base = np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    colours = np.array([PALETTE[k % len(PALETTE)] for k in range(len(class_names))], dtype=np.float32)
    tint = colours[label_map]
    out = np.where(label_map[..., None] > 0, base * (1 - alpha) + tint * alpha, base).astype(np.uint8)
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    index = {name: k for k, name in enumerate(class_names)}
    for shape in shapes:
        colour = PALETTE[index[shape["label"]] % len(PALETTE)]
        draw.polygon([tuple(p) for p in shape["points"]], outline=colour)
    return image
