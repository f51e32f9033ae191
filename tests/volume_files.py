"""Builders of scanner files for the tests (and benchmarks/bench_volume.py): multi-B-scan
Heidelberg .vol volumes assembled from the two real Spectralis files, and DICOM Ophthalmic
Tomography files written with pydicom.

The .vol layout: a 2048-byte header (``HSF-OCT-1xx``, size_x, n_bscans, size_y, scale_x,
distance, scale_y in mm, ..., scan_position at byte 84, scan_pattern at 96, bscan_hdr_size
at 100), the SLO image (size_x_slo x size_y_slo bytes), then per B-scan a header of
bscan_hdr_size bytes (start_x, start_y, end_x, end_y as float64 from byte 16) and
size_x x size_y float32 reflectivities.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "spectralis-vol"
LINE_VOL = DATA / "Willis_B_716_0.vol"      # horizontal line scan through the fovea, OD
CIRCLE_VOL = DATA / "Willis_B_716_4.vol"    # peripapillary circle scan, OD
HEADER = 2048


def vol_parts(path: Path):
    """(file header bytes, SLO bytes, [(B-scan header bytes, float32 [H, W])]) of a .vol file."""
    data = path.read_bytes()
    size_x, n, size_y = struct.unpack_from("<III", data, 12)
    slo_x, slo_y = struct.unpack_from("<II", data, 48)
    (hdr,) = struct.unpack_from("<I", data, 100)
    at = HEADER + slo_x * slo_y
    bscans = []
    for _ in range(n):
        bh = data[at:at + hdr]
        px = np.frombuffer(data, dtype="<f4", count=size_x * size_y, offset=at + hdr).reshape(size_y, size_x)
        bscans.append((bh, px.copy()))
        at += hdr + 4 * size_x * size_y
    return data[:HEADER], data[HEADER:HEADER + slo_x * slo_y], bscans


def build_vol(out: Path, n: int, *, source: Path = LINE_VOL, distance_mm: float = 0.12,
              pattern: int = 3, first_inferior: bool = True, laterality: str = "OD",
              shift: int = 7) -> Path:
    """A volume of ``n`` B-scans made from the B-scan of ``source``: B-scan i is the source's
    reflectivity (and layer lines) rolled right by i * ``shift`` columns, so every frame is
    distinct; B-scans stand ``distance_mm`` apart on the SLO, the first the most inferior
    (largest y) when ``first_inferior`` (else the most superior)."""
    header, slo, ((bh, px),) = vol_parts(source)
    size_x = px.shape[1]
    hdr = bytearray(header)
    struct.pack_into("<I", hdr, 16, n)
    struct.pack_into("<d", hdr, 32, distance_mm)
    struct.pack_into("<i", hdr, 96, pattern)
    hdr[84:88] = laterality.encode().ljust(4, b"\0")
    (num_seg,) = struct.unpack_from("<I", bh, 48)
    (seg_offset,) = struct.unpack_from("<I", bh, 52)
    lines = np.frombuffer(bh, dtype="<f4", count=num_seg * size_x, offset=seg_offset).reshape(num_seg, size_x)
    parts = [bytes(hdr), slo]
    for i in range(n):
        b = bytearray(bh)
        y = 1.0 + distance_mm * ((n - 1 - i) if first_inferior else i)
        struct.pack_into("<dddd", b, 16, 1.0, y, 1.0 + size_x * 0.0118, y)
        b[seg_offset:seg_offset + lines.nbytes] = np.roll(lines, i * shift, axis=1).astype("<f4").tobytes()
        parts += [bytes(b), np.roll(px, i * shift, axis=1).astype("<f4").tobytes()]
    out = Path(out)
    out.write_bytes(b"".join(parts))
    return out


def rewrite_header(src: Path, out: Path, **fields) -> Path:
    """A copy of a .vol with header fields replaced: size_x, n_bscans, size_y (uint32),
    scan_pattern (int32), bscan_hdr_size (uint32), magic (bytes)."""
    data = bytearray(Path(src).read_bytes())
    where = {"size_x": (12, "<I"), "n_bscans": (16, "<I"), "size_y": (20, "<I"),
             "scan_pattern": (96, "<i"), "bscan_hdr_size": (100, "<I")}
    for key, value in fields.items():
        if key == "magic":
            data[:len(value)] = value
        else:
            at, fmt = where[key]
            struct.pack_into(fmt, data, at, value)
    Path(out).write_bytes(bytes(data))
    return Path(out)


def write_dicom_opt(out: Path, frames: np.ndarray, *, pixel_spacing_mm=(0.0039, 0.0118),
                    slice_thickness_mm: float | None = 0.12, spacing_between_mm: float | None = None,
                    laterality: str | None = "R", z_positions=None, reference_rows=None,
                    sop_class: str = "1.2.840.10008.5.1.4.1.1.77.1.5.4", modality: str = "OPT") -> Path:
    """A multi-frame DICOM file (Ophthalmic Tomography by default) of ``frames`` [N, H, W]
    (uint8 or uint16), with Pixel Measures in the shared functional groups and, if given,
    per-frame ImagePositionPatient z values or Ophthalmic Frame Location rows."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames)
    n, h, w = frames.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, n
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if frames.dtype == np.uint8 else 16
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    pm = Dataset()
    pm.PixelSpacing = [f"{v:.6g}" for v in pixel_spacing_mm]
    if slice_thickness_mm is not None:
        pm.SliceThickness = f"{slice_thickness_mm:.6g}"
    if spacing_between_mm is not None:
        pm.SpacingBetweenSlices = f"{spacing_between_mm:.6g}"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if z_positions is not None or reference_rows is not None:
        per = []
        for i in range(n):
            item = Dataset()
            if z_positions is not None:
                pp = Dataset()
                pp.ImagePositionPatient = [0, 0, f"{z_positions[i]:.6g}"]
                item.PlanePositionSequence = Sequence([pp])
            if reference_rows is not None:
                loc = Dataset()
                r = float(reference_rows[i])
                loc.ReferenceCoordinates = [r, 10.0, r, 500.0]
                item.OphthalmicFrameLocationSequence = Sequence([loc])
            per.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    ds.PixelData = frames.astype("<u1" if bits == 8 else "<u2").tobytes()
    out = Path(out)
    ds.save_as(out, enforce_file_format=True)
    return out
