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

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from sam2oct.geometry.images import DEFAULT_MAX_PIXELS
from sam2oct.data.samples import (FORMAT_CVAT, FORMAT_PLAIN, FORMAT_SEGMENTATION_MASK, Dataset, DatasetError, LabelIndex, ReadContext, describe_skipped)
from sam2oct.data.archive import (DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_TOTAL_BYTES, DirTree, Limits,
                                    ZipTree)
from sam2oct.data.cvat_bundle import VOLUME_JSON as BUNDLE_META
from sam2oct.data.cvat_xml import read_cvat
from sam2oct.data.plain import read_plain
from sam2oct.data.segmentation_mask import read_segmentation_mask

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
    limits = Limits(max_member_bytes, max_total_bytes, max_members)
    bundles = bundle_folders(path)
    if bundles:
        return _load_bundles(path, bundles, class_names, limits, max_pixels)
    if path.is_dir():
        tree = DirTree(path, limits)
    elif zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        tree = ZipTree(path, limits)
    elif path.suffix.lower() == ".xml":
        tree = DirTree(path.parent, limits, only_xml=path.name)
    else:
        raise DatasetError(f"{path}: not a folder, a zip archive or an annotations.xml")
    with tree:
        reader, prefix = _detect(tree)
        ctx = ReadContext(tree, prefix, LabelIndex(class_names), max_pixels)
        samples = reader(ctx)
        kind = {read_cvat: FORMAT_CVAT, read_segmentation_mask: FORMAT_SEGMENTATION_MASK,
                read_plain: FORMAT_PLAIN}[reader]
        if ctx.project:
            kind += " (project export)"
    if not samples:
        raise DatasetError(f"{path}: no annotated B-scans found ({kind}; skipped: {describe_skipped(ctx.skipped) or 'nothing'})")
    return Dataset(samples, class_names, dict(ctx.skipped), f"{path} ({kind})")


def bundle_folders(path: Path) -> list:
    """The volume bundles ``cvat-task --out`` writes (annotations.xml + volume.json + frames) at
    ``path``: itself, or its sub-folders when it holds bundles and no export of its own."""
    def is_bundle(p):
        return (p / "annotations.xml").is_file() and (p / BUNDLE_META).is_file()

    if not path.is_dir():
        return []
    if is_bundle(path):
        return [path]
    if (path / "annotations.xml").exists():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and is_bundle(p))


def _load_bundles(path, bundles, class_names, limits, max_pixels) -> Dataset:
    """Each bundle is a task export with its frames beside annotations.xml; a sample is named
    <bundle>/<frame> and belongs to the volume <bundle>."""
    samples, skipped = [], {}
    labels = LabelIndex(class_names)
    for folder in bundles:
        with DirTree(folder, limits) as tree:
            ctx = ReadContext(tree, "", labels, max_pixels)
            samples += [replace(s, name=f"{folder.name}/{s.name}", volume=folder.name) for s in read_cvat(ctx)]
            for k, v in ctx.skipped.items():
                skipped[k] = skipped.get(k, 0) + v
    if not samples:
        raise DatasetError(f"{path}: no annotated B-scans in its volume bundles (skipped: "
                           f"{describe_skipped(skipped) or 'nothing'})")
    kind = f"{FORMAT_CVAT}, {len(bundles)} volume bundle{'s' if len(bundles) > 1 else ''}"
    return Dataset(samples, class_names, skipped, f"{path} ({kind})")


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


def _detect(tree):
    """(reader, prefix): the format, and the folder inside the archive that holds it."""
    prefixes = [""]
    tops = {n.split("/", 1)[0] for n in tree.sizes if "/" in n}
    if len(tops) == 1 and not any("/" not in n for n in tree.sizes):
        prefixes.append(tops.pop() + "/")  # a zip of the export folder itself
    for prefix in prefixes:
        names = [n[len(prefix):] for n in tree.sizes if n.startswith(prefix)]
        if "annotations.xml" in names:
            return read_cvat, prefix
        if "labelmap.txt" in names or any(n.startswith("SegmentationClass/") for n in names):
            return read_segmentation_mask, prefix
        if any(n.startswith("labels/") for n in names) and any(n.startswith("images/") for n in names):
            return read_plain, prefix
    raise DatasetError(
        f"{tree.label}: not an export this can read: expected annotations.xml + images/ "
        f"({FORMAT_CVAT}), labelmap.txt + SegmentationClass/ ({FORMAT_SEGMENTATION_MASK}) "
        f"or images/ + labels/ (class-index PNGs)")
