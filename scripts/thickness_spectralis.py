"""Thickness on the real Spectralis line scan: the device's ILM-BM profile against ours.

    python scripts/thickness_spectralis.py [--vol ../shared/samples/spectralis-vol/Willis_B_716_0.vol] \
        [--work out/thickness-spectralis] [--figure docs/img/thickness_spectralis_line.png]

What "ours" is here, honestly: there are no real weights on this machine, so the label map is
built from the device's own lines (HEYEX's automatic ILM and BM in the .vol), then goes the way
an annotator's corrected task would: written as a "CVAT for images 1.1" bundle (the B-scan as
bscan_000.png, one class ILM-BM as polygons traced with sam2oct's tracer, and a volume.json with
the file's spacing, laterality and pattern), zipped, and read back by
`python -m sam2oct thickness`. So the figure checks the pipeline (export reader, rasteriser,
per-A-scan thickness, spacing, fovea), not a model: the two profiles can differ only by the
whole-pixel quantisation of the label map (the device's lines are sub-pixel).

A row r is inside the retina when ILM <= r < BM (HEYEX heights are row positions from the top,
the pixel centre at r), as in scripts/make_spectralis_cvat.py. Columns where the device has no
BM (the optic disc side of this scan) are left unlabelled, so they have no thickness either.
"""

import argparse
import csv
import json
import sys
import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ("background", "ILM-BM")
ZIP_TIME = (2026, 12, 1, 0, 0, 0)


def read_vol(path: Path):
    """(8-bit B-scan [H, W], {'ILM', 'BM': [W] rows, NaN where absent}, spacing µm, laterality)."""
    import eyepy

    ev = eyepy.import_heyex_vol(str(path))
    if ev.data.shape[0] != 1:
        raise SystemExit(f"{path}: {ev.data.shape[0]} B-scans; this script is for a line scan")
    lines = {name: np.asarray(ev.layers[name].data[0], dtype=np.float64) for name in ("ILM", "BM")}
    spacing = (ev.meta["scale_y"] * 1000.0, ev.meta["scale_x"] * 1000.0, 0.0)
    return np.asarray(ev.data[0], dtype=np.uint8), lines, spacing, str(ev.meta["laterality"])


def label_map(lines: dict, height: int) -> np.ndarray:
    ilm, bm = lines["ILM"], lines["BM"]
    rows = np.arange(height, dtype=np.float64)[:, None]
    inside = (rows >= ilm[None]) & (rows < bm[None]) & np.isfinite(ilm + bm)[None]
    return inside.astype(np.uint8)


def write_bundle(zip_path: Path, bscan: np.ndarray, labels: np.ndarray, spacing, laterality: str) -> None:
    """A cvat-task-like bundle, zipped: annotations.xml + images/bscan_000.png + volume.json."""
    from sam2oct.geometry.polygons import label_map_to_shapes

    h, w = bscan.shape
    shapes = label_map_to_shapes(labels, CLASSES, tolerance=0, min_area=0)
    polygons = "".join(
        f'<polygon label={quoteattr(s["label"])} source="manual" occluded="0" '
        f'points="{";".join(f"{x:.2f},{y:.2f}" for x, y in s["points"])}" z_order="0"></polygon>'
        for s in shapes)
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><task><id>1</id>'
           f'<name>{zip_path.stem}</name><size>1</size></task></meta>'
           f'<image id="0" name="bscan_000.png" width="{w}" height="{h}">{polygons}</image></annotations>\n')
    png = zip_path.with_suffix(".png")
    Image.fromarray(bscan).save(png)
    volume = {"spacing_um": list(spacing), "laterality": laterality, "scan_pattern": "line",
              "class_names": list(CLASSES), "source": "Willis_B_716_0.vol"}
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (("annotations.xml", xml.encode()), ("images/bscan_000.png", png.read_bytes()),
                           ("volume.json", json.dumps(volume, indent=1).encode())):
            zf.writestr(zipfile.ZipInfo(name, ZIP_TIME), data)
    png.unlink()


def run_thickness(bundle: Path, work: Path) -> tuple:
    """`python -m sam2oct thickness BUNDLE --json --csv` in this process; (report, profile rows)."""
    from sam2oct.cli import main

    report_path, csv_path = work / "thickness.json", work / "profile.csv"
    status = main(["thickness", str(bundle), "--json", str(report_path), "--csv", str(csv_path)])
    if status != 0:
        raise SystemExit(f"thickness exited with {status}")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads(report_path.read_text()), rows


def figure(path: Path, bscan, lines, device_um, ours_um, positions, report) -> None:
    from sam2oct.evaluation.thickness.outputs import atomic_write, new_figure, png_bytes

    fig = new_figure(9.0, 7.6)
    top, middle, bottom = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1.25, 1.25, 0.7]}, sharex=False)
    h, w = bscan.shape
    lat = report["spacing_um"]["lateral"] * 1e-3
    x0 = -report["fovea"]["column"] * lat
    extent = (x0 - 0.5 * lat, x0 + (w - 0.5) * lat, h - 0.5, -0.5)
    top.imshow(bscan, cmap="gray", extent=extent, aspect="auto", interpolation="nearest")
    for name, colour in (("ILM", "#ffd000"), ("BM", "#00c8ff")):
        top.plot(positions, lines[name], color=colour, linewidth=1.0, label=f"device {name}")
    finite = np.isfinite(lines["ILM"] + lines["BM"])
    top.set_ylim(min(h - 0.5, np.nanmax(lines["BM"]) + 60), max(-0.5, np.nanmin(lines["ILM"]) - 60))
    top.set_ylabel("row (px)")
    top.legend(loc="lower left", fontsize=8)
    top.set_title(f"Spectralis line scan Willis_B_716_0 ({report['laterality']}), "
                  f"{report['spacing_um']['lateral']:.2f} µm/A-scan, {report['spacing_um']['axial']:.2f} µm/px",
                  fontsize=10)
    middle.plot(positions, device_um, color="crimson", linewidth=2.2, label="device ILM-BM (HEYEX lines)")
    middle.plot(positions, ours_um, color="black", linewidth=1.0, label="ours: thickness of the CVAT bundle")
    middle.set_ylabel("ILM-BM thickness (µm)")
    middle.legend(loc="lower right", fontsize=8)
    middle.grid(alpha=0.3)
    diff = ours_um - device_um
    bottom.plot(positions, diff, color="#444444", linewidth=0.8)
    bottom.axhline(0, color="crimson", linewidth=0.8)
    bottom.set_ylabel("ours - device (µm)")
    bottom.set_xlabel("position from the fovea (mm)")
    bottom.grid(alpha=0.3)
    for ax in (top, middle, bottom):
        ax.set_xlim(positions[finite][0] - 0.1, positions[finite][-1] + 0.1)
        ax.axvline(0, color="#888888", linewidth=0.6, linestyle=":")
    fig.tight_layout()
    atomic_write(path, png_bytes(fig))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vol", type=Path, default=next(
        (p for p in (ROOT / "tests/data/spectralis-vol", ROOT.parent / "shared/samples/spectralis-vol")
         if (p / "Willis_B_716_0.vol").exists()), ROOT / "tests/data/spectralis-vol") / "Willis_B_716_0.vol")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "thickness-spectralis")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "img" / "thickness_spectralis_line.png")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.figure.parent.mkdir(parents=True, exist_ok=True)

    bscan, lines, spacing, laterality = read_vol(args.vol)
    bundle = args.work / "Willis_B_716_0_bundle.zip"
    write_bundle(bundle, bscan, label_map(lines, bscan.shape[0]), spacing, laterality)
    report, rows = run_thickness(bundle, args.work)

    device = (lines["BM"] - lines["ILM"]) * spacing[0]
    ours = np.array([float(r["retina"]) if r["retina"] else np.nan for r in rows])
    positions = np.array([float(r["position_mm"]) for r in rows])
    both = np.isfinite(device) & np.isfinite(ours)
    diff = ours[both] - device[both]
    figure(args.figure, bscan, lines, device, ours, positions, report)
    centre = both & (np.abs(positions) < 0.5)
    print(f"{args.vol.name}: {laterality}, {bscan.shape[1]} A-scans, axial {spacing[0]:.4f} µm/px, "
          f"lateral {spacing[1]:.4f} µm; fovea found at column {report['fovea']['column']}")
    print(f"A-scans with both profiles: {both.sum()} of {len(device)}")
    print(f"ours - device: mean {diff.mean():+.2f} µm, mean |.| {np.abs(diff).mean():.2f} µm, "
          f"max |.| {np.abs(diff).max():.2f} µm (one pixel = {spacing[0]:.2f} µm)")
    print(f"central 1 mm mean: device {device[centre].mean():.1f} µm, ours {ours[centre].mean():.1f} µm")
    print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
