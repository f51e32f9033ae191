"""Annotated B-scans from CVAT exports and plain folders: grey frames with class-index label maps.

Three layouts are recognised, in a zip or an unpacked folder (format detected from the files):

- "CVAT for images 1.1" (task or project export): ``annotations.xml`` + ``images/``. Polygons
  and masks are painted by ascending ``z_order``, then document order; a polygon holds the pixels
  whose centre lies inside it (the inverse of :func:`sam2oct.geometry.polygons.label_map_to_shapes`).
- "Segmentation mask 1.1": ``labelmap.txt`` + ``SegmentationClass/*.png`` (+ ``JPEGImages/``).
- plain: ``images/`` + ``labels/`` PNGs of class indices with the same stem
  (optional ``classes.json`` naming the indices).

Archives are read member by member in memory, never extracted, with caps on member count and
on the bytes of each member and of all of them, so nothing is ever written anywhere.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import ParseError, XMLParser

import numpy as np
import rasterio.features
import shapely
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from sam2oct.errors import RequestError, Sam2OctError
from sam2oct.geometry.images import DEFAULT_MAX_PIXELS, read_image
from sam2oct.geometry.masks import rle_to_mask

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)

__all__ = ["Sample", "Dataset", "DatasetError", "load_dataset", "split_by_volume", "rasterize",
           "volume_of", "FORMAT_CVAT", "FORMAT_SEGMENTATION_MASK", "FORMAT_PLAIN"]

FORMAT_CVAT = "CVAT for images 1.1"
FORMAT_SEGMENTATION_MASK = "Segmentation mask 1.1"
FORMAT_PLAIN = "plain folder (images/ + labels/)"

DEFAULT_MAX_MEMBER_BYTES = 512 * 2**20
DEFAULT_MAX_TOTAL_BYTES = 8 * 2**30
DEFAULT_MAX_MEMBERS = 200_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# CVAT shapes that cover no area, or that a layer map cannot use; counted in Dataset.skipped.
_IGNORED_SHAPES = ("box", "polyline", "points", "ellipse", "cuboid", "skeleton", "tag")
_READ_CHUNK = 1 << 20


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


def load_dataset(path, class_names, *, max_member_bytes=DEFAULT_MAX_MEMBER_BYTES,
                 max_total_bytes=DEFAULT_MAX_TOTAL_BYTES, max_members=DEFAULT_MAX_MEMBERS,
                 max_pixels=DEFAULT_MAX_PIXELS) -> Dataset:
    """Read an export (zip or folder, or the ``annotations.xml`` of one) into a :class:`Dataset`.

    ``class_names`` are the model's classes in channel order (background first); export labels
    must be one of them, ``OCT_Object_<k>``, or ``background``. Raises :class:`DatasetError`.
    """
    class_names = tuple(class_names)
    if len(class_names) < 2:
        raise ValueError("class_names must hold the background and at least one layer")
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    limits = _Limits(max_member_bytes, max_total_bytes, max_members)
    if path.is_dir():
        tree = _DirTree(path, limits)
    elif zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        tree = _ZipTree(path, limits)
    elif path.suffix.lower() == ".xml":
        tree = _DirTree(path.parent, limits, only_xml=path.name)
    else:
        raise DatasetError(f"{path}: not a folder, a zip archive or an annotations.xml")
    with tree:
        reader, prefix = _detect(tree)
        ctx = _Context(tree, prefix, _Labels(class_names), max_pixels)
        samples = reader(ctx)
        kind = {_read_cvat: FORMAT_CVAT, _read_segmentation_mask: FORMAT_SEGMENTATION_MASK,
                _read_plain: FORMAT_PLAIN}[reader]
        if ctx.project:
            kind += " (project export)"
    if not samples:
        raise DatasetError(f"{path}: no annotated B-scans found ({kind}; skipped: {_describe(ctx.skipped) or 'nothing'})")
    return Dataset(samples, class_names, dict(ctx.skipped), f"{path} ({kind})")


def split_by_volume(dataset: Dataset, val_fraction: float, seed: int = 0):
    """(train, validation): whole volumes go to one side, about ``val_fraction`` of the B-scans to validation.

    B-scans with no volume in their name are each their own group. Needs two groups at least.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    groups = {}
    for sample in dataset.samples:
        groups.setdefault(sample.volume if sample.volume is not None else ("", sample.name), []).append(sample)
    if len(groups) < 2:
        raise DatasetError(
            f"all {len(dataset.samples)} B-scans belong to one volume ({next(iter(groups))!r}); "
            f"a split by volume needs two at least")
    keys = list(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    target = val_fraction * len(dataset.samples)
    val_keys, count = set(), 0
    for i in order:  # in random order, take a volume when it brings the count closer to the target
        size = len(groups[keys[i]])
        if abs(count + size - target) < abs(count - target) and len(val_keys) + 1 < len(keys):
            val_keys.add(keys[i])
            count += size
    if not val_keys:  # every volume overshoots: the one nearest the target
        val_keys.add(keys[min(order, key=lambda i: abs(len(groups[keys[i]]) - target))])
    train = [s for k in keys if k not in val_keys for s in groups[k]]
    val = [s for k in keys if k in val_keys for s in groups[k]]
    return (replace(dataset, samples=train, skipped=dict(dataset.skipped), source=f"{dataset.source}, training split"),
            replace(dataset, samples=val, skipped=dict(dataset.skipped), source=f"{dataset.source}, validation split"))


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
    label_of = _label_of or _Labels(tuple(class_names)).index
    labels = np.zeros((height, width), dtype=_label_dtype(len(class_names)))
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


class _Labels:
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


def _label_dtype(n_classes):
    return np.uint8 if n_classes <= 256 else np.uint16


# ---------------------------------------------------------------------------------------------
# reading files from a zip or a folder, safely


@dataclass
class _Limits:
    member_bytes: int
    total_bytes: int
    members: int
    read: int = 0


def _check_member_name(name, where):
    """Refuse absolute paths, drive letters, backslashes and '..' (zip-slip), wherever a name comes from."""
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or ":" in parts[0] or ".." in parts
            or "\x00" in name):
        raise DatasetError(f"{where}: unsafe path {name!r} (absolute, '..' or backslash); refusing it")


class _Tree:
    """Files of an export by posix path relative to its root."""

    label = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass

    def has(self, name):
        return name in self.sizes

    def _account(self, name, size):
        if size > self.limits.member_bytes:
            raise DatasetError(
                f"{self.label}: {name} is {size} bytes, over the limit of {self.limits.member_bytes} per file")
        if self.limits.read + size > self.limits.total_bytes:
            raise DatasetError(
                f"{self.label}: reading {name} would pass the limit of {self.limits.total_bytes} bytes in all")

    def read(self, name) -> bytes:
        if name not in self.sizes:
            raise DatasetError(f"{self.label}: {name} is missing")
        self._account(name, self.sizes[name])
        chunks, size = [], 0
        with self._open(name) as f:
            while chunk := f.read(_READ_CHUNK):
                size += len(chunk)
                # the size in a zip header or a stat can lie or change: enforce the caps on what is read
                self._account(name, size)
                chunks.append(chunk)
        self.limits.read += size
        return b"".join(chunks)


class _ZipTree(_Tree):
    def __init__(self, path, limits):
        self.label, self.limits = str(path), limits
        try:
            self.zf = zipfile.ZipFile(path)
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"{path}: not a readable zip archive: {exc}") from exc
        if len(infos) > limits.members:
            self.zf.close()
            raise DatasetError(f"{path}: holds {len(infos)} entries, over the limit of {limits.members}")
        self.sizes = {}
        for info in infos:
            _check_member_name(info.filename, f"{path}: archive member")
            if info.is_dir():
                continue
            if info.filename in self.sizes:
                raise DatasetError(f"{path}: archive holds {info.filename} twice")
            self.sizes[info.filename] = info.file_size
        self.infos = {i.filename: i for i in infos}

    def _open(self, name):
        try:
            return self.zf.open(self.infos[name])
        except (RuntimeError, NotImplementedError, zipfile.BadZipFile) as exc:  # encrypted, unknown compression
            raise DatasetError(f"{self.label}: cannot read {name}: {exc}") from exc

    def read(self, name):
        try:
            return super().read(name)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:  # bad CRC, truncated, zlib errors
            raise DatasetError(f"{self.label}: {name} is corrupt in the archive: {exc}") from exc

    def close(self):
        self.zf.close()


class _DirTree(_Tree):
    def __init__(self, root, limits, only_xml=None):
        self.root, self.label, self.limits = root.resolve(), str(root), limits
        self.sizes, self._paths = {}, {}
        if only_xml:  # an annotations.xml given by itself: its images lie beside it in images/
            self._add_file(only_xml, "annotations.xml")
            self._walk("images")
        else:
            self._walk("")

    def _walk(self, sub):
        top = self.root / sub
        for dirpath, dirnames, filenames in os.walk(top):  # does not follow links into other folders
            dirnames.sort()
            for fn in sorted(filenames):
                rel = Path(dirpath, fn).relative_to(self.root).as_posix()
                self._add_file(rel, rel)

    def _add_file(self, rel, as_name):
        if len(self.sizes) >= self.limits.members:
            raise DatasetError(f"{self.label}: holds more than {self.limits.members} files")
        try:
            st = (self.root / rel).stat()
        except OSError:
            return  # a dangling link
        if stat.S_ISREG(st.st_mode):
            self.sizes[as_name] = st.st_size
            self._paths[as_name] = rel

    def _open(self, name):
        full = (self.root / self._paths[name]).resolve()
        if not full.is_relative_to(self.root):
            raise DatasetError(f"{self.label}: {name} links outside the dataset folder; refusing it")
        return open(full, "rb")


# ---------------------------------------------------------------------------------------------
# format detection


def _detect(tree):
    """(reader, prefix): the format, and the folder inside the archive that holds it."""
    prefixes = [""]
    tops = {n.split("/", 1)[0] for n in tree.sizes if "/" in n}
    if len(tops) == 1 and not any("/" not in n for n in tree.sizes):
        prefixes.append(tops.pop() + "/")  # a zip of the export folder itself
    for prefix in prefixes:
        names = [n[len(prefix):] for n in tree.sizes if n.startswith(prefix)]
        if "annotations.xml" in names:
            return _read_cvat, prefix
        if "labelmap.txt" in names or any(n.startswith("SegmentationClass/") for n in names):
            return _read_segmentation_mask, prefix
        if any(n.startswith("labels/") for n in names) and any(n.startswith("images/") for n in names):
            return _read_plain, prefix
    raise DatasetError(
        f"{tree.label}: not an export this can read: expected annotations.xml + images/ "
        f"({FORMAT_CVAT}), labelmap.txt + SegmentationClass/ ({FORMAT_SEGMENTATION_MASK}) "
        f"or images/ + labels/ (class-index PNGs)")


@dataclass
class _Context:
    tree: _Tree
    prefix: str
    labels: _Labels
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


def _describe(skipped):
    return ", ".join(f"{v} {k}" for k, v in skipped.items())


def _check_size(ctx, name, gray, labels, label_file):
    if gray.shape != labels.shape:
        raise DatasetError(
            f"{ctx.tree.label}: {name} is {gray.shape[1]}x{gray.shape[0]} but {label_file} says "
            f"{labels.shape[1]}x{labels.shape[0]}")


# ---------------------------------------------------------------------------------------------
# CVAT for images 1.1


class _CvatXml:
    """Streaming target for ElementTree's parser: images and their direct child shapes."""

    def __init__(self, where):
        self.where = where
        self.stack = []
        self.images = []
        self.project = False

    def doctype(self, name, pubid, system):
        # CVAT writes none; a DTD is how entity-expansion and external-entity attacks start
        raise DatasetError(f"{self.where}: declares a DTD (<!DOCTYPE {name}>); refusing it (entity expansion)")

    def start(self, tag, attrib):
        depth = len(self.stack)
        self.stack.append(tag)
        if depth == 0 and tag != "annotations":
            raise DatasetError(f"{self.where}: root element is <{tag}>, not <annotations>")
        if depth == 1 and tag == "track":
            raise DatasetError(f"{self.where}: holds tracks: this is a 'CVAT for video 1.1' export; "
                               f"export the task as '{FORMAT_CVAT}'")
        if depth == 1 and tag == "image":
            self.images.append((dict(attrib), []))
        elif depth == 2 and self.stack[1] == "image":
            self.images[-1][1].append((tag, dict(attrib)))
        elif depth == 2 and tag == "project" and self.stack[1] == "meta":
            self.project = True

    def end(self, tag):
        self.stack.pop()

    def data(self, text):
        pass

    def close(self):
        return self


def _parse_cvat_xml(data, where):
    target = _CvatXml(where)
    parser = XMLParser(target=target)
    try:
        parser.feed(data)
        parser.close()
    except ParseError as exc:
        raise DatasetError(f"{where}: not well-formed XML: {exc}") from exc
    return target


def _int_attr(attrib, key, where):
    try:
        return int(attrib[key])
    except (KeyError, ValueError):
        raise DatasetError(f"{where}: missing or non-integer {key}={attrib.get(key)!r}") from None


def _cvat_shape(tag, attrib, where):
    """A <polygon> or <mask> as a rasterize() shape dict."""
    label = attrib.get("label")
    if label is None:
        raise DatasetError(f"{where}: <{tag}> has no label")
    z = attrib.get("z_order", "0")
    try:
        z_order = int(z)
    except ValueError:
        raise DatasetError(f"{where}: z_order={z!r} is not an integer") from None
    if tag == "polygon":
        try:
            points = [[float(v) for v in pair.split(",")] for pair in attrib["points"].split(";")]
            xy = np.array(points, dtype=np.float64)
            if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
                raise ValueError
        except (KeyError, ValueError):
            raise DatasetError(f"{where}: polygon points {attrib.get('points', '')[:80]!r} are not "
                               f"'x,y;x,y;...' numbers") from None
        return {"label": label, "type": "polygon", "points": xy, "z_order": z_order}
    try:
        runs = [int(v) for v in attrib["rle"].split(",")]
    except (KeyError, ValueError):
        raise DatasetError(f"{where}: mask rle {attrib.get('rle', '')[:80]!r} is not a list of integers") from None
    left, top = _int_attr(attrib, "left", where), _int_attr(attrib, "top", where)
    width, height = _int_attr(attrib, "width", where), _int_attr(attrib, "height", where)
    return {"label": label, "type": "mask", "z_order": z_order,
            "points": runs + [left, top, left + width - 1, top + height - 1]}


def _read_cvat(ctx):
    xml_name = ctx.prefix + "annotations.xml"
    where = f"{ctx.tree.label}: annotations.xml"
    doc = _parse_cvat_xml(ctx.tree.read(xml_name), where)
    ctx.project = doc.project
    images = ctx.members("images")
    by_stem = {}
    for n in images:  # video-task frames are named without their extension
        by_stem.setdefault(str(PurePosixPath(n).with_suffix("")), []).append(n)
    samples, seen = [], {}
    for attrib, children in doc.images:
        name = attrib.get("name", "")
        where_img = f"{where}, image {name!r}"
        _check_member_name(name, f"{where}: image name")
        shapes = []
        for i, (tag, shape_attrib) in enumerate(children):
            if tag in ("polygon", "mask"):
                shape = _cvat_shape(tag, shape_attrib, f"{where_img}, shape {i + 1}")
                ctx.labels.index(shape["label"], where_img)  # unknown labels fail before any pixel is read
                if shape["type"] == "polygon" and len(shape["points"]) < 3:
                    ctx.skip("polygons with fewer than 3 points")
                    continue
                shapes.append(shape)
            else:
                ctx.skip(tag if tag in _IGNORED_SHAPES else f"<{tag}>")
        if not shapes:
            ctx.skip("frames without shapes")
            continue
        subset = attrib.get("subset")
        file = _find_cvat_image(name, subset, images, by_stem)
        if file is None:
            expected = f"images/{subset}/{name}" if subset else f"images/{name}"
            raise DatasetError(
                f"{where_img}: the image is not in the export ({expected} is missing); export with "
                f"'Save images' ticked")
        if file in seen:
            raise DatasetError(f"{where}: images {seen[file]!r} and {name!r} both read {file}")
        seen[file] = name
        width, height = _int_attr(attrib, "width", where_img), _int_attr(attrib, "height", where_img)
        gray = ctx.read_gray(file)
        if gray.shape != (height, width):
            raise DatasetError(f"{ctx.tree.label}: {file} is {gray.shape[1]}x{gray.shape[0]}, but "
                               f"annotations.xml says {width}x{height}")
        try:
            labels = rasterize(shapes, height, width, ctx.labels.class_names,
                               _label_of=lambda n: ctx.labels.index(n, where_img))
        except RequestError as exc:  # a mask whose runs or box do not fit the image
            raise DatasetError(f"{where_img}: {exc}") from exc
        samples.append(Sample(file[len("images/"):], gray, labels, volume_of(name)))
    return samples


def _find_cvat_image(name, subset, images, by_stem):
    names = set(images)
    candidates = ([f"images/{subset}/{name}"] if subset else []) + [f"images/{name}"]
    for c in candidates:
        if c in names:
            return c
    if not PurePosixPath(name).suffix:
        for c in candidates:
            found = by_stem.get(c, [])
            if len(found) == 1:
                return found[0]
    return None


# ---------------------------------------------------------------------------------------------
# Segmentation mask 1.1


def _parse_labelmap(text, where):
    """labelmap.txt lines ``name:r,g,b:parts:actions`` -> [(name, (r, g, b))] in file order."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        try:
            rgb = tuple(int(v) for v in rest.split(":", 1)[0].split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except ValueError:
            raise DatasetError(f"{where}, line {number}: {line[:80]!r} is not 'name:r,g,b::'") from None
        entries.append((name, rgb))
    if not entries:
        raise DatasetError(f"{where}: names no labels")
    return entries


def _read_segmentation_mask(ctx):
    where = f"{ctx.tree.label}: labelmap.txt"
    if not ctx.tree.has(ctx.prefix + "labelmap.txt"):
        raise DatasetError(f"{ctx.tree.label}: a {FORMAT_SEGMENTATION_MASK} export without labelmap.txt; "
                           f"the colours cannot be matched to classes")
    try:
        text = ctx.tree.read(ctx.prefix + "labelmap.txt").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}: not UTF-8 text") from exc
    entries = _parse_labelmap(text, where)
    colour_code = {}  # r<<16 | g<<8 | b -> export label name
    for name, (r, g, b) in entries:
        code = r << 16 | g << 8 | b
        if colour_code.get(code, name) != name:
            raise DatasetError(f"{where}: labels {colour_code[code]!r} and {name!r} share the colour {r},{g},{b}")
        colour_code[code] = name
    images = ctx.members("JPEGImages")
    by_stem = {}
    for n in images:
        by_stem.setdefault(str(PurePosixPath(n[len("JPEGImages/"):]).with_suffix("")), []).append(n)
    samples = []
    for mask_file in ctx.members("SegmentationClass"):
        if not mask_file.lower().endswith(".png"):
            continue
        item = str(PurePosixPath(mask_file[len("SegmentationClass/"):]).with_suffix(""))
        im = ctx.read_png(mask_file)
        grey = im.mode in ("L", "I;16", "I")  # grey masks index labelmap lines (CVAT's import rule)
        if grey:
            codes = np.asarray(im, dtype=np.int64)
        else:
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
            codes = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
        used, index = np.unique(codes, return_inverse=True)
        index = index.reshape(codes.shape)
        names = []
        for code in used.tolist():
            if grey and code >= len(entries):
                raise DatasetError(f"{ctx.tree.label}: {mask_file} holds index {code}, but "
                                   f"labelmap.txt has {len(entries)} lines")
            if not grey and code not in colour_code:
                raise DatasetError(f"{ctx.tree.label}: {mask_file} has pixels of colour "
                                   f"{code >> 16},{code >> 8 & 255},{code & 255}, which labelmap.txt does not name")
            names.append(entries[code][0] if grey else colour_code[code])
        lookup = np.array([ctx.labels.index(n, f"labelmap.txt, used in {mask_file}") for n in names])
        labels = lookup[index].astype(_label_dtype(len(ctx.labels.class_names)))
        if not labels.any():
            ctx.skip("frames without shapes")
            continue
        found = by_stem.get(item, [])
        if len(found) != 1:
            raise DatasetError(
                f"{ctx.tree.label}: {mask_file}: " + (
                    f"no image JPEGImages/{item}.* in the export; export with 'Save images' ticked"
                    if not found else f"several images match: {', '.join(found)}"))
        gray = ctx.read_gray(found[0])
        _check_size(ctx, found[0], gray, labels, mask_file)
        samples.append(Sample(found[0][len("JPEGImages/"):], gray, labels, volume_of(item + ".png")))
    return samples


# ---------------------------------------------------------------------------------------------
# plain folders: images/ + labels/


def _plain_class_map(ctx):
    """Label PNG value -> class index, from an optional classes.json (a list, or {"classes": [...]})."""
    name = ctx.prefix + "classes.json"
    if not ctx.tree.has(name):
        return None
    try:
        doc = json.loads(ctx.tree.read(name))
        classes = doc["classes"] if isinstance(doc, dict) else doc
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise DatasetError(f"{ctx.tree.label}: classes.json must be a list of names or {{\"classes\": [...]}}") from None
    return np.array([ctx.labels.index(c, "classes.json") for c in classes])


def _read_plain(ctx):
    lookup = _plain_class_map(ctx)
    n_classes = len(ctx.labels.class_names)
    label_files = {}
    for n in ctx.members("labels"):
        if n.lower().endswith(".png"):
            stem = str(PurePosixPath(n[len("labels/"):]).with_suffix(""))
            label_files[stem.removesuffix("_labels") if stem.endswith("_labels") else stem] = n
    images = {}
    for n in ctx.members("images"):
        if n.lower().endswith(IMAGE_SUFFIXES):
            stem = str(PurePosixPath(n[len("images/"):]).with_suffix(""))
            if stem in images:
                raise DatasetError(f"{ctx.tree.label}: {images[stem]} and {n} have the same stem")
            images[stem] = n
    for stem, label_file in label_files.items():
        if stem not in images:
            raise DatasetError(f"{ctx.tree.label}: {label_file} has no image images/{stem}.*")
    samples = []
    for stem, image_file in images.items():
        if stem not in label_files:
            ctx.skip("images without labels")
            continue
        label_file = label_files[stem]
        im = ctx.read_png(label_file)
        if im.mode not in ("L", "P", "I;16", "I", "1"):
            raise DatasetError(f"{ctx.tree.label}: {label_file} is {im.mode}: label PNGs must hold "
                               f"class indices (one grey or palette channel)")
        values = np.asarray(im, dtype=np.int64)
        limit = len(lookup) if lookup is not None else n_classes
        if values.size and (values.min() < 0 or values.max() >= limit):
            raise DatasetError(f"{ctx.tree.label}: {label_file} holds class {values.max()}, but there are "
                               f"only {limit} classes ({'classes.json' if lookup is not None else ', '.join(ctx.labels.class_names)})")
        labels = (lookup[values] if lookup is not None else values).astype(_label_dtype(n_classes))
        if not labels.any():
            ctx.skip("frames without shapes")
            continue
        gray = ctx.read_gray(image_file)
        _check_size(ctx, image_file, gray, labels, label_file)
        samples.append(Sample(image_file[len("images/"):], gray, labels, volume_of(image_file[len("images/"):])))
    return samples
