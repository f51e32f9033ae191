"""Annotated B-scans: the types every reader fills, and what readers share."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import rasterio.features
import shapely
from PIL import Image

from sam2oct.errors import RequestError, Sam2OctError
from sam2oct.geometry.images import read_image
from sam2oct.geometry.masks import rle_to_mask

FORMAT_CVAT = "CVAT for images 1.1"
FORMAT_SEGMENTATION_MASK = "Segmentation mask 1.1"
FORMAT_PLAIN = "plain folder (images/ + labels/)"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# CVAT shapes that cover no area, or that a layer map cannot use; counted in Dataset.skipped.
IGNORED_SHAPES = ("box", "polyline", "points", "ellipse", "cuboid", "skeleton", "tag")


class DatasetError(Sam2OctError):
    """An export or folder that cannot be read as annotated B-scans; the message names what and where."""


@dataclass
class Sample:
    name: str  # file name as in the export: the path inside images/ (or JPEGImages/)
    gray: np.ndarray  # float32 [H, W] in [0, 1], read by sam2oct.geometry.images.read_image
    labels: np.ndarray  # [H, W] class indices: uint8, uint16 with more than 256 classes
    volume: str | None  # volume/series id when the file name shows one, else None


@dataclass
class Dataset:
    samples: list
    class_names: tuple  # the classes the labels index, background first
    skipped: dict = field(default_factory=dict)  # what was ignored: {"frames without shapes": n, "box": n, ...}
    source: str = ""  # what was read, in which format

    def __len__(self):
        return len(self.samples)


def volume_of(name: str) -> str | None:
    """The volume a B-scan file belongs to, from its name: its folder (``<vol>/<frame>.png``) or
    the part before a final number (``<vol>_<nnn>.png``, also ``-``, ``.`` or a space); else None."""
    path = PurePosixPath(name)
    if path.parent != PurePosixPath("."):
        return str(path.parent)
    match = re.fullmatch(r"(.+)[_\-. ](\d+)", path.stem)
    return match.group(1) if match else None


def rasterize(shapes, height, width, class_names, *, _label_of=None) -> np.ndarray:
    """Paint CVAT shapes into a label map of class indices (0 where none is).

    ``shapes``: dicts with ``label``, ``type`` ``"polygon"`` (``points`` as ``[[x, y], ...]`` or
    flat) or ``"mask"`` (``points``: CVAT run lengths + inclusive box), optional ``z_order``.
    Painted by ascending ``z_order``, then list order; a polygon takes the pixels whose centre it
    holds (GDAL's rule, ``all_touched=False``), a mask its set pixels.
    """
    label_of = _label_of or LabelIndex(tuple(class_names)).index
    labels = np.zeros((height, width), dtype=label_dtype(len(class_names)))
    order = sorted(range(len(shapes)), key=lambda i: (int(shapes[i].get("z_order", 0)), i))
    batch = []  # consecutive polygons go to GDAL in one call (it paints them in order)

    def flush():
        if batch:
            rasterio.features.rasterize(batch, out=labels, all_touched=False)
            batch.clear()

    for i in order:
        shape = shapes[i]
        k = label_of(shape["label"])
        if shape["type"] == "polygon":
            xy = np.asarray(shape["points"], dtype=np.float64).reshape(-1, 2)
            if len(xy) >= 3:
                batch.append((shapely.Polygon(xy), k))
        elif shape["type"] == "mask":
            flush()
            labels[rle_to_mask(shape["points"], height, width)] = k
        else:
            raise ValueError(f"cannot rasterize a {shape['type']!r} shape")
    flush()
    return labels


# ---------------------------------------------------------------------------------------------
# classes


class LabelIndex:
    """Export label names -> class index: the class names, ``OCT_Object_<k>``, or ``background``."""

    def __init__(self, class_names):
        self.class_names = class_names
        self._index = {name: k for k, name in enumerate(class_names)}
        self._index.setdefault("background", 0)
        self._index.update({f"OCT_Object_{k}": k for k in range(len(class_names))})

    def index(self, name, where=""):
        try:
            return self._index[name]
        except KeyError:
            close = [n for n in self._index if n.lower() == str(name).lower()]
            raise DatasetError(
                f"unknown label {name!r}{f' ({where})' if where else ''}"
                f"{f' (did you mean {close[0]!r}?)' if close else ''}: the classes are "
                f"{', '.join(self.class_names)} (or OCT_Object_<k>, k = 0..{len(self.class_names) - 1})",
                option="class_names") from None


def label_dtype(n_classes):
    """The smallest unsigned type that holds class indices 0..n_classes-1 (GDAL rasterizes into it)."""
    n_classes = int(n_classes)
    if not 1 <= n_classes <= 2**32:
        raise ValueError(f"a label map holds 1 to {2**32} classes, not {n_classes}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_classes - 1 <= np.iinfo(dtype).max:
            return dtype


@dataclass
class ReadContext:
    tree: object  # a sam2oct.data.archive.Tree
    prefix: str
    labels: LabelIndex
    max_pixels: int
    skipped: dict = field(default_factory=dict)
    project: bool = False

    def skip(self, what, n=1):
        self.skipped[what] = self.skipped.get(what, 0) + n

    def read_gray(self, name):
        data = self.tree.read(self.prefix + name)
        try:
            return read_image(data, self.max_pixels)
        except RequestError as exc:
            raise DatasetError(f"{self.tree.label}: {name}: {exc}") from exc

    def read_png(self, name):
        data = self.tree.read(self.prefix + name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                if im.size[0] * im.size[1] > self.max_pixels:
                    raise DatasetError(f"{self.tree.label}: {name} is {im.size[0]}x{im.size[1]}, over "
                                       f"the limit of {self.max_pixels} pixels")
                im.load()
            return im
        except DatasetError:
            raise
        except Exception as exc:  # PIL raises many types on malformed files
            raise DatasetError(f"{self.tree.label}: {name} is not a decodable PNG: {exc}") from exc

    def members(self, folder):
        """Names (without the prefix) of the files under ``folder/``."""
        start = self.prefix + folder + "/"
        return sorted(n[len(self.prefix):] for n in self.tree.sizes if n.startswith(start))


def describe_skipped(skipped):
    return ", ".join(f"{v} {k}" for k, v in skipped.items())


def check_size(ctx, name, gray, labels, label_file):
    if gray.shape != labels.shape:
        raise DatasetError(
            f"{ctx.tree.label}: {name} is {gray.shape[1]}x{gray.shape[0]} but {label_file} says "
            f"{labels.shape[1]}x{labels.shape[0]}")
