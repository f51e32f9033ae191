"""Reader of "CVAT for images 1.1" exports (task or project): annotations.xml + images/."""

from __future__ import annotations

from pathlib import PurePosixPath
from xml.etree.ElementTree import ParseError, XMLParser

import numpy as np

from sam2oct.errors import RequestError
from sam2oct.data.samples import (FORMAT_CVAT, IGNORED_SHAPES, DatasetError, Sample, rasterize, volume_of)
from sam2oct.data.archive import check_member_name

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


def read_cvat(ctx):
    xml_name = ctx.prefix + "annotations.xml"
    where = f"{ctx.tree.label}: annotations.xml"
    doc = _parse_cvat_xml(ctx.tree.read(xml_name), where)
    ctx.project = doc.project
    images = ctx.members("images")
    # frames beside annotations.xml (a sam2oct volume bundle, sam2oct/data/cvat_bundle.py)
    beside = [n[len(ctx.prefix):] for n in ctx.tree.sizes
              if n.startswith(ctx.prefix) and "/" not in n[len(ctx.prefix):]]
    by_stem = {}
    for n in images:  # video-task frames are named without their extension
        by_stem.setdefault(str(PurePosixPath(n).with_suffix("")), []).append(n)
    samples, seen = [], {}
    for attrib, children in doc.images:
        name = attrib.get("name", "")
        where_img = f"{where}, image {name!r}"
        check_member_name(name, f"{where}: image name")
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
                ctx.skip(tag if tag in IGNORED_SHAPES else f"<{tag}>")
        if not shapes:
            ctx.skip("frames without shapes")
            continue
        subset = attrib.get("subset")
        file = _find_cvat_image(name, subset, images, by_stem) or (name if name in beside else None)
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
        samples.append(Sample(file.removeprefix("images/"), gray, labels, volume_of(name)))
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
