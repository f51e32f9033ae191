"""The fovea: given by the user, or the minimum of the smoothed retinal thickness near the centre.

Found in two passes over the retinal thickness map [N, W]: a coarse minimum after smoothing at
~100 µm (a vessel shadow or a single mis-segmented A-scan cannot win), searched in the central
half of the scan in both directions (fixation puts the fovea there), then a fine minimum at
~30 µm within 250 µm of it (the broad smoothing pulls the minimum towards the thinner side of an
asymmetric pit). Thickness is quantised to whole pixels, so the pit floor is a plateau of equal
values; the smoothing puts the minimum in the middle of it. A-scans without retina (outside the
segmented area) are left out of the smoothing rather than read as zero thickness.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sam2oct.evaluation.thickness.geometry import Spacing, ThicknessError

COARSE_UM = 100.0
FINE_UM = 30.0
REFINE_UM = 250.0
CENTRAL = 0.5  # the middle half of the B-scans and of the columns


def _smoothed(thickness, valid, sigma_um, spacing: Spacing):
    # no smoothing across B-scans where there is no distance between them (a single B-scan)
    sigma = (sigma_um / spacing.bscan if spacing.bscan > 0 else 0.0, sigma_um / spacing.lateral)
    weight = ndimage.gaussian_filter(valid.astype(np.float64), sigma, mode="nearest")
    total = ndimage.gaussian_filter(np.where(valid, thickness, 0.0), sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight
    out[weight < 0.25] = np.inf  # mostly unsegmented around here
    return out


def _central(size: int, fraction: float) -> slice:
    if size <= 2:
        return slice(0, size)
    lo = int(np.floor(size * (1 - fraction) / 2))
    hi = int(np.ceil(size * (1 + fraction) / 2))
    return slice(lo, max(hi, lo + 1))


def _argmin(values, rows: slice, cols: slice):
    window = values[rows, cols]
    if not np.isfinite(window).any():
        return None
    r, c = np.unravel_index(np.argmin(window), window.shape)
    return rows.start + int(r), cols.start + int(c)


def find_fovea(retina_um: np.ndarray, valid: np.ndarray, spacing: Spacing, *, bscan=None, column=None) -> tuple:
    """(bscan, column) of the thinnest retina near the scan's centre; a given B-scan or column
    is kept and only the other coordinate is searched (along that B-scan or that column)."""
    retina_um = np.asarray(retina_um, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(retina_um)
    n, w = retina_um.shape
    bscan, column = check_fovea((bscan, column), (n, w))
    if bscan is not None and column is not None:
        return bscan, column
    if not valid.any():
        raise ThicknessError("no A-scan holds any retina: the fovea cannot be found (give its B-scan and "
                             "column)", option="fovea_bscan")
    rows = slice(bscan, bscan + 1) if bscan is not None else _central(n, CENTRAL)
    cols = slice(column, column + 1) if column is not None else _central(w, CENTRAL)
    coarse = _argmin(_smoothed(retina_um, valid, COARSE_UM, spacing), rows, cols)
    if coarse is None:
        raise ThicknessError("the centre of the scan holds no retina: the fovea cannot be found (give its "
                             "B-scan and column)", option="fovea_bscan")
    rb = 0 if bscan is not None or spacing.bscan <= 0 else int(np.ceil(REFINE_UM / spacing.bscan))
    rc = 0 if column is not None else int(np.ceil(REFINE_UM / spacing.lateral))
    rows = slice(max(coarse[0] - rb, 0), min(coarse[0] + rb + 1, n))
    cols = slice(max(coarse[1] - rc, 0), min(coarse[1] + rc + 1, w))
    fine = _argmin(_smoothed(retina_um, valid, FINE_UM, spacing), rows, cols)
    return fine if fine is not None else coarse


def check_fovea(fovea, shape) -> tuple:
    """A given (bscan, column), either of them None, as ints inside the [N, W] grid."""
    out = []
    for name, value, size, option in (("B-scan", fovea[0], shape[0], "fovea_bscan"),
                                      ("column", fovea[1], shape[1], "fovea_column")):
        if value is None:
            out.append(None)
            continue
        try:
            ok = not isinstance(value, bool) and float(value).is_integer() and 0 <= value < size
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ThicknessError(f"fovea {name} {value!r} is not an index in 0..{size - 1}", option=option)
        out.append(int(value))
    return tuple(out)
