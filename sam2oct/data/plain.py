"""Reader of plain folders: images/ + labels/ PNGs of class indices (optional classes.json)."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import numpy as np

from sam2oct.data.samples import (IMAGE_SUFFIXES,
                                    DatasetError, Sample, check_size,
                                    label_dtype, volume_of)

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


def read_plain(ctx):
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
        labels = (lookup[values] if lookup is not None else values).astype(label_dtype(n_classes))
        if not labels.any():
            ctx.skip("frames without shapes")
            continue
        gray = ctx.read_gray(image_file)
        check_size(ctx, image_file, gray, labels, label_file)
        samples.append(Sample(image_file[len("images/"):], gray, labels, volume_of(image_file[len("images/"):])))
    return samples
