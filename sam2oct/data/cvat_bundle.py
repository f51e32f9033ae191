"""A segmented volume as what ``cvat-cli task create`` takes: one folder per volume.

    <folder>/bscan_000.png ...   the B-scans as 8-bit PNGs, in the Volume's frame order
    <folder>/annotations.xml     "CVAT for images 1.1": per B-scan one mask per layer (CVAT's
                                 run lengths over the layer's box), or the layer polygons
    <folder>/labels.json         the task's labels, for ``cvat-cli task create --labels``
    <folder>/volume.json         spacing, laterality, scan pattern, source file name and sha256,
                                 frame files (so thickness can be computed from a corrected export)

The folder is written under a temporary name beside it and renamed into place when complete.
sam2oct's dataset loader reads it back (``evaluate FOLDER``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image

ANNOTATION_FORMAT = "CVAT 1.1"  # cvat-cli / cvat-sdk name of "CVAT for images 1.1"
VOLUME_JSON = "volume.json"
LABELS_JSON = "labels.json"
ANNOTATIONS_XML = "annotations.xml"


def frame_names(n: int) -> list:
    digits = max(3, len(str(n - 1)))
    return [f"bscan_{i:0{digits}d}.png" for i in range(n)]


def mask_rle(mask: np.ndarray):
    """CVAT's XML mask encoding of a non-empty 2-D mask: (runs, left, top, width, height).

    The runs alternate unset/set pixels over the mask's bounding box, row by row, starting
    with the (possibly zero) count of unset pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        raise ValueError("empty mask")
    top, left = int(rows[0]), int(cols[0])
    box = mask[top:rows[-1] + 1, left:cols[-1] + 1].ravel()
    change = np.flatnonzero(box[1:] != box[:-1]) + 1
    edges = np.concatenate(([0], change, [box.size]))
    runs = np.diff(edges).tolist()
    if box[0]:
        runs.insert(0, 0)
    return runs, left, top, int(cols[-1] - left + 1), int(rows[-1] - top + 1)


def labels_spec(class_names, colours=None) -> list:
    """The layers (not the background) as cvat-cli's --labels / cvat-sdk's labels take them;
    ``colours[k]`` ('#rrggbb') for class k where given, else CVAT picks one."""
    spec = []
    for k, name in enumerate(class_names):
        if k > 0:
            label = {"name": name, "type": "any", "attributes": []}
            if colours:
                label["color"] = colours[k % len(colours)]
            spec.append(label)
    return spec


def annotations_xml(frames, class_names, task_name: str, colours=None) -> bytes:
    """``frames``: [(file name, width, height, label map or None, polygon shapes or None)]."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(len(frames))
    labels = ET.SubElement(task, "labels")
    for spec in labels_spec(class_names, colours):
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = spec["name"]
        if "color" in spec:
            ET.SubElement(label, "color").text = spec["color"]
        ET.SubElement(label, "type").text = spec["type"]
        ET.SubElement(label, "attributes")
    for i, (name, width, height, label_map, shapes) in enumerate(frames):
        image = ET.SubElement(root, "image", id=str(i), name=name, width=str(width), height=str(height))
        common = {"source": "auto", "occluded": "0", "z_order": "0"}
        if shapes is not None:
            for shape in shapes:
                points = ";".join(f"{x:.2f},{y:.2f}" for x, y in np.asarray(shape["points"]).reshape(-1, 2))
                ET.SubElement(image, "polygon", label=shape["label"], points=points, **common)
            continue
        for k in np.unique(label_map):
            if k == 0:
                continue
            runs, left, top, w, h = mask_rle(label_map == k)
            ET.SubElement(image, "mask", label=class_names[int(k)], rle=", ".join(map(str, runs)),
                          left=str(left), top=str(top), width=str(w), height=str(h), **common)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def write_bundle(folder, volume, label_maps: np.ndarray, class_names, *, shapes=None, colours=None,
                 extra_meta=None) -> Path:
    """Write one volume's bundle into ``folder`` (which must not exist yet).

    ``label_maps`` [N, H, W] class indices; ``shapes``: per frame the polygon shapes to write
    instead of masks; ``colours`` per class ('#rrggbb'); ``extra_meta`` is added to volume.json.
    """
    folder = Path(folder)
    n, h, w = volume.bscans.shape
    if label_maps.shape != (n, h, w):
        raise ValueError(f"label maps {label_maps.shape} do not match the volume {volume.bscans.shape}")
    names = frame_names(n)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        for name, frame in zip(names, volume.bscans):
            Image.fromarray(frame).save(tmp / name)
        frames = [(name, w, h, label_maps[i], None if shapes is None else shapes[i]) for i, name in enumerate(names)]
        (tmp / ANNOTATIONS_XML).write_bytes(annotations_xml(frames, list(class_names), folder.name, colours))
        (tmp / LABELS_JSON).write_text(json.dumps(labels_spec(class_names, colours), indent=1))
        meta = {**volume.meta(), "frames": names, "class_names": list(class_names),
                "annotation_format": ANNOTATION_FORMAT, **(extra_meta or {})}
        (tmp / VOLUME_JSON).write_text(json.dumps(meta, indent=1, allow_nan=False))
        os.rename(tmp, folder)  # fails, leaving nothing, if folder appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_volume_json(folder) -> dict:
    return json.loads((Path(folder) / VOLUME_JSON).read_text())
