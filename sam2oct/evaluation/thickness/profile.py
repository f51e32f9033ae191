"""Line, circle and radial scans: thickness along each B-scan (a CSV and a plot), no grid.

Position along a line or radial B-scan is in mm from the fovea's column; along a circle scan it
is in mm from the scan's first A-scan (its arc length). A-scans without retina are left empty.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from sam2oct.evaluation.thickness.columns import RETINA
from sam2oct.evaluation.thickness.outputs import new_figure, png_bytes


def positions_mm(report) -> np.ndarray:
    """[W] position of each A-scan along its B-scan, mm."""
    w = report.shape[2]
    origin = report.fovea[1] if report.fovea is not None else 0
    return (np.arange(w) - origin) * report.spacing.lateral * 1e-3


def profile_csv(report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["bscan", "column", "position_mm", *report.layers])
    pos = positions_mm(report)
    for b in range(report.shape[0]):
        for c in range(report.shape[2]):
            values = [f"{report.maps[name][b, c]:.3f}" if report.valid[b, c] else "" for name in report.layers]
            writer.writerow([b, c, f"{pos[c]:.4f}", *values])
    return buf.getvalue()


def profile_png(report, bscan: int = 0, reference: dict | None = None) -> bytes:
    """One B-scan's profile: every layer, the retina in bold; reference {label: [W] µm} dashed."""
    fig = new_figure(9.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    pos = positions_mm(report)
    valid = report.valid[bscan]
    for name in report.layers:
        values = np.where(valid, report.maps[name][bscan], np.nan)
        if name == RETINA:
            ax.plot(pos, values, color="black", linewidth=2.0, label="retina (total)")
        else:
            ax.plot(pos, values, linewidth=1.0, label=name)
    for label, values in (reference or {}).items():
        ax.plot(pos, values, color="crimson", linestyle="--", linewidth=1.6, label=label)
    where = "from the fovea" if report.fovea is not None else "along the circle"
    ax.set_xlabel(f"position {where} (mm)")
    ax.set_ylabel("thickness (µm)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    eye = f", {report.laterality}" if report.laterality else ""
    ax.set_title(f"{report.pattern} scan{eye}: layer thickness along B-scan {bscan}")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return png_bytes(fig)
