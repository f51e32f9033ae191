"""Image bytes -> one grey B-scan in [0, 1]; everything else refused with the right HTTP status."""

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from sam2oct.geometry.images import DEFAULT_MAX_PIXELS, gray_from_pil, read_image
from sam2oct.errors import RequestError
from sam2oct.model.predictor import SemanticPredictor

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


def test_16bit_png_of_full_range_equals_its_8bit_original():
    # The 16-bit sample is the 8-bit one times 257, so it reaches 65535: scaling by the frame's
    # maximum is v16 / 65535 here, which is exactly v8 / 255.
    with Image.open(DATA / "bscan_768x496_s1_16bit.png") as im16:
        assert im16.mode.startswith("I")  # really a 16-bit file
    raw8 = read(DATA / "bscan_768x496_s1.png")
    raw16 = read(DATA / "bscan_768x496_s1_16bit.png")
    assert np.array_equal(raw16, raw8.astype(np.uint16) * 257) and raw16.max() == 65535
    out8 = read_image((DATA / "bscan_768x496_s1.png").read_bytes())
    out16 = read_image((DATA / "bscan_768x496_s1_16bit.png").read_bytes())
    assert out16.shape == (496, 768) and out16.dtype == np.float32
    assert np.array_equal(out16, out8)
    assert len(np.unique(out16)) == len(np.unique(raw8)) > 100
    # Only the pixels that are white in 8 bits reach 1.
    assert np.array_equal(out16 >= 1.0, raw8 == 255)


def test_12bit_scan_in_16bit_container_gives_the_8bit_grey_and_layers(tiny_model):
    # OCT data is often 12-bit in a 16-bit container. CVAT shows such a frame scaled by its
    # maximum; the model must see the same picture, not one 16 times darker.
    data8 = (DATA / "bscan_768x496_s1.png").read_bytes()
    raw8 = read(DATA / "bscan_768x496_s1.png")
    assert raw8.max() == 255  # so v / max of the 8-bit original is v / 255
    raw12 = raw8.astype(np.uint16) * 16
    assert raw12.max() == 4080 < 4096
    data12 = encode(Image.fromarray(raw12))
    with Image.open(io.BytesIO(data12)) as im:
        assert im.mode == "I;16"
    out8, out12 = read_image(data8), read_image(data12)
    assert out12.dtype == np.float32 and out12.max() == 1.0
    assert np.array_equal(out12, out8)  # exactly the same grey input
    predictor = SemanticPredictor(tiny_model)
    assert np.array_equal(predictor.predict(out12).label_map, predictor.predict(out8).label_map)


@pytest.mark.parametrize("dtype, mode", [(np.uint16, "I;16"), (np.int32, "I")])
def test_integer_frame_scaled_by_its_maximum(dtype, mode):
    a = (GREY.astype(np.int64) * 37 + 1000).astype(dtype)  # up to 10435: neither 8 nor 16 bits full
    im = Image.fromarray(a)
    assert im.mode == mode
    out = read_image(encode(im, "TIFF"))
    assert np.abs(out - a / a.max()).max() < 1e-6 and out.max() == 1.0


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_all_zero_integer_frame_stays_zero(dtype):
    out = read_image(encode(Image.fromarray(np.zeros((7, 9), dtype)), "TIFF"))
    assert out.shape == (7, 9) and out.dtype == np.float32 and not out.any()


def test_jpeg_decodes():
    out = read_image((DATA / "bscan_768x496_s1.jpg").read_bytes())
    ref = read(DATA / "bscan_768x496_s1.png") / 255.0
    assert out.shape == (496, 768)
    assert np.abs(out - ref).mean() < 0.02


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_decodes(bits):
    a = GREY if bits == 8 else GREY.astype(np.uint16) * 200 + 3
    out = read_image(encode(Image.fromarray(a), "TIFF"))
    assert np.abs(out - a / (255.0 if bits == 8 else float(a.max()))).max() < 1e-6


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
    err = refused(data, status=413, max_pixels=GREY.size - 1)
    assert str(err) == f"image is 53x37 = {GREY.size} pixels, over the pixel limit of {GREY.size - 1}"
    assert read_image(data, max_pixels=GREY.size).shape == GREY.shape


def test_32bit_int_image_with_negative_values():
    a = np.full((4, 4), 70_000, np.int32)
    assert read_image(encode(Image.fromarray(a, mode="I"), "TIFF")).max() == 1.0  # large is fine
    a[2, 3] = -1
    assert "negative" in str(refused(encode(Image.fromarray(a, mode="I"), "TIFF")))


def test_nan_float_tiff():
    a = np.zeros((4, 4), np.float32)
    a[1, 1] = np.nan
    refused(encode(Image.fromarray(a, mode="F"), "TIFF"))


# --- gray_from_pil: the one conversion, also for images opened elsewhere ------------------------------

def pil_of(mode: str) -> tuple[Image.Image, np.ndarray]:
    """GREY in a PIL image of `mode`, and the grey in [0, 1] that mode must give (numpy only)."""
    g = GREY.astype(np.float64)
    if mode == "L":
        return Image.fromarray(GREY), g / 255
    if mode in ("I;16", "I;16B"):
        a = (GREY.astype(np.uint16) * 16).astype(np.uint16 if mode == "I;16" else ">u2")
        return Image.fromarray(a), a / a.max()
    if mode == "I":
        a = GREY.astype(np.int32) * 300
        return Image.fromarray(a), a / a.max()
    if mode == "F":
        a = (g - 100.0).astype(np.float32)
        return Image.fromarray(a), (a - a.min()) / (a.max() - a.min())
    if mode == "P":
        im = Image.frombytes("P", GREY.shape[::-1], GREY.tobytes())
        im.putpalette([v for i in range(256) for v in (i, i, i)])
        return im, g / 255
    if mode == "1":
        return Image.fromarray(GREY > 127), (GREY > 127).astype(np.float64)
    return Image.fromarray(GREY).convert(mode), g / 255  # RGB, RGBA, LA: grey stays grey


@pytest.mark.parametrize("mode", ["L", "I;16", "I;16B", "I", "F", "RGB", "RGBA", "P", "LA", "1"])
def test_gray_from_pil_every_mode(mode):
    im, want = pil_of(mode)
    assert im.mode == mode
    out = gray_from_pil(im)
    assert out.dtype == np.float32 and out.shape == GREY.shape
    assert np.abs(out - want).max() < 1e-6
    assert im.mode == mode and im.size == GREY.shape[::-1]  # the caller's image is untouched


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F", "RGB", "P"])
def test_read_image_is_gray_from_pil_of_the_file(mode):
    im, _ = pil_of(mode)
    data = encode(im, "TIFF")
    with Image.open(io.BytesIO(data)) as opened:
        assert np.array_equal(read_image(data), gray_from_pil(opened))


@pytest.mark.parametrize("mode", ["L", "I;16"])
def test_gray_from_pil_applies_exif_orientation(mode):
    stored = smooth(60, 100).astype(np.uint16 if mode == "I;16" else np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    data = encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())  # PNG: Pillow leaves the tag to us
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.mode == mode and im.getexif().get(0x0112) == 6
        out = gray_from_pil(im)
        assert im.size == (100, 60)  # not transposed in place
    upright = np.rot90(stored, -1).astype(np.float64)
    assert out.shape == (100, 60)
    assert np.abs(out - upright / (255 if mode == "L" else upright.max())).max() < 1e-6
