"""read_volume: one entry for every scanner format, chosen by magic bytes, then by suffix."""

from __future__ import annotations

import math
from pathlib import Path

from sam2oct.geometry.images import DEFAULT_MAX_PIXELS
from sam2oct.data.volumes import dicom, heidelberg, stacks, vendors
from sam2oct.data.volumes.volume import LATERALITIES, Volume, VolumeError

# suffix -> (what it is, the magic its files start with, or None for formats without one)
SUFFIXES = {
    ".vol": ("Heidelberg .vol", heidelberg.VOL_MAGIC),
    ".e2e": ("Heidelberg .e2e", heidelberg.E2E_MAGIC),
    ".fda": ("Topcon .fda", vendors.TOPCON_MAGIC),
    ".fds": ("Topcon .fds", vendors.TOPCON_MAGIC),
    ".dcm": ("DICOM", None),
    ".tif": ("TIFF", None),
    ".tiff": ("TIFF", None),
}
VOLUME_SUFFIXES = (".vol", ".e2e", ".fda", ".fds", ".dcm", ".img", ".oct", ".tif", ".tiff")
_SINGLE_IMAGE = (b"\x89PNG", b"\xff\xd8\xff", b"BM")


def read_volume(path, *, spacing=None, laterality=None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    """Read a scanner file, a multi-page TIFF, a folder of B-scan images or one B-scan image.

    ``spacing`` (axial, lateral, bscan in micrometres) and ``laterality`` ('OD', 'OS') are for
    sources that do not record them (TIFF, folders, images, some vendor files); giving one that
    the file records is an error, so a file's geometry is never silently replaced.
    """
    path = Path(path)
    if path.is_dir():
        vol = stacks.read_folder(path, max_pixels)
    elif not path.is_file():
        raise VolumeError(f"{path}: no such file or folder")
    else:
        vol = _read_file(path, max_pixels)
    return _with_caller_geometry(vol, spacing, laterality)


def looks_like_volume(path) -> bool:
    """Whether ``path`` is read as a volume (a folder, a scanner file, a TIFF of several pages)
    rather than as one B-scan image; a missing path is not (it fails as an image would)."""
    path = Path(path)
    if path.is_dir():
        return True
    if not path.is_file():
        return False
    if path.suffix.lower() in VOLUME_SUFFIXES and path.suffix.lower() not in (".tif", ".tiff"):
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    if head.startswith((heidelberg.VOL_MAGIC, heidelberg.E2E_MAGIC)) or dicom.is_dicom(head) or vendors.is_topcon(head):
        return True
    if head[:4] in stacks.TIFF_MAGICS:
        return stacks.tiff_pages(path) > 1
    return False


def _read_file(path: Path, max_pixels: int) -> Volume:
    with open(path, "rb") as f:
        head = f.read(132)
    suffix = path.suffix.lower()
    if not head:
        raise VolumeError(f"{path}: file is empty")
    if head.startswith(heidelberg.VOL_MAGIC):
        return heidelberg.read_vol(path, max_pixels)
    if head.startswith(heidelberg.E2E_MAGIC):
        return heidelberg.read_e2e(path, max_pixels)
    if dicom.is_dicom(head):
        return dicom.read_dicom(path, max_pixels)
    if vendors.is_topcon(head):
        return vendors.read_topcon(path, max_pixels)
    if head[:4] in stacks.TIFF_MAGICS:
        return stacks.read_tiff(path, max_pixels)
    if suffix == ".img":
        return vendors.read_zeiss_img(path, max_pixels)
    if suffix == ".oct":
        return vendors.read_dot_oct(path, max_pixels)
    if suffix in SUFFIXES:
        what, magic = SUFFIXES[suffix]
        expected = f" (expected {magic.decode()}...)" if magic else ""
        if suffix == ".dcm":
            expected = " (expected 'DICM' at byte 128)"
        raise VolumeError(f"{path}: not a {what} file: wrong magic {head[:12]!r}{expected}")
    if head.startswith(_SINGLE_IMAGE) or suffix in stacks.IMAGE_SUFFIXES:
        return stacks.read_single_image(path, max_pixels)
    raise VolumeError(f"{path}: not a recognised volume or image format (known: {', '.join(VOLUME_SUFFIXES)}, "
                      f"a folder of images, PNG/JPEG/BMP)")


def parse_spacing(text: str) -> tuple:
    """'AXIAL,LATERAL,BSCAN' in micrometres -> three positive floats (ValueError says why not)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise ValueError(f"expected AXIAL,LATERAL,BSCAN in micrometres, got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected three numbers AXIAL,LATERAL,BSCAN, got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values[:2]) or not (math.isfinite(values[2]) and values[2] >= 0):
        raise ValueError(f"spacing must be positive micrometres (B-scan distance may be 0), got {text!r}")
    return values


def _with_caller_geometry(vol: Volume, spacing, laterality) -> Volume:
    if spacing is not None:
        spacing = parse_spacing(spacing) if isinstance(spacing, str) else tuple(float(s) for s in spacing)
        if len(spacing) != 3:
            raise VolumeError(f"spacing must be (axial, lateral, bscan), got {spacing}")
        known = [name for name, s in zip(("axial", "lateral", "bscan"), vol.spacing_um) if not math.isnan(s)]
        if known:
            raise VolumeError(f"{vol.source}: the file records the {'/'.join(known)} spacing "
                              f"({_fmt(vol.spacing_um)} um); a given spacing is only for files without one")
        vol.spacing_um = spacing
    if laterality is not None:
        laterality = str(laterality).upper()
        if laterality not in LATERALITIES:
            raise VolumeError(f"laterality must be OD or OS, got {laterality!r}")
        if vol.laterality and laterality != vol.laterality:
            raise VolumeError(f"{vol.source}: the file records laterality {vol.laterality}, not {laterality}")
        vol.laterality = laterality
    return vol


def _fmt(spacing) -> str:
    return ", ".join("?" if math.isnan(s) else f"{s:.4g}" for s in spacing)
