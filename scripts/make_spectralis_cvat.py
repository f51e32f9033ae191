"""Build a "CVAT for images 1.1" export of real Spectralis B-scans from the device's layer lines.

    python scripts/make_spectralis_cvat.py [--src /work/shared/samples/spectralis] \
        [--out tests/data/spectralis/spectralis_layers_cvat_for_images_1.1.zip]

Source: the Heidelberg Spectralis B-scans in the shared samples (MIT, see LICENSE.txt beside the
output) with the device's automatic segmentation (HEYEX) per A-scan column: ILM, RNFL (the
bottom of the nerve fibre layer) and BM (Bruch's membrane). Each column is labelled

    background  above the ILM
    NFL         ILM .. RNFL line
    GCL-BM      RNFL line .. BM (the rest of the retina)
    below-BM    below BM (choroid, sclera)

A pixel row r belongs below a line at height h when r >= h. Only B-scans with all three lines
are used (Willis_B_716_0 has no RNFL line, so its NFL/GCL-BM split is unknown: it is left out
rather than labelled wrongly), and each is cropped to the columns where all three lines exist.
The label maps become polygons with sam2oct.geometry.polygons.label_map_to_shapes (they tile the image),
written in the layout CVAT itself exports (annotations.xml + images/, stored uncompressed), so
the file is read by the same loader as a real export. The output is the same bytes on every run
of the same code (another version of sam2oct.geometry.polygons may place polygon vertices differently).
"""

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2oct.geometry.polygons import label_map_to_shapes  # noqa: E402

SCANS = ("Willis_B_716_2", "Willis_B_716_4", "valid")
CLASSES = ("background", "NFL", "GCL-BM", "below-BM")
LINES = ("ILM", "RNFL", "BM")
COLOURS = {"NFL": "#ff0000", "GCL-BM": "#00ff00", "below-BM": "#0000ff"}
STAMP = "2026-12-01 00:00:00.000000+00:00"  # fixed, so the export is reproducible
ZIP_TIME = (2026, 12, 1, 0, 0, 0)


def label_map_from_lines(heights: dict, height: int) -> tuple[np.ndarray, slice]:
    """Label map of the columns where every line exists, and that column range."""
    lines = np.array([[np.nan if v is None else v for v in heights[name]] for name in LINES], dtype=np.float64)
    ok = ~np.isnan(lines).any(axis=0)
    cols = np.flatnonzero(ok)
    if not len(cols) or not ok[cols[0]:cols[-1] + 1].all():
        raise ValueError("the lines do not cover one contiguous run of columns")
    span = slice(int(cols[0]), int(cols[-1]) + 1)
    lines = lines[:, span]
    # The device's lines may cross by a rounding error (RNFL 0.001 px above the ILM): keep them ordered.
    lines = np.maximum.accumulate(lines, axis=0)
    rows = np.arange(height, dtype=np.float64)[:, None]
    return (rows[None] >= lines[:, None, :]).sum(axis=0).astype(np.uint8), span


def annotations_xml(images: list) -> str:
    labels = "".join(
        f"        <label>\n          <name>{name}</name>\n          <color>{COLOURS[name]}</color>\n"
        f"          <type>any</type>\n          <attributes>\n          </attributes>\n        </label>\n"
        for name in CLASSES[1:])
    head = (
        '<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n  <meta>\n    <task>\n'
        f"      <id>1</id>\n      <name>spectralis-heyex-layers</name>\n      <size>{len(images)}</size>\n"
        "      <mode>annotation</mode>\n      <overlap>0</overlap>\n      <bugtracker></bugtracker>\n"
        f"      <created>{STAMP}</created>\n      <updated>{STAMP}</updated>\n      <subset>default</subset>\n"
        f"      <start_frame>0</start_frame>\n      <stop_frame>{len(images) - 1}</stop_frame>\n"
        "      <frame_filter></frame_filter>\n      <segments>\n        <segment>\n          <id>1</id>\n"
        f"          <start>0</start>\n          <stop>{len(images) - 1}</stop>\n"
        "          <url>http://127.0.0.1:8080/api/jobs/1</url>\n        </segment>\n      </segments>\n"
        "      <owner>\n        <username>admin</username>\n        <email>admin@example.com</email>\n"
        f"      </owner>\n      <assignee></assignee>\n      <labels>\n{labels}      </labels>\n    </task>\n"
        f"    <dumped>{STAMP}</dumped>\n  </meta>\n")
    body = []
    for i, (name, width, height, shapes) in enumerate(images):
        body.append(f'  <image id="{i}" name={quoteattr(name)} width="{width}" height="{height}">\n')
        for s in shapes:
            points = ";".join(f"{x:.2f},{y:.2f}" for x, y in s["points"])
            body.append(f'    <polygon label={quoteattr(s["label"])} source="manual" occluded="0" '
                        f'points="{points}" z_order="0">\n    </polygon>\n')
        body.append("  </image>\n")
    return head + "".join(body) + "</annotations>\n"


def build(src: Path) -> tuple[str, dict]:
    images, files = [], {}
    for scan in SCANS:
        meta = json.loads((src / f"{scan}_layers.json").read_text())
        with Image.open(src / f"{scan}_bscan_u8.png") as im:
            pixels = np.asarray(im.convert("L"))
        labels, span = label_map_from_lines(meta["layer_heights_px"], pixels.shape[0])
        crop = np.ascontiguousarray(pixels[:, span])
        name = f"{scan}.png"
        shapes = label_map_to_shapes(labels, CLASSES, tolerance=1.0, min_area=25)
        images.append((name, crop.shape[1], crop.shape[0], shapes))
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, "PNG", optimize=True)
        files[f"images/{name}"] = buf.getvalue()
    return annotations_xml(images), files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/work/shared/samples/spectralis"))
    parser.add_argument("--out", type=Path,
                        default=ROOT / "tests" / "data" / "spectralis" / "spectralis_layers_cvat_for_images_1.1.zip")
    args = parser.parse_args(argv)
    xml, files = build(args.src)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(args.out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in {"annotations.xml": xml.encode(), **files}.items():
            zf.writestr(zipfile.ZipInfo(name, ZIP_TIME), data)
    print(f"wrote {args.out}: {len(files)} B-scans, classes {', '.join(CLASSES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
