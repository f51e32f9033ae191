"""Topcon .fda/.fds, Zeiss Cirrus .img, Optovue and Bioptigen .oct through oct-converter.

oct-converter is an optional extra (``pip install 'sam2oct[vendors]'``, docs/volumes.md says
why); without it these formats end in one error naming that command. Its Topcon readers still
call ``np.fromstring`` in binary mode, which NumPy 2.3 removed: they get a module-local
stand-in for that one function (``frombuffer`` plus a copy), nothing else of NumPy changes.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
from pathlib import Path

import numpy as np

from sam2oct.geometry.images import DEFAULT_MAX_PIXELS
from sam2oct.data.volumes.volume import (Volume, VolumeError, check_dimensions, display_u8, file_sha256,
                                         nan_spacing)

OCT_CONVERTER_PIN = "oct-converter==0.6.2"
INSTALL_HINT = f"pip install 'sam2oct[vendors]' (or: pip install {OCT_CONVERTER_PIN})"
TOPCON_MAGIC = b"FOCT"
_LATERALITY = {"R": "OD", "L": "OS", "OD": "OD", "OS": "OS"}
# Zeiss Cirrus cubes: 6 x 6 mm, 2.0 mm deep (Zeiss's published cube geometry; not in the file)
CIRRUS_CUBE_MM = (2.0, 6.0, 6.0)


def readers(what: str):
    """oct_converter.readers, or one clear error saying how to install it."""
    try:
        import oct_converter.readers as ocr
    except ImportError as exc:
        raise VolumeError(f"reading {what} needs the optional package oct-converter, which is not "
                          f"installed: {INSTALL_HINT}") from exc
    for name in ("fda", "fds"):
        module = getattr(ocr, name, None)
        if module is not None and not isinstance(module.np, _NumpyCompat):
            module.np = _NumpyCompat()
    return ocr


class _NumpyCompat:
    """NumPy for oct-converter's Topcon readers, with fromstring's removed binary mode restored."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def fromstring(data, dtype=float, count=-1, sep=""):
        if sep:
            return np.fromstring(data, dtype=dtype, count=count, sep=sep)
        return np.frombuffer(data, dtype=dtype, count=count).copy()


def _quiet(fn, *args, **kw):
    # oct-converter prints progress and "chunk not found" notes on stdout, where JSON may go
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


def _failed(path, what, exc):
    return VolumeError(f"{path}: {what} file could not be read: {type(exc).__name__}: {exc}")


def read_topcon(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(7)
    if head[:4] != TOPCON_MAGIC or head[4:7] not in (b"FDA", b"FAA", b"FDS"):
        raise VolumeError(f"{path}: not a Topcon .fda/.fds file: wrong magic {head!r} (expected FOCTFDA or FOCTFDS)")
    kind = "fds" if head[4:7] == b"FDS" else "fda"
    ocr = readers(f"Topcon .{kind} files")
    try:
        reader = _quiet(ocr.FDS if kind == "fds" else ocr.FDA, path)
        _check_topcon(path, reader, kind, max_pixels)
        oct_volume = _quiet(reader.read_oct_volume)
    except VolumeError:
        raise
    except Exception as exc:  # construct, struct and numpy errors on a malformed file
        raise _failed(path, f"Topcon .{kind}", exc) from exc
    if oct_volume.volume is None or not len(oct_volume.volume):
        raise VolumeError(f"{path}: Topcon file holds no OCT B-scans (no @IMG_JPEG, @IMG_MOT_COMP_03 or @IMG_SCAN_03)")
    bscans = np.stack([display_u8(np.asarray(b), path) for b in oct_volume.volume])
    spacing = nan_spacing()
    ps = oct_volume.pixel_spacing  # oct-converter: [lateral, between B-scans, axial] in mm
    if ps:
        spacing = (ps[2] * 1000, ps[0] * 1000, ps[1] * 1000)
    n, _, w = bscans.shape
    layers = {str(k): np.asarray(v, dtype=np.float64) for k, v in (oct_volume.contours or {}).items()
              if np.shape(v) == (n, w)}
    return Volume(bscans=bscans, spacing_um=spacing, laterality=_LATERALITY.get(oct_volume.laterality or "", ""),
                  scan_pattern="volume" if n > 1 else "line", source=path, sha256=file_sha256(path),
                  layers=layers, format=f"topcon-{kind}",
                  display="8-bit JPEG B-scans kept; 16-bit v / frame maximum (sam2oct.geometry.images)")


def _check_topcon(path, reader, kind, max_pixels):
    """Header dimensions against the chunk's size, before oct-converter allocates the volume."""
    chunks = reader.chunk_dict
    for name, fmt, compressed in ((b"@IMG_MOT_COMP_03", "<BIIIIBI", False), (b"@IMG_SCAN_03", "<BIIIIBI", False),
                                  (b"@IMG_JPEG", "<BIIIIII", True)):
        if name not in chunks:
            continue
        at, size = chunks[name]
        if isinstance(at, list):
            at, size = at[0], size[0]
        with open(path, "rb") as f:
            f.seek(at)
            head = f.read(struct.calcsize(fmt))
        if len(head) < struct.calcsize(fmt):
            raise VolumeError(f"{path}: truncated Topcon file: {name.decode()} header cut off")
        fields = struct.unpack(fmt, head)
        w, h, n = (fields[3], fields[4], fields[5]) if compressed else (fields[1], fields[2], fields[4])
        check_dimensions(path, n, h, w, max_pixels)
        if not compressed and 2 * w * h * n > size:
            raise VolumeError(f"{path}: truncated Topcon file: {name.decode()} holds {size} bytes, "
                              f"{n} B-scans of {w}x{h} need {2 * w * h * n}")
        return
    raise VolumeError(f"{path}: Topcon file holds no supported OCT chunk (@IMG_JPEG, @IMG_MOT_COMP_03, @IMG_SCAN_03)")


def read_zeiss_img(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    """Cirrus raw cube: dimensions from the file name ('... 512x128 ...': A-scans x B-scans)."""
    path = Path(path)
    m = re.search(r"(\d+)x(\d+)", path.name)
    if not m:
        raise VolumeError(f"{path}: Zeiss .img names its cube size (e.g. 'Macular Cube 512x128'); "
                          f"this name has no 'WIDTHxCOUNT'")
    cols, n = int(m.group(1)), int(m.group(2))
    size = path.stat().st_size
    if cols < 1 or n < 1 or size == 0 or size % (cols * n):
        raise VolumeError(f"{path}: {size} bytes are not {n} B-scans of {cols} A-scans (truncated or "
                          f"not a Cirrus cube)")
    rows = size // (cols * n)
    check_dimensions(path, n, rows, cols, max_pixels)
    ocr = readers("Zeiss .img files")
    try:
        oct_volume = _quiet(ocr.IMG(path).read_oct_volume, rows=rows, cols=cols)
    except Exception as exc:
        raise _failed(path, "Zeiss .img", exc) from exc
    bscans = np.stack([display_u8(np.asarray(b), path) for b in oct_volume.volume])
    spacing = nan_spacing()
    if "cube" in path.name.lower():
        depth, width, height = CIRRUS_CUBE_MM
        spacing = (depth * 1000 / rows, width * 1000 / cols, height * 1000 / max(n - 1, 1))
    return Volume(bscans=bscans, spacing_um=spacing, laterality=_LATERALITY.get(oct_volume.laterality or "", ""),
                  scan_pattern="volume" if n > 1 else "line", source=path, sha256=file_sha256(path),
                  format="zeiss-img", display="8-bit kept (oct-converter's orientation)")


def read_dot_oct(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    """Optovue .oct (raw float32 with a .txt of the same name beside it) or Bioptigen .oct."""
    path = Path(path)
    if path.with_suffix(".txt").is_file():
        return _read_optovue(path, max_pixels)
    return _read_bioptigen(path, max_pixels)


def _read_optovue(path: Path, max_pixels: int) -> Volume:
    ocr = readers("Optovue .oct files")
    reader = ocr.POCT(path)
    try:
        _quiet(reader._read_filespec)
    except Exception as exc:
        raise _failed(path.with_suffix(".txt"), "Optovue scan description", exc) from exc
    if not reader.scan_info:
        raise VolumeError(f"{path.with_suffix('.txt')}: Optovue description names no scan (Scan Length / Scan Usage)")
    first = reader.scan_info[0]
    h, w, n = first["height"], first["length"], first["number"]
    check_dimensions(path, n, h, w, max_pixels)
    need = 4 * sum(s["height"] * s["length"] * s["number"] for s in reader.scan_info)
    if path.stat().st_size < need:
        raise VolumeError(f"{path}: truncated Optovue .oct: {path.stat().st_size} bytes, its description "
                          f"declares {need}")
    try:
        volumes = _quiet(reader.read_oct_volume)
    except Exception as exc:
        raise _failed(path, "Optovue .oct", exc) from exc
    bscans = np.stack([display_u8(np.asarray(b, dtype=np.float32), path) for b in volumes[0].volume])
    return Volume(bscans=bscans, spacing_um=nan_spacing(), laterality=_LATERALITY.get(volumes[0].laterality or "", ""),
                  scan_pattern="volume" if len(bscans) > 1 else "line", source=path, sha256=file_sha256(path),
                  format="optovue-oct", display="float stretched over each B-scan's range (sam2oct.geometry.images)")


def _read_bioptigen(path: Path, max_pixels: int) -> Volume:
    ocr = readers("Bioptigen .oct files")
    try:
        reader = ocr.BOCT(path)
        parsed = reader.file_structure.parse_file(path)
        header = parsed.header
        depth, ascans = int(header.linelength.value), int(header.linecount.value)
        frames = list(parsed.data)
    except Exception as exc:  # a wrong magic surfaces here as a construct or decode error
        raise VolumeError(f"{path}: not a readable Bioptigen .oct (and no Optovue .txt beside it): "
                          f"{type(exc).__name__}: {exc}") from exc
    check_dimensions(path, len(frames), depth, ascans, max_pixels)
    size = path.stat().st_size
    bscans = []
    with open(path, "rb") as f:
        for i, frame in enumerate(frames):
            count, at = int(frame.image.totalpixels), int(frame.image.offset)
            if count != depth * ascans or at + 2 * count > size:
                raise VolumeError(f"{path}: Bioptigen frame {i} is truncated or not {ascans}x{depth}")
            f.seek(at)
            a = np.fromfile(f, dtype="<u2", count=count).reshape(ascans, depth).T  # A-scans are stored as rows
            bscans.append(display_u8(a, path))
    lat = re.search(r"O[DS]", path.stem)
    return Volume(bscans=np.stack(bscans), spacing_um=nan_spacing(), laterality=lat.group(0) if lat else "",
                  scan_pattern="volume" if len(bscans) > 1 else "line", source=path, sha256=file_sha256(path),
                  format="bioptigen-oct", display="16-bit v / frame maximum (sam2oct.geometry.images)")


def is_topcon(head: bytes) -> bool:
    return head[:4] == TOPCON_MAGIC

