"""Heidelberg Engineering .vol and .e2e through eyepy's parsers.

eyepy's ``EyeVolume`` refuses circle (pattern 2) and radial (pattern 5) scans because it builds
an en-face plane; its parsed file objects do not, so the B-scans are taken from those and given
exactly the display transform eyepy's volume would apply (``from_vol_intensity`` for .vol, the
pixels of ``import_heyex_vol(path).data``; ``from_e2e_intensity`` for .e2e).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from sam2oct.geometry.images import DEFAULT_MAX_PIXELS
from sam2oct.data.volumes.volume import (Volume, VolumeError, check_dimensions, file_sha256,
                                         needs_reversal, superior_first)

VOL_MAGIC = b"HSF-OCT-"
E2E_MAGIC = b"CMDb"
VOL_HEADER = 2048
# the .vol file header fields this reader checks before eyepy parses the file (little endian)
_VOL_FIELDS = struct.Struct("<12sIIIdddIIdd")  # version .. scale_y_slo, bytes 0-72
VOL_PATTERNS = {0: "unknown", 1: "line", 2: "circle", 3: "volume", 4: "volume", 5: "radial"}
BSCAN_BASE_HEADER = 256  # fixed part of each B-scan header before the layer lines
UM_PER_DEGREE = 289.6  # eyepy's E2E convention for a medium eye length (degrees -> um on the retina)


def vol_header(path: Path, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """The .vol header fields that size the file, checked against the file's length."""
    if len(data) < VOL_HEADER:
        raise VolumeError(f"{path}: truncated .vol file: {len(data)} bytes, shorter than the "
                          f"{VOL_HEADER}-byte header")
    if not data.startswith(VOL_MAGIC):
        raise VolumeError(f"{path}: not a Heidelberg .vol file: wrong magic {data[:12]!r} "
                          f"(expected {VOL_MAGIC.decode()}...)")
    (_, size_x, n, size_y, scale_x, distance, scale_y, slo_x, slo_y, _, _) = _VOL_FIELDS.unpack_from(data, 0)
    position = data[84:88].split(b"\0")[0].decode("ascii", "replace").strip()
    (pattern,) = struct.unpack_from("<i", data, 96)
    (hdr,) = struct.unpack_from("<I", data, 100)
    check_dimensions(path, n, size_y, size_x, max_pixels)
    if slo_x * slo_y > max_pixels:
        raise VolumeError(f"{path}: SLO image of {slo_x}x{slo_y} pixels is over the pixel limit")
    if pattern not in VOL_PATTERNS:
        raise VolumeError(f"{path}: unsupported scan pattern {pattern} (known: "
                          f"{', '.join(f'{k} {v}' for k, v in VOL_PATTERNS.items())})")
    if hdr < BSCAN_BASE_HEADER:
        raise VolumeError(f"{path}: B-scan header size {hdr} is below the {BSCAN_BASE_HEADER} bytes "
                          f"of its fixed part")
    expected = VOL_HEADER + slo_x * slo_y + n * (hdr + 4 * size_x * size_y)
    if len(data) < expected:
        raise VolumeError(f"{path}: truncated .vol file: {len(data)} bytes, the header declares "
                          f"{n} B-scans of {size_x}x{size_y} needing {expected}")
    return dict(size_x=size_x, n=n, size_y=size_y, scale_x=scale_x, distance=distance,
                scale_y=scale_y, position=position, pattern=pattern, bscan_hdr=hdr, slo=slo_x * slo_y)


def _check_bscan_headers(path: Path, data: bytes, h: dict) -> None:
    # a layer count that does not fit the B-scan header would make the parser misread the pixels
    step = h["bscan_hdr"] + 4 * h["size_x"] * h["size_y"]
    for i in range(h["n"]):
        at = VOL_HEADER + h["slo"] + i * step
        (own_hdr,) = struct.unpack_from("<I", data, at + 12)
        (num_seg,) = struct.unpack_from("<I", data, at + 48)
        if own_hdr != h["bscan_hdr"]:
            raise VolumeError(f"{path}: B-scan {i} header size {own_hdr} differs from the file "
                              f"header's {h['bscan_hdr']}")
        if BSCAN_BASE_HEADER + 4 * num_seg * h["size_x"] > h["bscan_hdr"]:
            raise VolumeError(f"{path}: B-scan {i} declares {num_seg} layer lines, more than its "
                              f"{h['bscan_hdr']}-byte header holds")


def read_vol(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    from eyepy.core.utils import from_vol_intensity
    from eyepy.io.he.vol_reader import SEG_MAPPING, vol_format

    path = Path(path)
    data = path.read_bytes()
    h = vol_header(path, data, max_pixels)
    _check_bscan_headers(path, data, h)
    try:
        parsed = vol_format.parse(data)
    except Exception as exc:  # construct raises its own errors on malformed structure
        raise VolumeError(f"{path}: .vol file could not be parsed: {type(exc).__name__}: {exc}") from exc
    raw = np.stack([np.asarray(b.data, dtype=np.float32) for b in parsed.bscans])
    bscans = from_vol_intensity(raw.copy())  # eyepy's .vol display transform, as EyeVolume.data
    positions = np.array([[b.start_x, b.start_y, b.end_x, b.end_y] for b in parsed.bscans], dtype=np.float64)
    names = {i: name for name, i in SEG_MAPPING.items() if name not in ("EZ", "IZ")}
    layers = {}
    n_lines = max(int(b.num_seg) for b in parsed.bscans)
    for k in range(n_lines):
        line = np.full((h["n"], h["size_x"]), np.nan)
        for i, b in enumerate(parsed.bscans):
            if k < len(b.layer_segmentations):
                line[i] = b.layer_segmentations[k]
        line[line >= 3.0e38] = np.nan  # the device's "no line here"
        layers[names.get(k, f"layer_{k}")] = line
    pattern = VOL_PATTERNS[h["pattern"]]
    rev = pattern in ("volume", "unknown") and _horizontal(positions) and needs_reversal(positions[:, 1])
    laterality = h["position"] if h["position"] in ("OD", "OS") else ""
    return superior_first(Volume(
        bscans=np.ascontiguousarray(bscans, dtype=np.uint8),
        spacing_um=(h["scale_y"] * 1000, h["scale_x"] * 1000, h["distance"] * 1000),
        laterality=laterality, scan_pattern=pattern, source=path, sha256=file_sha256(path),
        positions=positions, position_unit="start_x,start_y,end_x,end_y (mm on the SLO, y towards inferior)",
        layers=layers, format="heidelberg-vol", display="eyepy from_vol_intensity"), rev)


def _horizontal(positions: np.ndarray) -> bool:
    """B-scans that run left-right on the fundus (start and end at about the same height)."""
    dx = np.abs(positions[:, 2] - positions[:, 0])
    dy = np.abs(positions[:, 3] - positions[:, 1])
    return bool(np.all(dy <= 0.1 * np.maximum(dx, 1e-9)))


# --- .e2e -------------------------------------------------------------------------------------

E2E_PATTERNS = VOL_PATTERNS


def read_e2e(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Volume:
    """The first series of the file that holds B-scans (an .e2e may hold several)."""
    from eyepy.core.utils import from_e2e_intensity
    from eyepy.io.he import HeE2eReader
    from eyepy.io.he.vol_reader import SEG_MAPPING

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(E2E_MAGIC))
    if head != E2E_MAGIC:
        raise VolumeError(f"{path}: not a Heidelberg .e2e file: wrong magic {head!r} "
                          f"(expected {E2E_MAGIC.decode()})")
    try:
        reader = HeE2eReader(path)
        with reader:
            series = [s for s in reader.series if s.n_bscans > 0 and _optional(s.get_bscan_meta, [])]
            if not series:
                raise VolumeError(f"{path}: the .e2e file holds no series with B-scans")
            s = series[0]
            metas = s.get_bscan_meta()
            size_x, size_y = int(metas[0]["size_x"]), int(metas[0]["size_y"])
            check_dimensions(path, s.n_bscans, size_y, size_x, max_pixels)
            raw = s.get_bscans()
            layer_maps = s.get_layers()
            laterality, x_scale = _optional(s.laterality, ""), _optional(
                lambda: s.get_x_scale_derivation().get("scaling_x_um_per_pixel"), None)
    except VolumeError:
        raise
    except Exception as exc:  # construct / eyepy raise many types on a malformed file
        raise VolumeError(f"{path}: .e2e file could not be parsed: {type(exc).__name__}: {exc}") from exc
    pattern_code = int(metas[0]["scan_pattern"])
    if pattern_code not in E2E_PATTERNS:
        raise VolumeError(f"{path}: unsupported scan pattern {pattern_code}")
    pattern = E2E_PATTERNS[pattern_code]
    bscans = from_e2e_intensity(np.asarray(raw, dtype=np.float32).copy())
    positions = np.array([[m["start_pos"][0], m["start_pos"][1], m["end_pos"][0], m["end_pos"][1]]
                          for m in metas], dtype=np.float64)
    if len(positions) != len(bscans):
        positions = None
    names = {i: name for name, i in SEG_MAPPING.items()}
    layers = {names.get(int(k), f"layer_{k}"): np.asarray(v, dtype=np.float64) for k, v in layer_maps.items()}
    distance = math.nan
    if positions is not None and len(positions) > 1:
        step = np.hypot(np.diff(positions[:, 1]), np.diff(positions[:, 0]))
        distance = float(np.median(step)) * UM_PER_DEGREE
    elif len(bscans) == 1:
        distance = 0.0
    rev = (positions is not None and pattern in ("volume", "unknown") and _horizontal(positions)
           and needs_reversal(positions[:, 1]))
    lat = str(laterality).split(".")[-1]
    return superior_first(Volume(
        bscans=np.ascontiguousarray(bscans, dtype=np.uint8),
        spacing_um=(float(metas[0]["scale_y"]) * 1000, math.nan if x_scale is None else float(x_scale), distance),
        laterality=lat if lat in ("OD", "OS") else "", scan_pattern=pattern, source=path,
        sha256=file_sha256(path), positions=positions,
        position_unit="start_x,start_y,end_x,end_y (degrees, y towards inferior)",
        layers=layers, format="heidelberg-e2e", display="eyepy from_e2e_intensity"), rev)


def _optional(read, default):
    """A record the series may lack (eyepy raises KeyError and the like): its default then."""
    try:
        return read()
    except Exception:
        return default
