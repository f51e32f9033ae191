"""Thickness of one label volume: maps, fovea, ETDRS sectors; as a JSON dict and a CSV.

    report = measure(labels, spacing, "OD", class_names)
    report.as_json()["etdrs"]["retina"]["CSF"]   # the central subfield thickness, µm

A raster volume (several parallel B-scans) gets the ETDRS grid. A single B-scan (a line or a
circle scan), or a radial or circle pattern, gets a thickness profile along each B-scan and no
grid (:mod:`.profile`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from sam2oct.evaluation.thickness import columns, etdrs
from sam2oct.evaluation.thickness.fovea import check_fovea, find_fovea
from sam2oct.evaluation.thickness.geometry import Spacing, ThicknessError, laterality_of

RASTER = "raster"
LINE = "line"
CIRCLE = "circle"
RADIAL = "radial"
PATTERNS = (RASTER, LINE, CIRCLE, RADIAL)


@dataclass
class ThicknessReport:
    shape: tuple  # (N, H, W) of the label volume
    class_names: tuple
    spacing: Spacing
    laterality: str  # 'OD', 'OS', or '' where no grid needs it
    pattern: str  # one of PATTERNS
    maps: dict  # {layer or 'retina': [N, W] µm}
    valid: np.ndarray  # [N, W] bool: A-scans that hold retina
    fovea: tuple | None  # (bscan, column); None for a circle scan
    fovea_source: str  # 'given', 'found', 'given B-scan, found column', ... or 'none'
    etdrs: dict | None = None  # {layer: {sector: mean µm or None}}
    volume_mm3: dict | None = None
    coverage: dict | None = None
    ascans: dict | None = None  # {sector: A-scans measured in it}
    sectors: np.ndarray | None = field(default=None, repr=False)  # [N, W] index into SECTORS, -1 outside

    @property
    def layers(self) -> list:
        return list(self.maps)

    @property
    def has_grid(self) -> bool:
        return self.etdrs is not None

    @property
    def cst_um(self):
        return self.etdrs[columns.RETINA]["CSF"] if self.etdrs else None

    def as_json(self) -> dict:
        out = {
            "scan": self.pattern,
            "shape": {"bscans": self.shape[0], "height": self.shape[1], "width": self.shape[2]},
            "fovea": None if self.fovea is None else {"bscan": self.fovea[0], "column": self.fovea[1]},
            "fovea_source": self.fovea_source,
            "spacing_um": self.spacing.as_dict(),
            "laterality": self.laterality,
            "definition": columns.definition(self.class_names),
            "layers": self.layers,
            "etdrs": _rounded(self.etdrs),
            "cst_um": _rounded(self.cst_um),
            "volume_mm3": _rounded(self.volume_mm3, 6),
            "coverage": _rounded(self.coverage),
            "ascans": self.ascans,
        }
        if not self.has_grid:
            out["mean_um"] = {name: _mean(m[self.valid]) for name, m in self.maps.items()}
        return out

    def csv_text(self) -> str:
        """The sectors' means, one row per layer (a grid); else the profile (see profile.py)."""
        if not self.has_grid:
            from sam2oct.evaluation.thickness.profile import profile_csv
            return profile_csv(self)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["layer", *etdrs.SECTORS])
        for layer, sectors in self.etdrs.items():
            writer.writerow([layer, *("" if sectors[s] is None else f"{sectors[s]:.3f}" for s in etdrs.SECTORS)])
        return buf.getvalue()


def _mean(values):
    return round(float(values.mean()), 4) if values.size else None


def _rounded(value, digits=4):
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, digits)
    return value


def measure(labels, spacing, laterality, class_names, *, fovea_bscan=None, fovea_column=None,
            pattern: str | None = None) -> ThicknessReport:
    """Everything thickness reports for one label volume [N, H, W] (frame 0 the most superior)."""
    labels = columns.check_labels(labels, class_names)
    spacing = Spacing.of(spacing)
    n, h, w = labels.shape
    pattern = pattern or (RASTER if n > 1 else LINE)
    if pattern not in PATTERNS:
        raise ThicknessError(f"scan pattern {pattern!r} is not one of {', '.join(PATTERNS)}")
    grid = pattern == RASTER
    if grid and n < 2:
        raise ThicknessError("an ETDRS grid needs a raster of several B-scans; this volume has one")
    if pattern == LINE and n > 1:
        raise ThicknessError(f"a line scan is one B-scan; this volume has {n} (a raster of them gets the grid)",
                             option="pattern")
    if grid and spacing.bscan <= 0:
        raise ThicknessError("an ETDRS grid needs the distance between B-scans; it is 0", option="spacing")
    lat = laterality_of(laterality) if (grid or laterality) else ""
    maps = columns.thickness_maps(labels, class_names, spacing.axial)
    valid = maps[columns.RETINA] > 0
    report = ThicknessReport((n, h, w), tuple(str(c) for c in class_names), spacing, lat, pattern, maps, valid,
                             fovea=None, fovea_source="none")
    if pattern == CIRCLE:
        return report  # around the optic disc: no fovea
    given = check_fovea((fovea_bscan, fovea_column), (n, w))
    if pattern == RADIAL:
        # Every B-scan crosses the fovea at its centre: the column is looked for along one B-scan
        # (the first unless given), never smoothed across B-scans at other angles.
        b = given[0] or 0
        column = find_fovea(maps[columns.RETINA][b:b + 1], valid[b:b + 1], spacing, bscan=0, column=given[1])[1]
        fovea = (b, column)
    else:
        fovea = find_fovea(maps[columns.RETINA], valid, spacing, bscan=given[0], column=given[1])
    report.fovea = fovea
    report.fovea_source = {(True, True): "given", (False, False): "found",
                           (True, False): "given B-scan, found column",
                           (False, True): "found B-scan, given column"}[(given[0] is not None, given[1] is not None)]
    if grid:
        _score_grid(report)
    return report


def _score_grid(report: ThicknessReport) -> None:
    n, _, w = report.shape
    index = etdrs.sector_index((n, w), report.fovea, report.spacing, report.laterality)
    report.sectors = index
    report.etdrs = {name: etdrs.sector_means(m, index, report.valid) for name, m in report.maps.items()}
    report.coverage = etdrs.coverage(report.valid, report.fovea, report.spacing, report.laterality)
    report.ascans = {s: int(((index == k) & report.valid).sum()) for k, s in enumerate(etdrs.SECTORS)}
    report.volume_mm3 = {}
    for name, sectors in report.etdrs.items():
        # As devices report it: the sector's mean thickness over the sector's whole area.
        vols = {s: None if sectors[s] is None else sectors[s] * 1e-3 * etdrs.sector_area_mm2(s)
                for s in etdrs.SECTORS}
        vols["total"] = None if None in vols.values() else sum(vols.values())
        report.volume_mm3[name] = vols
