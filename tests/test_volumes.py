"""Scanner volumes in (sam2oct.data.volumes): each reader against an independent truth.

Truths: eyepy's own EyeVolume (import_heyex_vol) and the 8-bit PNG exports and layer-height
JSON made from the same .vol files by another tool (tests/data/spectralis*); the format layouts
themselves for files these tests write (DICOM through pydicom, TIFF through tifffile, raw
Zeiss and Topcon bytes); numbers computed here from the spec (v / frame max for 16-bit data).
"""

import json
import math
import struct
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from volume_files import CIRCLE_VOL, DATA, LINE_VOL, build_vol, rewrite_header, vol_parts, write_dicom_opt

from sam2oct.data.volumes.reader import parse_spacing, read_volume
from sam2oct.data.volumes.stacks import natural_key
from sam2oct.data.volumes.volume import Volume, VolumeError
from sam2oct.errors import Sam2OctError

LINE_PNG = DATA.parent / "spectralis" / "Willis_B_716_0_bscan_u8.png"
CIRCLE_PNG = DATA / "Willis_B_716_4_bscan_u8.png"


def png(path):
    return np.asarray(Image.open(path))


def heights(path):
    """Layer rows from the sample's JSON (null -> NaN)."""
    d = json.loads(Path(path).read_text())
    return d, {k: np.array([math.nan if v is None else v for v in vals]) for k, vals in d["layer_heights_px"].items()}


def scaled_u8(frame):
    """The 16-bit rule written out: v / frame max, to 8 bits."""
    return np.round(frame.astype(np.float64) / frame.max() * 255).astype(np.uint8)


# --- Heidelberg .vol ------------------------------------------------------------------------

def test_line_scan_reads_as_eyepy_and_the_png_export_show_it():
    from eyepy import import_heyex_vol

    vol = read_volume(LINE_VOL)
    assert isinstance(vol, Volume) and vol.bscans.dtype == np.uint8 and vol.shape == (1, 496, 768)
    assert np.array_equal(vol.bscans, import_heyex_vol(LINE_VOL).data)
    assert np.array_equal(vol.bscans[0], png(LINE_PNG))
    meta, lines = heights(DATA / "Willis_B_716_0_layers.json")
    assert vol.spacing_um[:2] == pytest.approx((meta["scale_y_mm"] * 1000, meta["scale_x_mm"] * 1000))
    assert vol.spacing_um[2] == 0.0  # a single B-scan: the header's distance is 0
    assert vol.laterality == meta["eye"] == "OD"
    assert vol.scan_pattern == "line" and vol.format == "heidelberg-vol" and not vol.reversed
    for name in ("ILM", "BM"):
        np.testing.assert_allclose(vol.layers[name][0], lines[name], atol=1e-3)  # NaN where the device has none
    assert vol.sha256 == __import__("hashlib").sha256(LINE_VOL.read_bytes()).hexdigest()
    assert vol.positions.shape == (1, 4)


def test_circle_scan_reads_where_eyepy_volume_refuses_it():
    from eyepy import import_heyex_vol

    with pytest.raises(ValueError, match="scan pattern 2"):
        import_heyex_vol(CIRCLE_VOL)
    vol = read_volume(CIRCLE_VOL)
    assert vol.scan_pattern == "circle" and vol.shape == (1, 496, 768)
    assert np.array_equal(vol.bscans[0], png(CIRCLE_PNG))
    meta, lines = heights(DATA / "Willis_B_716_4_layers.json")
    assert vol.spacing_um[1] == pytest.approx(meta["scale_x_mm"] * 1000)
    for name, line in lines.items():
        np.testing.assert_allclose(vol.layers[name][0], line, atol=1e-3)


def test_volume_frames_put_the_most_superior_first(tmp_path):
    from eyepy import import_heyex_vol

    src = png(LINE_PNG)
    path = build_vol(tmp_path / "v.vol", 5, distance_mm=0.12, first_inferior=True)
    vol = read_volume(path)
    eyepy_frames = import_heyex_vol(path).data  # eyepy keeps the file's order
    assert vol.reversed and vol.scan_pattern == "volume" and vol.shape == (5, 496, 768)
    assert np.array_equal(vol.bscans, eyepy_frames[::-1])
    # file B-scan i is the sample rolled by 7 i columns; frame 0 is the file's last (most superior)
    for k in range(5):
        assert np.array_equal(vol.bscans[k], np.roll(src, (4 - k) * 7, axis=1))
    assert np.all(np.diff(vol.positions[:, 1]) > 0)  # y grows towards inferior
    assert vol.spacing_um[2] == pytest.approx(120.0)
    _, lines = heights(DATA / "Willis_B_716_0_layers.json")
    np.testing.assert_allclose(vol.layers["ILM"][0], np.roll(lines["ILM"], 4 * 7), atol=1e-3)

    kept = read_volume(build_vol(tmp_path / "w.vol", 3, first_inferior=False))
    assert not kept.reversed
    assert np.array_equal(kept.bscans[2], np.roll(src, 14, axis=1))


def test_radial_scans_keep_the_file_order(tmp_path):
    vol = read_volume(build_vol(tmp_path / "r.vol", 3, pattern=5, first_inferior=True))
    assert vol.scan_pattern == "radial" and not vol.reversed
    assert np.array_equal(vol.bscans[1], np.roll(png(LINE_PNG), 7, axis=1))


@pytest.mark.parametrize("case, fields, message", [
    ("magic", {"magic": b"NOT-A-VOL-XX"}, "wrong magic"),
    ("pattern", {"scan_pattern": 9}, "unsupported scan pattern 9"),
    ("pixels", {"size_x": 100000, "size_y": 100000}, "over the pixel limit"),
    ("count", {"n_bscans": 40}, "truncated .vol file: 2171012 bytes, the header declares 40 B-scans"),
    ("voxels", {"n_bscans": 4_000_000}, "over the volume limit"),
    ("nothing", {"n_bscans": 0}, "nothing to read"),
    ("header", {"bscan_hdr_size": 12}, "B-scan header size"),
])
def test_broken_vol_files_name_the_file_and_the_fault(tmp_path, case, fields, message):
    bad = rewrite_header(LINE_VOL, tmp_path / f"{case}.vol", **fields)
    tracemalloc.start()
    try:
        with pytest.raises(VolumeError, match=message) as err:
            read_volume(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(bad) in str(err.value) and isinstance(err.value, Sam2OctError)
    assert peak < 3 * bad.stat().st_size + (1 << 20)  # refused from the header, nothing declared allocated


def test_truncated_vol_is_refused(tmp_path):
    data = LINE_VOL.read_bytes()
    for cut in (100, 2048 + 500, len(data) - 133):  # the sample ends in 132 bytes past its last B-scan
        bad = tmp_path / f"cut{cut}.vol"
        bad.write_bytes(data[:cut])
        with pytest.raises(VolumeError, match="truncated") as err:
            read_volume(bad)
        assert str(bad) in str(err.value)


def test_a_layer_count_the_bscan_header_cannot_hold_is_refused(tmp_path):
    header, slo, ((bh, px),) = vol_parts(LINE_VOL)
    b = bytearray(bh)
    struct.pack_into("<I", b, 48, 10_000)
    bad = tmp_path / "layers.vol"
    bad.write_bytes(header + slo + bytes(b) + px.astype("<f4").tobytes())
    with pytest.raises(VolumeError, match="layer lines"):
        read_volume(bad)


def test_suffix_without_its_magic_and_unknown_files(tmp_path):
    for name, message in (("x.e2e", "not a Heidelberg .e2e file: wrong magic"),
                          ("x.dcm", "DICM"), ("x.fda", "not a Topcon")):
        p = tmp_path / name
        p.write_bytes(b"\x01" * 300)
        with pytest.raises(VolumeError, match=message):
            read_volume(p)
    p = tmp_path / "x.bin"
    p.write_bytes(b"\x01" * 300)
    with pytest.raises(VolumeError, match="not a recognised"):
        read_volume(p)
    (tmp_path / "empty.vol").write_bytes(b"")
    with pytest.raises(VolumeError, match="empty"):
        read_volume(tmp_path / "empty.vol")
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "missing.vol")


def test_a_file_records_its_own_geometry(tmp_path):
    with pytest.raises(VolumeError, match="records the axial/lateral/bscan spacing"):
        read_volume(LINE_VOL, spacing=(3.9, 11.8, 0))
    with pytest.raises(VolumeError, match="records laterality OD, not OS"):
        read_volume(LINE_VOL, laterality="OS")
    assert read_volume(LINE_VOL, laterality="od").laterality == "OD"


# --- DICOM Ophthalmic Tomography ------------------------------------------------------------

def _frames(n=4, h=40, w=60, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    hi = 255 if dtype == np.uint8 else 4095  # 12-bit data in a 16-bit container
    return rng.integers(0, hi + 1, size=(n, h, w)).astype(dtype)


def test_dicom_opt_spacing_laterality_and_order(tmp_path):
    frames = _frames()
    path = write_dicom_opt(tmp_path / "opt.dcm", frames, pixel_spacing_mm=(0.0039, 0.0118),
                           slice_thickness_mm=0.12, laterality="L", z_positions=[-3, -1, 1, 3])
    vol = read_volume(path)
    assert vol.format == "dicom-opt" and vol.laterality == "OS" and vol.scan_pattern == "volume"
    assert vol.spacing_um == pytest.approx((3.9, 11.8, 120.0))
    # +z is superior: the last frame (z = 3) comes first
    assert vol.reversed and np.array_equal(vol.bscans, frames[::-1])
    assert vol.positions[:, 2].tolist() == [3, 1, -1, -3]

    same = read_volume(write_dicom_opt(tmp_path / "down.dcm", frames, z_positions=[3, 1, -1, -3],
                                       slice_thickness_mm=None, spacing_between_mm=0.06, laterality="R"))
    assert not same.reversed and np.array_equal(same.bscans, frames)
    assert same.spacing_um[2] == pytest.approx(60.0) and same.laterality == "OD"


def test_dicom_opt_frame_location_rows_order_frames(tmp_path):
    frames = _frames(3)
    vol = read_volume(write_dicom_opt(tmp_path / "rows.dcm", frames, reference_rows=[400, 250, 100]))
    assert vol.reversed and np.array_equal(vol.bscans, frames[::-1])


def test_dicom_opt_16_bit_uses_the_16_bit_rule(tmp_path):
    frames = _frames(dtype=np.uint16)
    frames[1] //= 4  # a darker frame is stretched on its own maximum, as images.read_image does
    vol = read_volume(write_dicom_opt(tmp_path / "u16.dcm", frames, laterality=None))
    assert vol.laterality == "" and not vol.reversed
    for k in range(len(frames)):
        assert np.array_equal(vol.bscans[k], scaled_u8(frames[k]))


def test_dicom_that_is_not_opt_or_is_truncated(tmp_path):
    ct = write_dicom_opt(tmp_path / "ct.dcm", _frames(2), sop_class="1.2.840.10008.5.1.4.1.1.2", modality="CT")
    with pytest.raises(VolumeError, match="not Ophthalmic Tomography"):
        read_volume(ct)
    good = write_dicom_opt(tmp_path / "opt.dcm", _frames(4, 64, 64)).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(good[:-3000])
    with pytest.raises(VolumeError) as err:
        read_volume(cut)
    assert str(cut) in str(err.value)
    huge = tmp_path / "huge.dcm"
    write_dicom_opt(huge, _frames(1, 8, 8))
    import pydicom

    ds = pydicom.dcmread(huge)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(huge)
    with pytest.raises(VolumeError, match="pixel limit"):
        read_volume(huge)


# --- TIFF, folders, single images -----------------------------------------------------------

def test_multipage_tiff_with_the_callers_geometry(tmp_path):
    import tifffile

    frames = _frames(3, dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")  # three pages
    vol = read_volume(path, spacing="3.9,11.8,120", laterality="OS")
    assert vol.format == "tiff" and vol.scan_pattern == "stack" and vol.laterality == "OS"
    assert vol.spacing_um == (3.9, 11.8, 120.0)
    for k in range(3):
        assert np.array_equal(vol.bscans[k], scaled_u8(frames[k]))
    bare = read_volume(path)
    assert all(math.isnan(s) for s in bare.spacing_um) and bare.laterality == ""


def test_folder_in_natural_order(tmp_path):
    frames = _frames(3, dtype=np.uint8)
    for k, name in zip(range(3), ("bscan_2.png", "bscan_10.png", "bscan_1.png")):
        Image.fromarray(frames[k]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("ignored")
    vol = read_volume(tmp_path, spacing=(3.9, 11.8, 120))
    assert vol.format == "image-folder" and len(vol) == 3
    assert [np.array_equal(vol.bscans[i], frames[k]) for i, k in enumerate((2, 0, 1))] == [True] * 3
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "bscan_11.png")
    with pytest.raises(VolumeError, match="bscan_11.png"):
        read_volume(tmp_path)


def test_natural_key():
    names = ["b10.png", "b2.png", "B1.png", "b2a.png"]
    assert sorted(names, key=natural_key) == ["B1.png", "b2.png", "b2a.png", "b10.png"]


def test_single_image_is_a_one_frame_volume():
    vol = read_volume(LINE_PNG)
    assert vol.shape == (1, 496, 768) and np.array_equal(vol.bscans[0], png(LINE_PNG))
    assert vol.scan_pattern == "image"


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "0,1,1", "-1,1,1", "1,1,nan"])
def test_bad_spacing_text(text):
    with pytest.raises(ValueError):
        parse_spacing(text)


# --- oct-converter formats ------------------------------------------------------------------

def test_zeiss_img_cube(tmp_path):
    rows, cols, n = 16, 8, 3
    raw = np.random.default_rng(1).integers(0, 256, size=rows * cols * n, dtype=np.uint8)
    path = tmp_path / "P1_Macular Cube 8x3_1-2-2020_10-11-12_OD_sn1_cube_z.img"
    path.write_bytes(raw.tobytes())
    vol = read_volume(path)
    # the Cirrus layout: column-major (rows, cols, B-scans)
    cube = raw.reshape((rows, cols, n), order="F")
    assert vol.shape == (n, rows, cols) and vol.laterality == "OD" and vol.format == "zeiss-img"
    for k in range(n):
        assert np.array_equal(vol.bscans[k], cube[:, :, k])
    assert vol.spacing_um == pytest.approx((2000 / rows, 6000 / cols, 6000 / (n - 1)))
    bad = tmp_path / "P1_Macular Cube 8x3_OS.img"
    bad.write_bytes(raw.tobytes()[:-1])
    with pytest.raises(VolumeError, match="not 3 B-scans of 8 A-scans"):
        read_volume(bad)


def _topcon_fda(path, frames, eye=1, x_mm=6.0, y_mm=6.0, z_um=2.6):
    n, h, w = frames.shape

    def chunk(name, body):
        return bytes([len(name)]) + name + struct.pack("<I", len(body)) + body

    cap = struct.pack("<BBI", eye, 0, 7) + b"label".ljust(100, b"\0") + struct.pack("<6H", 2020, 1, 2, 3, 4, 5)
    scan = struct.pack("<III5dBB", 0, 0, 0, x_mm, y_mm, z_um, 0.0, 0.0, 0, 0)
    # IMG_MOT_COMP_03: header, then uint16 stored A-scan by A-scan per B-scan (width x height, F order)
    data = np.stack([f.T for f in frames], axis=-1).reshape(-1, order="F")
    img = struct.pack("<BIIIIBI", 0, w, h, 16, n, 0, data.nbytes) + data.astype("<u2").tobytes()
    body = (b"FOCTFDA" + struct.pack("<II", 1, 0) + chunk(b"@CAPTURE_INFO_02", cap)
            + chunk(b"@PARAM_SCAN_04", scan) + chunk(b"@IMG_MOT_COMP_03", img) + b"\0")
    path.write_bytes(body)
    return path


def test_topcon_fda_through_oct_converter(tmp_path):
    frames = _frames(3, 20, 30, dtype=np.uint16)
    vol = read_volume(_topcon_fda(tmp_path / "scan.fda", frames))
    assert vol.format == "topcon-fda" and vol.laterality == "OS" and vol.shape == (3, 20, 30)
    for k in range(3):
        assert np.array_equal(vol.bscans[k], scaled_u8(frames[k]))
    assert vol.spacing_um == pytest.approx((2.6, 6000 / 30, 6000 / 3))
    cut = tmp_path / "cut.fda"
    cut.write_bytes((tmp_path / "scan.fda").read_bytes()[:-400])
    with pytest.raises(VolumeError, match="cut.fda"):
        read_volume(cut)


def test_without_oct_converter_one_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "oct_converter", None)
    monkeypatch.setitem(sys.modules, "oct_converter.readers", None)
    path = tmp_path / "P1_Macular Cube 8x3_OD.img"
    path.write_bytes(bytes(16 * 8 * 3))
    with pytest.raises(VolumeError, match=r"pip install 'sam2oct\[vendors\]'"):
        read_volume(path)


# --- Heidelberg .e2e (no public sample: eyepy's reader stands in at its boundary) -----------

def test_e2e_series_maps_to_a_volume(tmp_path, monkeypatch):
    import eyepy.io.he as he

    raw = np.random.default_rng(2).random((3, 10, 12)).astype(np.float32) * 0.5

    class Series:
        n_bscans = 3

        def get_bscan_meta(self):  # first B-scan lowest on the fundus (largest y, degrees)
            return [{"size_x": 12, "size_y": 10, "scan_pattern": 3, "scale_y": 0.0039,
                     "start_pos": (-10.0, 5.0 - i), "end_pos": (10.0, 5.0 - i)} for i in range(3)]

        def get_bscans(self):
            return raw.copy()

        def get_layers(self):
            return {0: np.arange(36, dtype=float).reshape(3, 12)}

        def laterality(self):
            return "OS"

        def get_x_scale_derivation(self):
            return {"scaling_x_um_per_pixel": 11.5}

    class Reader:
        def __init__(self, path):
            self.series = [Series()]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(he, "HeE2eReader", Reader)
    path = tmp_path / "x.e2e"
    path.write_bytes(b"CMDb" + bytes(100))
    vol = read_volume(path)
    from eyepy.core.utils import from_e2e_intensity

    assert vol.format == "heidelberg-e2e" and vol.laterality == "OS" and vol.reversed
    assert np.array_equal(vol.bscans, from_e2e_intensity(raw.copy())[::-1])
    assert vol.spacing_um == pytest.approx((3.9, 11.5, 289.6))
    assert vol.layers["ILM"][0].tolist() == list(range(24, 36))
