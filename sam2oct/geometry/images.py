"""Turn the image bytes CVAT sends into one grey B-scan in [0, 1], refusing what is not one."""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from sam2oct.errors import RequestError

DEFAULT_MAX_PIXELS = 4096 * 4096
_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16- and 32-bit integer grey


def read_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> float32 [H, W] grey in [0, 1], converted by :func:`gray_from_pil`:
    8-bit grey v / 255; 16- and 32-bit integer frames v / (their maximum), as CVAT shows them,
    so 12-bit OCT data in a 16-bit file is not nearly black; EXIF orientation applied.

    The pixel count is checked from the header, before any pixel is decoded, so a small file
    declaring a huge canvas costs nothing. Files holding several frames are refused.
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
            raise RequestError(f"image is {w}x{h} = {w * h} pixels, over the pixel limit of {max_pixels}",
                               status=413)
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


def gray_from_pil(image: Image.Image) -> np.ndarray:
    """An opened PIL image of any mode a B-scan file gives -> float32 [H, W] grey in [0, 1].

    - 8-bit grey (L): v -> v / 255, what the model was trained on.
    - 16- and 32-bit integer grey (I;16, I;16B, I): v -> v / max of the frame, as CVAT shows
      it. OCT scanners often store 12-bit data in a 16-bit container; dividing by 65535 would
      hand the model a nearly black frame. A frame that is all zero stays zero; negative values
      are refused.
    - float (F): its finite range stretched to [0, 1].
    - colour, palette and bilevel (RGB, RGBA, P, LA, 1, CMYK, ...): ITU-R 601 luma / 255.
    EXIF orientation is applied first; the caller's image is not modified.
    """
    im = ImageOps.exif_transpose(image)
    if im.mode in _INTEGER_MODES:
        a = np.asarray(im)
        if a.size and a.min() < 0:
            raise RequestError("integer image has negative pixel values; expected a B-scan of intensities")
        return _over(a, int(a.max()) if a.size else 0)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.isfinite(a).all():
            raise RequestError("floating-point image contains NaN or infinite pixels")
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    if im.mode != "L":
        # A palette may carry transparency; go through RGBA so PIL resolves it before luma.
        im = im.convert("RGBA").convert("L") if im.mode in ("P", "PA") else im.convert("L")
    return _over(np.asarray(im), 255)


def _over(a: np.ndarray, peak: int) -> np.ndarray:
    # One division in float32 for every bit depth, so 16 * v / (16 * 255) == v / 255 exactly.
    out = a.astype(np.float32)
    if peak > 0:
        out /= np.float32(peak)
    return out
