"""Shared by the thickness tests: an independent ETDRS scoring and a CVAT export writer.

The scoring is written apart from sam2oct.evaluation.thickness: thickness per A-scan from the
synthetic volume's analytic boundaries (pixel-centre rule), sectors from a per-A-scan loop on
angles (atan2) and radii.
"""

import io
import math
import zipfile

import numpy as np
from cvat_sdk.masks import encode_mask
from PIL import Image

from sam2oct.geometry.polygons import label_map_to_shapes

SECTORS = ["CSF", "SIM", "NIM", "IIM", "TIM", "SOM", "NOM", "IOM", "TOM"]


def pixel_counts_from_boundaries(bounds, height):
    """[K, N, W] pixels per layer: rows whose centre r + 0.5 lies in [top, bottom)."""
    edges = np.ceil(np.clip(bounds, 0, height) - 0.5)  # first row whose centre is at or below the edge
    return np.diff(edges, axis=0)


def independent_etdrs(thickness_by_layer, fovea, spacing, eye):
    """{layer: {sector: mean}} by looping over A-scans with explicit polar geometry."""
    fb, fc = fovea
    axial, lateral, between = spacing
    n, w = next(iter(thickness_by_layer.values())).shape
    sums = {name: {s: 0.0 for s in SECTORS} for name in thickness_by_layer}
    counts = {s: 0 for s in SECTORS}
    retina = thickness_by_layer.get("retina")
    for b in range(n):
        for c in range(w):
            if retina is not None and retina[b, c] == 0:
                continue  # no retina in this A-scan: not measured (not covered), left out of the means
            x_mm = (c - fc) * lateral / 1000.0
            y_mm = (fb - b) * between / 1000.0  # superior (earlier frames) positive
            r = math.hypot(x_mm, y_mm)
            if r >= 3.0:
                continue
            if r < 0.5:
                sector = "CSF"
            else:
                ring = "IM" if r < 1.5 else "OM"
                angle = math.degrees(math.atan2(y_mm, x_mm))  # 0 = +x, 90 = superior
                if 45.0 <= angle <= 135.0:
                    quadrant = "S"
                elif -135.0 <= angle <= -45.0:
                    quadrant = "I"
                else:
                    towards_plus_x = -45.0 < angle < 45.0
                    # right eye: the disc (nasal) is at +x; left eye: at -x
                    quadrant = "N" if towards_plus_x == (eye == "OD") else "T"
                sector = quadrant + ring
            counts[sector] += 1
            for name, t in thickness_by_layer.items():
                sums[name][sector] += t[b, c]
    return {name: {s: sums[name][s] / counts[s] if counts[s] else None for s in SECTORS} for name in sums}


def analytic_thickness(vol):
    counts = pixel_counts_from_boundaries(vol.boundaries, vol.labels.shape[1]) * vol.spacing.axial
    layers = {name: counts[i] for i, name in enumerate(vol.class_names[1:])}
    layers["retina"] = counts.sum(axis=0)
    return layers


def _polygon_xml(label, points):
    pts = ";".join(f"{x:.2f},{y:.2f}" for x, y in points)
    return f'<polygon label="{label}" source="manual" occluded="0" points="{pts}" z_order="0"></polygon>'


def _mask_xml(label, mask):
    *runs, x1, y1, x2, y2 = encode_mask(np.asarray(mask, dtype=bool))  # CVAT's own encoder
    return (f'<mask label="{label}" source="manual" occluded="0" rle="{", ".join(map(str, runs))}" '
            f'left="{x1}" top="{y1}" width="{x2 - x1 + 1}" height="{y2 - y1 + 1}" z_order="0"></mask>')


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def cvat_export(labels, class_names, *, shapes="polygons", names=None, extra=None):
    """{member: bytes} of a "CVAT for images 1.1" task export of a label volume, one frame per
    B-scan (bscan_000.png, ...): each layer as polygons traced from the label map, as masks, or
    (shapes="mixed") alternating by layer. Frames whose labels are all background get no shape."""
    n, h, w = labels.shape
    names = names or [f"bscan_{i:03d}.png" for i in range(n)]
    body, members = [], {}
    for i, (name, frame) in enumerate(zip(names, labels)):
        xml = []
        if shapes in ("polygons", "mixed"):
            for shape in label_map_to_shapes(frame, class_names, tolerance=0, min_area=0):
                k = class_names.index(shape["label"])
                if shapes == "polygons" or k % 2:
                    xml.append(_polygon_xml(shape["label"], shape["points"]))
        if shapes in ("masks", "mixed"):
            for k in range(1, len(class_names)):
                if (shapes == "masks" or not k % 2) and (frame == k).any():
                    xml.append(_mask_xml(class_names[k], frame == k))
        body.append(f'<image id="{i}" name="{name}" width="{w}" height="{h}">{"".join(xml)}</image>')
        members[f"images/{name}"] = _png((frame.astype(np.int64) * 23) % 256)
    members["annotations.xml"] = (
        '<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version>'
        f'<meta><task><id>9</id></task></meta>{"".join(body)}</annotations>').encode()
    members.update(extra or {})
    return members


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_folder(path, members):
    for name, data in members.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path
