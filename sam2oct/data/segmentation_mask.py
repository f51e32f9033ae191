"""Reader of "Segmentation mask 1.1" exports: labelmap.txt + SegmentationClass/ (+ JPEGImages/)."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import numpy as np

from sam2oct.data.samples import (FORMAT_SEGMENTATION_MASK, DatasetError, Sample, check_size,
                                    label_dtype, volume_of)

log = logging.getLogger(__name__)

# CVAT writes a 16-bit frame into this format's images as 8 bits keeping each value mod 256.
# Such a frame stays smooth read on a circle of 256 grey values but not on a line: neighbours on
# either side of a wrap differ by ~255. Measured (mean circular / mean linear neighbour
# difference): 8-bit B-scans 0.955 (heavy synthetic speckle) to 0.998 (Spectralis); the same
# scans stored as 9- to 14-bit data and cut mod 256: 0.67 to 0.86.
WRAPPED_RATIO = 0.9
_MIN_PIXELS = 4096  # below this the statistic says little (and test-sized frames are skipped)


def wrap_ratio(values: np.ndarray) -> float | None:
    """Mean circular over mean linear difference of neighbouring 8-bit grey values (1.0 for a
    frame without wraps); None where it cannot be told (too small, or flat)."""
    v = np.asarray(values, dtype=np.int16)
    if v.size < _MIN_PIXELS:
        return None
    d = np.concatenate([np.abs(np.diff(v, axis=1)).ravel(), np.abs(np.diff(v, axis=0)).ravel()])
    linear = d.mean()
    if linear == 0:
        return None
    return float(np.minimum(d, 256 - d).mean() / linear)


def looks_cut_to_8_bits(gray: np.ndarray) -> bool:
    """Whether an export's grey frame (float in [0, 1]) looks like a 16-bit frame written as
    8 bits mod 256. Only 8-bit frames can be: a frame whose values are not k/255 is not judged."""
    values = np.asarray(gray, dtype=np.float64) * 255
    rounded = np.rint(values)
    if np.abs(values - rounded).max(initial=0) > 1e-3:
        return False
    ratio = wrap_ratio(rounded)
    return ratio is not None and ratio < WRAPPED_RATIO

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
    samples, cut = [], []
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
        if looks_cut_to_8_bits(gray):
            cut.append(found[0])
        samples.append(Sample(found[0][len("JPEGImages/"):], gray, labels, volume_of(item + ".png")))
    if cut:
        log.warning("%s: %d of %d images (%s%s) look like 16-bit B-scans that the %r export cut to 8 bits, "
                    "each value kept mod 256: scores and training on them are wrong; export 16-bit tasks as "
                    "'CVAT for images 1.1'", ctx.tree.label, len(cut), len(samples), cut[0],
                    ", ..." if len(cut) > 1 else "", FORMAT_SEGMENTATION_MASK)
    return samples


# ---------------------------------------------------------------------------------------------
# plain folders: images/ + labels/
