"""Image bytes -> one grey B-scan in [0, 1]; everything else refused with the right HTTP status."""

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from sam2oct.images import DEFAULT_MAX_PIXELS, read_image
from sam2oct.errors import RequestError

RNG = np.random.default_rng(1234)
GREY = RNG.integers(0, 256, size=(37, 53), dtype=np.uint8)  # odd sizes catch transposes


def encode(im: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def smooth(h, w) -> np.ndarray:
    """A smooth, asymmetric 8-bit picture (survives JPEG; rotations are distinguishable)."""
    y, x = np.mgrid[0:h, 0:w]
    return (40 + 180 * (x / w) ** 2 * (1 - 0.7 * y / h)).astype(np.uint8)


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def refused(data, status=400, **kw) -> RequestError:
    with pytest.raises(RequestError) as info:
        read_image(data, **kw)
    assert info.value.status == status, str(info.value)
    return info.value


# --- accepted formats -------------------------------------------------------------------------------

def test_8bit_grey_png_is_v_over_255():
    out = read_image(encode(Image.fromarray(GREY)))
    assert out.dtype == np.float32 and out.shape == GREY.shape
    assert np.array_equal(out, GREY.astype(np.float32) / np.float32(255))
    assert np.abs(out - GREY / 255.0).max() < 1e-7


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_modes_of_a_grey_picture(mode):
    if mode == "P":
        # A palette image whose palette entry i is the grey (i, i, i).
        im = Image.frombytes("P", GREY.shape[::-1], GREY.tobytes())
        im.putpalette([v for i in range(256) for v in (i, i, i)])
    else:
        im = Image.fromarray(GREY).convert(mode)
    assert im.mode == mode
    out = read_image(encode(im))
    assert np.abs(out - GREY / 255.0).max() < 1e-6


def test_rgb_is_luma():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> ITU-R 601 luma 0.299
    out = read_image(encode(Image.fromarray(rgb)))
    assert np.allclose(out, 0.299, atol=1 / 255)


def test_16bit_png_maps_full_range():
    with Image.open(DATA / "bscan_768x496_s1_16bit.png") as im16:
        assert im16.mode.startswith("I")  # really a 16-bit file
    raw8 = read(DATA / "bscan_768x496_s1.png")
    out8 = read_image((DATA / "bscan_768x496_s1.png").read_bytes())
    out16 = read_image((DATA / "bscan_768x496_s1_16bit.png").read_bytes())
    assert out16.shape == (496, 768) and out16.dtype == np.float32
    assert np.abs(out16 - out8).max() < 1e-6  # v16 = 257 * v8
    assert len(np.unique(out16)) == len(np.unique(raw8)) > 100
    # Not clipped at 255/65535: only the pixels that are white in 8 bits reach 1.
    assert np.array_equal(out16 >= 1.0, raw8 == 255)
    assert (out16 > 0.5).mean() == pytest.approx((raw8 > 127).mean(), abs=1e-6)


def test_16bit_values_above_8_bits_are_kept():
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    out = read_image(encode(Image.fromarray(ramp)))
    assert np.abs(out - ramp / 65535.0).max() < 1e-6
    assert out.min() == 0.0 and out.max() == 1.0
    assert len(np.unique(out)) > 1000  # far more levels than 8 bits hold


def test_jpeg_decodes():
    out = read_image((DATA / "bscan_768x496_s1.jpg").read_bytes())
    ref = read(DATA / "bscan_768x496_s1.png") / 255.0
    assert out.shape == (496, 768)
    assert np.abs(out - ref).mean() < 0.02


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_decodes(bits):
    a = GREY if bits == 8 else GREY.astype(np.uint16) * 257 + 3
    out = read_image(encode(Image.fromarray(a), "TIFF"))
    assert np.abs(out - a / (255.0 if bits == 8 else 65535.0)).max() < 1e-6


def test_float_tiff_is_stretched():
    a = np.linspace(-2.0, 6.0, 12 * 10, dtype=np.float32).reshape(12, 10)
    out = read_image(encode(Image.fromarray(a, mode="F"), "TIFF"))
    assert np.abs(out - (a + 2) / 8).max() < 1e-6


def test_bmp_decodes():
    assert np.array_equal(read_image(encode(Image.fromarray(GREY), "BMP")), GREY / np.float32(255))


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1)])  # 6: rotate 90 CW to view, 8: 90 CCW
def test_exif_rotated_jpeg_comes_back_upright(orientation, k):
    stored = smooth(60, 100)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = read_image(encode(Image.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95))
    upright, wrong = np.rot90(stored, k) / 255.0, np.rot90(stored, -k) / 255.0
    assert out.shape == (100, 60)
    assert np.abs(out - upright).mean() < 0.01
    assert np.abs(out - wrong).mean() > 0.1  # the test can tell the two rotations apart


def test_cmyk_jpeg_accepted():
    stored = smooth(40, 50)
    data = encode(Image.fromarray(stored).convert("RGB").convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
    out = read_image(data)
    assert out.shape == (40, 50) and 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - stored / 255.0).mean() < 0.03


# --- refused input ------------------------------------------------------------------------------------

def test_empty_bytes():
    refused(b"")


def test_random_bytes():
    refused(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def test_truncated_png():
    data = (DATA / "bscan_768x496_s1.png").read_bytes()
    refused(data[: len(data) // 2])


def test_multi_frame_gif():
    frames = [Image.fromarray(GREY), Image.fromarray(255 - GREY)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert "frames" in str(refused(data))


def test_multi_frame_tiff():
    frames = [Image.fromarray(GREY), Image.fromarray(255 - GREY), Image.fromarray(GREY)]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert "3 frames" in str(refused(data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR declares width x height (pixel data for 1x1)."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (5000, 5000)])
def test_over_max_pixels_refused_from_header(width, height):
    data = png_declaring(width, height)
    assert len(data) < 100 and width * height > DEFAULT_MAX_PIXELS
    # 413 rather than "truncated": the header alone decided, no pixel was decoded.
    err = refused(data, status=413)
    assert "pixels" in str(err)


def test_crafted_header_would_fail_decoding():
    # Control for the test above: with the limit lifted, the same bytes fail as undecodable (400).
    data = png_declaring(5000, 5000)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (5000, 5000)
    refused(data, status=400, max_pixels=10**8)


def test_max_pixels_is_configurable():
    data = encode(Image.fromarray(GREY))
    refused(data, status=413, max_pixels=GREY.size - 1)
    assert read_image(data, max_pixels=GREY.size).shape == GREY.shape


def test_32bit_int_image_out_of_range():
    refused(encode(Image.fromarray(np.full((4, 4), 70_000, np.int32), mode="I"), "TIFF"))


def test_nan_float_tiff():
    a = np.zeros((4, 4), np.float32)
    a[1, 1] = np.nan
    refused(encode(Image.fromarray(a, mode="F"), "TIFF"))
