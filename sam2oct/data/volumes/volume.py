"""The one type every scanner reader returns, and the helpers they share.

A :class:`Volume` holds the B-scans as the 8-bit images the model is given (the same pixels a
user would see in an 8-bit PNG export of each B-scan), frame 0 the most superior B-scan of a
macular volume, plus what the file says about geometry: spacing in micrometres, laterality,
scan pattern, B-scan positions and the device's own layer lines.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sam2oct.errors import Sam2OctError
from sam2oct.geometry.images import DEFAULT_MAX_PIXELS, gray_from_pil

LATERALITIES = ("OD", "OS", "")
SCAN_PATTERNS = ("line", "circle", "volume", "radial", "stack", "image", "unknown")
# A volume may hold this many times the per-B-scan pixel limit in all (1.07 G voxels at the
# default 4096 x 4096): bounds what a compressed file can make us allocate.
VOXELS_PER_PIXEL_LIMIT = 64


class VolumeError(Sam2OctError):
    """A volume file that cannot be read: missing, truncated, wrong magic, unsupported, too big."""


@dataclass
class Volume:
    """B-scans of one acquisition and the geometry the file records.

    - ``bscans``: uint8 [N, H, W], the display image of each B-scan; frame 0 is the most superior
      B-scan of a macular volume (see docs/volumes.md for how each format's order is mapped).
    - ``spacing_um``: (axial, lateral, bscan) in micrometres; NaN where the file has none (0.0
      for the B-scan distance of a single B-scan where the file says 0).
    - ``laterality``: 'OD', 'OS' or '' (unknown).
    - ``scan_pattern``: one of :data:`SCAN_PATTERNS`.
    - ``positions``: float [N, K] per-B-scan positions as the file gives them (``position_unit``
      says what the K columns are), or None.
    - ``layers``: the device's layer lines, name -> float [N, W] row positions (pixels from the
      top of the B-scan, in the same frame order), NaN where a line is absent.
    - ``source``, ``sha256``: the file (or folder) read and the SHA-256 of its bytes.
    - ``reversed``: True where the frames were reversed from the file's order.
    """

    bscans: np.ndarray
    spacing_um: tuple
    laterality: str
    scan_pattern: str
    source: Path
    sha256: str
    positions: np.ndarray | None = None
    position_unit: str = ""
    layers: dict = field(default_factory=dict)
    format: str = ""
    display: str = ""
    reversed: bool = False

    def __post_init__(self):
        b = self.bscans
        if not (isinstance(b, np.ndarray) and b.dtype == np.uint8 and b.ndim == 3 and b.shape[0] >= 1):
            raise ValueError(f"bscans must be uint8 [N, H, W] with N >= 1, got {getattr(b, 'dtype', type(b))} "
                             f"{getattr(b, 'shape', '')}")
        self.spacing_um = tuple(float(s) for s in self.spacing_um)
        if len(self.spacing_um) != 3:
            raise ValueError("spacing_um must be (axial, lateral, bscan)")
        if self.laterality not in LATERALITIES:
            raise ValueError(f"laterality must be one of {LATERALITIES}, got {self.laterality!r}")
        if self.scan_pattern not in SCAN_PATTERNS:
            raise ValueError(f"scan_pattern must be one of {SCAN_PATTERNS}, got {self.scan_pattern!r}")
        n, _, w = b.shape
        if self.positions is not None and (self.positions.ndim != 2 or len(self.positions) != n):
            raise ValueError(f"positions must be [N={n}, K], got {self.positions.shape}")
        for name, line in self.layers.items():
            if line.shape != (n, w):
                raise ValueError(f"layer {name} must be [N={n}, W={w}], got {line.shape}")

    def __len__(self) -> int:
        return self.bscans.shape[0]

    @property
    def shape(self) -> tuple:
        return self.bscans.shape

    def meta(self) -> dict:
        """What volume.json records (JSON-ready: NaN spacing becomes null)."""
        return {
            "spacing_um": [None if math.isnan(s) else s for s in self.spacing_um],
            "laterality": self.laterality,
            "scan_pattern": self.scan_pattern,
            "source": self.source.name,
            "sha256": self.sha256,
            "format": self.format,
            "n_bscans": int(self.bscans.shape[0]),
            "height": int(self.bscans.shape[1]),
            "width": int(self.bscans.shape[2]),
            "reversed": self.reversed,
        }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_dimensions(path, n: int, height: int, width: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse absurd dimensions from a header before anything that size is allocated."""
    if n < 1 or height < 1 or width < 1:
        raise VolumeError(f"{path}: header declares {n} B-scans of {width}x{height} pixels: nothing to read")
    if width * height > max_pixels:
        raise VolumeError(f"{path}: B-scans of {width}x{height} = {width * height} pixels are over the "
                          f"pixel limit of {max_pixels}", option="max_pixels")
    if n * width * height > VOXELS_PER_PIXEL_LIMIT * max_pixels:
        raise VolumeError(f"{path}: {n} B-scans of {width}x{height} pixels are over the volume limit of "
                          f"{VOXELS_PER_PIXEL_LIMIT * max_pixels} voxels", option="max_pixels")


def display_u8(frame: np.ndarray, path=None) -> np.ndarray:
    """One B-scan of any numeric type -> uint8, by the rules images.gray_from_pil applies to an
    image file: 8-bit kept; 16- and 32-bit integers v / (frame maximum); float stretched over
    its finite range; then round(255 x). So the result equals what segmenting this frame
    written as a 16-bit or float image would give, quantised to 8 bits."""
    if frame.dtype == np.uint8:
        return frame
    if np.issubdtype(frame.dtype, np.integer):
        if frame.size and int(frame.min()) < 0:
            raise VolumeError(f"{path}: integer B-scan has negative values; expected intensities")
        if frame.size and int(frame.max()) > np.iinfo(np.int32).max:
            raise VolumeError(f"{path}: integer B-scan values exceed 32 bits")
        im = Image.fromarray(frame.astype(np.uint16) if frame.dtype.itemsize <= 2 else frame.astype(np.int32))
    elif np.issubdtype(frame.dtype, np.floating):
        if not np.isfinite(frame).all():
            raise VolumeError(f"{path}: floating-point B-scan contains NaN or infinite values")
        im = Image.fromarray(frame.astype(np.float32))
    else:
        raise VolumeError(f"{path}: B-scan pixels of type {frame.dtype} are not intensities")
    return from_unit(gray_from_pil(im))


def from_unit(gray: np.ndarray) -> np.ndarray:
    """Grey in [0, 1] -> uint8 (round half to even, as numpy rounds)."""
    return np.clip(np.round(gray.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def needs_reversal(y: np.ndarray) -> bool:
    """Whether frames ordered by ``y`` (a per-B-scan vertical position on the fundus, growing
    downwards, i.e. towards inferior) must be reversed to put the most superior first."""
    y = np.asarray(y, dtype=np.float64)
    return len(y) > 1 and bool(np.isfinite(y[[0, -1]]).all()) and y[0] > y[-1]


def nan_spacing() -> tuple:
    return (math.nan, math.nan, math.nan)


def superior_first(vol: Volume, reverse: bool) -> Volume:
    """The volume with its frames (and positions, layer lines) reversed when ``reverse``."""
    if not reverse:
        return vol
    vol.bscans = np.ascontiguousarray(vol.bscans[::-1])
    if vol.positions is not None:
        vol.positions = vol.positions[::-1].copy()
    vol.layers = {k: v[::-1].copy() for k, v in vol.layers.items()}
    vol.reversed = True
    return vol
