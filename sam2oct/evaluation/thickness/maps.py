"""En-face thickness heat maps: one PNG per layer (µm colour bar, ETDRS grid with each sector's
name and mean, S/I/N/T marked) and the raw [N, W] map in µm as .npy beside it (NaN where an
A-scan holds no retina). Scans without a grid get their profile plots instead.

Drawn in physical proportions (mm on both axes) around the fovea, superior up; the area the scan
does not reach is grey, so a partly covered sector shows as such.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sam2oct.evaluation.thickness import etdrs
from sam2oct.evaluation.thickness.columns import RETINA
from sam2oct.evaluation.thickness.outputs import atomic_write, file_stem, new_figure, npy_bytes, png_bytes
from sam2oct.evaluation.thickness.profile import profile_png

EYES = {"OD": "OD (right eye)", "OS": "OS (left eye)"}
_LABEL_RADIUS = {"IM": 1.0, "OM": 2.25}
_DIRECTION = {"S": (0.0, 1.0), "I": (0.0, -1.0)}


def raw_map(report, layer: str) -> np.ndarray:
    return np.where(report.valid, report.maps[layer], np.nan).astype(np.float32)


def _extent(report):
    n, _, w = report.shape
    b, c = report.fovea
    lat, bs = report.spacing.lateral * 1e-3, report.spacing.bscan * 1e-3
    return ((-0.5 - c) * lat, (w - 0.5 - c) * lat, (b - (n - 1) - 0.5) * bs, (b + 0.5) * bs)


def _outlined(artist, width=2.2):
    from matplotlib import patheffects

    artist.set_path_effects([patheffects.withStroke(linewidth=width, foreground="black")])
    return artist


def _sector_centre(name: str, laterality: str):
    if name == "CSF":
        return 0.0, 0.0
    q, ring = name[0], name[1:]
    r = _LABEL_RADIUS[ring]
    sign = 1 if laterality == "OD" else -1
    dx, dy = _DIRECTION.get(q, (sign * (1 if q == "N" else -1), 0.0))
    return r * dx, r * dy


def enface_png(report, layer: str) -> bytes:
    from matplotlib import colormaps
    from matplotlib.patches import Circle

    data = raw_map(report, layer)
    shown = data[np.isfinite(data)]
    vmin, vmax = (np.percentile(shown, [1, 99]) if shown.size else (0.0, 1.0))
    if vmax - vmin < 1.0:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    fig = new_figure(7.2, 6.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("#cfcfcf")
    cmap = colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))
    left, right, bottom, top = _extent(report)
    image = ax.imshow(data, extent=(left, right, bottom, top), origin="upper", cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest", aspect="equal")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.08)
    bar.set_label("thickness (µm)")
    for r in etdrs.RADII_MM:
        _outlined(ax.add_patch(Circle((0, 0), r, fill=False, edgecolor="white", linewidth=1.3)), 2.6)
    for angle in (45, 135, 225, 315):
        dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        line, = ax.plot([etdrs.RADII_MM[0] * dx, etdrs.RADII_MM[2] * dx],
                        [etdrs.RADII_MM[0] * dy, etdrs.RADII_MM[2] * dy], color="white", linewidth=1.3)
        _outlined(line, 2.6)
    means = report.etdrs[layer]
    for name in etdrs.SECTORS:
        x, y = _sector_centre(name, report.laterality)
        value = "n/a" if means[name] is None else f"{means[name]:.0f}"
        size = 7.5 if name == "CSF" else 8.5
        _outlined(ax.text(x, y, f"{name}\n{value}", ha="center", va="center", color="white", fontsize=size,
                          fontweight="bold", linespacing=1.0))
    ax.plot([0], [0], marker="+", color="white", markersize=7, markeredgewidth=1.2)
    span = etdrs.RADII_MM[2] + 0.55  # room for the S/I/N/T marks inside the frame
    ax.set_xlim(min(left, -span), max(right, span))
    ax.set_ylim(min(bottom, -span), max(top, span))
    ax.set_xlabel("x (mm from the fovea)")
    ax.set_ylabel("y (mm from the fovea)")
    nasal_right = report.laterality == "OD"
    box = {"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": "#b00020", "alpha": 0.9}
    for text, x, y in (("S", 0.5, 0.965), ("I", 0.5, 0.035),
                       ("N" if nasal_right else "T", 0.965, 0.5), ("T" if nasal_right else "N", 0.035, 0.5)):
        ax.text(x, y, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, fontweight="bold",
                color="#b00020", bbox=box)
    title = "retina (total)" if layer == RETINA else layer
    cover = report.coverage
    covered = sum(cover[s] * etdrs.sector_area_mm2(s) for s in etdrs.SECTORS) / (math.pi * etdrs.RADII_MM[2] ** 2)
    ax.set_title(f"{title} thickness (µm), {EYES.get(report.laterality, report.laterality)}\n"
                 f"fovea at B-scan {report.fovea[0]}, column {report.fovea[1]}; "
                 f"grid {_percent(covered)} covered", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def _percent(fraction: float) -> str:
    """100% only when whole: a sliver left out shows as 99.6%, not rounded up."""
    return "100%" if fraction >= 0.9995 else f"{min(fraction, 0.999) * 100:.1f}%"


def write_maps(report, directory) -> list:
    """Write the maps (grid) or the profile plots (no grid) into directory; the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for layer in report.layers:
        path = directory / f"thickness_{file_stem(layer)}.npy"
        atomic_write(path, npy_bytes(raw_map(report, layer)))
        written.append(path)
        if report.has_grid:
            path = directory / f"thickness_{file_stem(layer)}.png"
            atomic_write(path, enface_png(report, layer))
            written.append(path)
    if not report.has_grid:
        for b in range(report.shape[0]):
            path = directory / f"profile_bscan{b:03d}.png"
            atomic_write(path, profile_png(report, b))
            written.append(path)
    return written
