"""DICOM Ophthalmic Tomography (OPT) multi-frame images through pydicom.

Spacing from the shared (else the first per-frame) functional groups' Pixel Measures:
PixelSpacing = [row spacing, column spacing] = [axial, lateral] in mm; SliceThickness, else
SpacingBetweenSlices = the distance between B-scans. Laterality from ImageLaterality (else the
series' Laterality): R -> OD, L -> OS. Integer pixels go through the 16-bit rule of
sam2oct.geometry.images (v / frame maximum), 8-bit pixels are kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sam2oct.geometry.images import DEFAULT_MAX_PIXELS
from sam2oct.data.volumes.volume import (Volume, VolumeError, check_dimensions, display_u8, file_sha256,
                                         needs_reversal, superior_first)

OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
_LATERALITY = {"R": "OD", "L": "OS"}


def is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _first(seq_owner, keyword):
    seq = getattr(seq_owner, keyword, None)
    return seq[0] if seq else None


def _pixel_measures(ds):
    for groups in (getattr(ds, "SharedFunctionalGroupsSequence", None),
                   getattr(ds, "PerFrameFunctionalGroupsSequence", None)):
        if groups:
            pm = _first(groups[0], "PixelMeasuresSequence")
            if pm is not None:
                return pm
    return ds if "PixelSpacing" in ds else None


def _spacing_um(ds, n: int) -> tuple:
    pm = _pixel_measures(ds)
    axial = lateral = between = math.nan
    if pm is not None and "PixelSpacing" in pm and len(pm.PixelSpacing) == 2:
        axial, lateral = (float(v) * 1000 for v in pm.PixelSpacing)
    for owner in (pm, ds):
        if owner is None:
            continue
        for key in ("SliceThickness", "SpacingBetweenSlices"):
            value = owner.get(key)
            if value not in (None, "") and math.isnan(between):
                between = float(value) * 1000
    if n == 1 and math.isnan(between):
        between = 0.0
    return axial, lateral, between


def _frame_positions(ds, n: int):
    """Per-frame ImagePositionPatient [N, 3] (mm), or None."""
    frames = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if not frames or len(frames) != n:
        return None
    out = []
    for item in frames:
        pp = _first(item, "PlanePositionSequence")
        if pp is None or "ImagePositionPatient" not in pp or len(pp.ImagePositionPatient) != 3:
            return None
        out.append([float(v) for v in pp.ImagePositionPatient])
    return np.array(out, dtype=np.float64)


def _reference_rows(ds, n: int):
    """Mean row of each frame's Ophthalmic Frame Location on the en-face image, or None."""
    frames = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if not frames or len(frames) != n:
        return None
    rows = []
    for item in frames:
        loc = _first(item, "OphthalmicFrameLocationSequence")
        coords = getattr(loc, "ReferenceCoordinates", None) if loc is not None else None
        if not coords or len(coords) < 2:
            return None
        rows.append(float(np.mean([float(v) for v in coords[0::2]])))
    return np.array(rows)


def read_dicom(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    import pydicom
    from pydicom.pixels.utils import get_expected_length

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, ... on a broken file
        raise VolumeError(f"{path}: DICOM file could not be read: {type(exc).__name__}: {exc}") from exc
    sop = str(ds.get("SOPClassUID", ""))
    if sop != OPT_SOP_CLASS and ds.get("Modality") != "OPT":
        raise VolumeError(f"{path}: DICOM file is not Ophthalmic Tomography (SOP class {sop or 'missing'}, "
                          f"modality {ds.get('Modality') or 'missing'})")
    if "PixelData" not in ds:
        raise VolumeError(f"{path}: DICOM file has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise VolumeError(f"{path}: DICOM image header incomplete: {exc}") from exc
    check_dimensions(path, n, rows, cols, max_pixels)
    if samples != 1:
        raise VolumeError(f"{path}: {samples} samples per pixel; expected grey B-scans (1)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise VolumeError(f"{path}: photometric interpretation {photometric}; expected MONOCHROME2")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        have = len(ds.PixelData)
        need = get_expected_length(ds)
        if have < need:
            raise VolumeError(f"{path}: truncated DICOM pixel data: {have} bytes, {n} frames of "
                              f"{cols}x{rows} need {need}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no decoder for the transfer syntax, corrupt fragments, ...
        raise VolumeError(f"{path}: DICOM pixel data could not be decoded: {type(exc).__name__}: {exc}") from exc
    pixels = pixels.reshape(n, rows, cols)
    if photometric == "MONOCHROME1":  # 0 is white: invert so bright is reflective, as displayed
        pixels = (int(pixels.max()) - pixels.astype(np.int64)) if pixels.size else pixels
    bscans = np.stack([display_u8(f, path) for f in pixels])
    positions = _frame_positions(ds, n)
    unit = "ImagePositionPatient x,y,z (mm)"
    rev = False
    if positions is not None and np.ptp(positions[:, 2]) > 0:
        rev = needs_reversal(-positions[:, 2])  # +z is superior in patient coordinates
    else:
        rows_on_fundus = _reference_rows(ds, n)
        if rows_on_fundus is not None:
            rev = needs_reversal(rows_on_fundus)
            if positions is None:
                positions, unit = rows_on_fundus[:, None], "mean row on the en-face reference image (pixels)"
    lat = str(ds.get("ImageLaterality") or ds.get("Laterality") or "").upper()
    return superior_first(Volume(bscans=bscans, spacing_um=_spacing_um(ds, n), laterality=_LATERALITY.get(lat, ""),
                 scan_pattern="line" if n == 1 else "volume", source=path, sha256=file_sha256(path),
                 positions=positions, position_unit=unit if positions is not None else "",
                 format="dicom-opt", display="8-bit kept; integer v / frame maximum (sam2oct.geometry.images)"), rev)
