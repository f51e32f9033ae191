"""Turn the image bytes CVAT sends into one grey B-scan in [0, 1], refusing what is not one."""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from sam2oct.errors import RequestError

DEFAULT_MAX_PIXELS = 4096 * 4096
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def read_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> float32 [H, W] grey in [0, 1].

    8-bit images map v -> v/255 (what the model was trained on); 16-bit grey maps its full
    range v -> v/65535 rather than being clipped to 8 bits. Colour and palette images become
    luma. EXIF orientation is applied. The pixel count is checked from the header, before any
    pixel is decoded, so a small file declaring a huge canvas costs nothing.
    """
    if not data:
        raise RequestError("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise RequestError(f"image refused: {exc}", status=413) from exc
    except MemoryError:
        raise
    except Exception as exc:  # a malformed file makes PIL raise almost anything (TypeError, struct.error, ...)
        raise RequestError("image is not a decodable image file (PNG, JPEG, TIFF, BMP, ...)") from exc
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise RequestError(f"image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise RequestError(
                f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (SAM2OCT_MAX_PIXELS)",
                status=413,
            )
        try:
            if getattr(im, "n_frames", 1) > 1:  # counting frames parses the file further (TIFF)
                raise RequestError(f"image has {im.n_frames} frames; send one B-scan per request")
            im.load()
            return gray_from_pil(im)
        except (RequestError, MemoryError):
            raise
        except Exception as exc:  # see above: whatever PIL raises on a malformed file is a 400
            raise RequestError(f"image could not be decoded ({im.format} {im.mode}): "
                               f"{type(exc).__name__}: {exc}") from exc


def gray_from_pil(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(im, dtype=np.float32) / 65535.0
    if im.mode == "I":  # 32-bit int: 16-bit PNG/TIFF data as some decoders deliver it
        a = np.asarray(im, dtype=np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise RequestError("32-bit integer image with values outside 0..65535 is not supported")
        return (a / 65535.0).astype(np.float32)
    if im.mode == "F":  # float TIFF: stretch its finite range to [0, 1]
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise RequestError("floating-point image contains NaN or infinite pixels")
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    if im.mode != "L":
        im = im.convert("RGBA").convert("L") if im.mode in ("P", "PA") else im.convert("L")
    return np.asarray(im, dtype=np.float32) / 255.0
