"""A minimal private stand-in for sam2oct.datasets / sam2oct.evaluate (branch `data`), same API.

Used only while those modules are not on this branch: install() puts it in sys.modules, and
does nothing once the real modules import. Reads plain folders (images/ + labels/) and CVAT
for images 1.1 zips with polygons; scores pooled IoU over the layer classes.
"""

import re
import sys
import types
import zipfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from sam2oct.errors import Sam2OctError
from sam2oct.images import read_image
from sam2oct.polygons import rasterize_shapes


class DatasetError(Sam2OctError):
    pass


@dataclass
class Sample:
    name: str
    gray: np.ndarray
    labels: np.ndarray
    volume: str | None


@dataclass
class Dataset:
    samples: list
    class_names: tuple
    skipped: dict = field(default_factory=dict)
    source: str = ""


def _volume(name):
    m = re.fullmatch(r"(.+)[_\-. ](\d+)", PurePosixPath(name).stem)
    return m.group(1) if m else None


def _index(class_names, label):
    if label not in class_names:
        raise DatasetError(f"unknown label {label!r}: the classes are {', '.join(class_names)}")
    return class_names.index(label)


def load_dataset(path, class_names, **_):
    path, class_names = Path(path), tuple(class_names)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    samples = []
    if path.is_dir():
        for image in sorted((path / "images").iterdir()):
            labels = np.asarray(Image.open(path / "labels" / f"{image.stem}.png"))
            if labels.max() >= len(class_names):
                raise DatasetError(f"{image.name}: class {labels.max()} but {len(class_names)} classes")
            samples.append(Sample(image.name, read_image(image.read_bytes()), labels.astype(np.uint8),
                                  _volume(image.name)))
        return Dataset(samples, class_names, {}, f"{path} (plain folder (images/ + labels/))")
    with zipfile.ZipFile(path) as zf:
        root = ET.fromstring(zf.read("annotations.xml"))
        for im in root.iter("image"):
            h, w = int(im.get("height")), int(im.get("width"))
            shapes = [{"label": p.get("label"), "points": [[float(v) for v in xy.split(",")]
                                                           for xy in p.get("points").split(";")]}
                      for p in im.iter("polygon")]
            ids = rasterize_shapes(shapes, (h, w))
            lut = np.array([0] + [_index(class_names, s["label"]) for s in shapes], dtype=np.uint8)
            gray = read_image(zf.read(f"images/{im.get('name')}"))
            samples.append(Sample(im.get("name"), gray, lut[ids], _volume(im.get("name"))))
    return Dataset(samples, class_names, {}, f"{path} (CVAT for images 1.1)")


def split_by_volume(dataset, val_fraction, seed=0):
    groups = {}
    for s in dataset.samples:
        groups.setdefault(s.volume or s.name, []).append(s)
    if len(groups) < 2:
        raise DatasetError("a split by volume needs two volumes at least")
    keys = [list(groups)[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    n_val = min(len(keys) - 1, max(1, round(val_fraction * len(keys))))
    val = [s for k in keys[:n_val] for s in groups[k]]
    train = [s for k in keys[n_val:] for s in groups[k]]
    return replace(dataset, samples=train), replace(dataset, samples=val)


def score(dataset, predict):
    k = len(dataset.class_names)
    inter, union = np.zeros(k), np.zeros(k)
    for s in dataset.samples:
        p = np.asarray(predict(s.gray))
        for c in range(k):
            inter[c] += np.sum((p == c) & (s.labels == c))
            union[c] += np.sum((p == c) | (s.labels == c))
    per_class = {n: {"iou": float(inter[c] / union[c]) if union[c] else None, "dice": None}
                 for c, n in enumerate(dataset.class_names)}
    layers = [v["iou"] for n, v in list(per_class.items())[1:] if v["iou"] is not None]
    return {"images": len(dataset.samples), "classes": list(dataset.class_names), "per_class": per_class,
            "mean_iou": float(np.mean(layers)) if layers else None, "mean_dice": None,
            "boundary_mae_px": None, "per_image": []}


def install():
    """Make `import sam2oct.datasets / sam2oct.evaluate` work; a no-op once the real ones exist."""
    try:
        import sam2oct.datasets  # noqa: F401
        import sam2oct.evaluate  # noqa: F401
        return
    except ImportError:
        pass
    import sam2oct

    ds = types.ModuleType("sam2oct.datasets")
    ds.__dict__.update(Sample=Sample, Dataset=Dataset, DatasetError=DatasetError, load_dataset=load_dataset,
                       split_by_volume=split_by_volume)
    ev = types.ModuleType("sam2oct.evaluate")
    ev.score = score
    sys.modules["sam2oct.datasets"], sys.modules["sam2oct.evaluate"] = ds, ev
    sam2oct.datasets, sam2oct.evaluate = ds, ev
