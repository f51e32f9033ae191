"""Reader of "Segmentation mask 1.1" exports: labelmap.txt + SegmentationClass/ (+ JPEGImages/)."""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from sam2oct.data.samples import (FORMAT_SEGMENTATION_MASK, DatasetError, Sample, check_size,
                                    label_dtype, volume_of)

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


def read_segmentation_mask(ctx):
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
        labels = lookup[index].astype(label_dtype(len(ctx.labels.class_names)))
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
        check_size(ctx, found[0], gray, labels, mask_file)
        samples.append(Sample(found[0][len("JPEGImages/"):], gray, labels, volume_of(item + ".png")))
    return samples


# ---------------------------------------------------------------------------------------------
# plain folders: images/ + labels/
