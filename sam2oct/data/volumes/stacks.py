"""B-scans without a scanner header: a multi-page TIFF, a folder of B-scan images, one image.

The file holds no geometry, so spacing and laterality are the caller's (``--spacing``,
``--laterality``), NaN and '' when not given. Pages and files keep their order (folders in
natural order: bscan_2 before bscan_10); each gets the rule sam2oct.geometry.images applies to one image.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from sam2oct.errors import RequestError
from sam2oct.geometry.images import DEFAULT_MAX_PIXELS, read_image
from sam2oct.data.volumes.volume import (Volume, VolumeError, check_dimensions, display_u8, file_sha256,
                                         from_unit, nan_spacing)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
DISPLAY = "8-bit kept; 16/32-bit integer v / frame maximum; float stretched; colour to luma (sam2oct.geometry.images)"


def natural_key(name: str):
    """'bscan_2' < 'bscan_10': digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def tiff_pages(path: Path) -> int:
    """Pages of a TIFF (0 if it cannot be parsed: reading it then says why)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception:  # tifffile raises many types on broken files
        return 0


def read_tiff(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            shapes = {tuple(p.shape) for p in pages}
            if len(shapes) != 1:
                raise VolumeError(f"{path}: TIFF pages differ in size ({sorted(shapes)[:3]}...); "
                                  f"expected one B-scan size")
            (shape,) = shapes
            if len(shape) == 3 and shape[-1] in (3, 4):
                h, w = shape[:2]
            elif len(shape) == 2:
                h, w = shape
            else:
                raise VolumeError(f"{path}: TIFF page of shape {shape}; expected grey or RGB B-scans")
            check_dimensions(path, len(pages), h, w, max_pixels)
            frames = [p.asarray() for p in pages]
    except VolumeError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, ... on broken files
        raise VolumeError(f"{path}: TIFF could not be read: {type(exc).__name__}: {exc}") from exc
    bscans = np.stack([_grey(f, path) for f in frames])
    return Volume(bscans=bscans, spacing_um=nan_spacing(), laterality="",
                  scan_pattern="stack" if len(bscans) > 1 else "image", source=path,
                  sha256=file_sha256(path), format="tiff", display=DISPLAY)


def _grey(frame: np.ndarray, path) -> np.ndarray:
    if frame.ndim == 3:  # RGB(A): ITU-R 601 luma, as PIL's convert("L") in sam2oct.geometry.images
        from PIL import Image

        rgb = frame[..., :3]
        if rgb.dtype != np.uint8:
            rgb = display_u8(rgb, path)
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("L"))
    return display_u8(frame, path)


def read_folder(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    path = Path(path)
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise VolumeError(f"{path}: folder holds no B-scan images ({', '.join(IMAGE_SUFFIXES)})")
    digest = hashlib.sha256()
    frames = []
    for f in files:
        data = f.read_bytes()
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(data).digest())
        try:
            frames.append(_image_u8(f.name, data, max_pixels))
        except VolumeError as exc:
            raise VolumeError(f"{path} (a folder of B-scans): {exc}", option=exc.option) from exc
        if frames[-1].shape != frames[0].shape:
            raise VolumeError(f"{f}: B-scan is {frames[-1].shape[1]}x{frames[-1].shape[0]}, the folder's "
                              f"first ({files[0].name}) is {frames[0].shape[1]}x{frames[0].shape[0]}")
        check_dimensions(path, len(frames), *frames[0].shape, max_pixels)
    return Volume(bscans=np.stack(frames), spacing_um=nan_spacing(), laterality="", scan_pattern="stack",
                  source=path, sha256=digest.hexdigest(), format="image-folder", display=DISPLAY)


def read_single_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    path = Path(path)
    frame = _image_u8(path, path.read_bytes(), max_pixels)
    return Volume(bscans=frame[None], spacing_um=nan_spacing(), laterality="", scan_pattern="image",
                  source=path, sha256=file_sha256(path), format="image", display=DISPLAY)


def _image_u8(path, data: bytes, max_pixels: int) -> np.ndarray:
    try:
        return from_unit(read_image(data, max_pixels))
    except RequestError as exc:
        raise VolumeError(f"{path}: {exc}", option="max_pixels" if exc.status == 413 else None) from exc
