"""Inputs and outputs of the commands, checked before the model loads; errors name the flag."""

import os
from pathlib import Path

import numpy as np
from PIL import Image

from sam2oct.errors import ConfigError, RequestError


def read_image_file(path, max_pixels: int) -> np.ndarray:
    """The grey B-scan in a file, or an error that names the file."""
    from sam2oct.geometry.images import read_image

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", option="images") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not an image", option="images") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})", option="images") from None
    try:
        return read_image(data, max_pixels)
    except RequestError as exc:
        too_big = exc.status == 413  # the pixel limit, which --max-pixels sets
        raise ConfigError(f"{path}: {exc}", option="max_pixels" if too_big else "images") from None


def raise_problems(problems, total: int) -> None:
    """The inputs that cannot be used, said once before the model loads: the one error, or a
    count with the first three."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ConfigError(f"{len(problems)} of {total} images cannot be used: {shown}{more}", option="images")


def make_folder(option: str, folder: Path) -> None:
    existing = next(f for f in (folder, *folder.parents) if f.exists())
    if not existing.is_dir():
        raise ConfigError(f"{folder}: cannot be a folder, {existing} is a file", option=option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create this folder ({exc.strerror or exc})", option=option) from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{folder}: cannot write in this folder (permission denied)", option=option)


def check_destination(option: str, path: Path) -> None:
    """A file we will write: not a folder, its folder made, writable."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; name the file to write", option=option)
    make_folder(option, path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{path}: cannot be overwritten (permission denied)", option=option)


def overlay_targets(overlay, images) -> list:
    """Where each image's overlay goes: the file named, or <folder>/<image name>.png."""
    if not overlay:
        return [None] * len(images)
    out = Path(overlay)
    if len(images) == 1 and not out.is_dir():
        if out.suffix.lower() not in Image.registered_extensions():
            raise ConfigError(f"{out}: no image format has the extension {out.suffix!r}; name a .png file",
                              option="overlay")
        check_destination("overlay", out)
        return [out]
    if out.is_file():
        raise ConfigError(f"{out}: is a file; with several images, name a folder for their overlays", option="overlay")
    stems = [Path(p).stem for p in images]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ConfigError(f"several images are named {twice[0]!r}: their overlays would overwrite each other "
                          f"in {out}", option="overlay")
    make_folder("overlay", out)
    return [out / f"{stem}.png" for stem in stems]


def write_output(option: str, write, path) -> None:
    """``write(p)`` into a hidden sibling, then renamed over ``path``: never a half-written file.
    The sibling keeps the extension, which the writer may read the format from."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(partial)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot be written ({exc.strerror or exc})", option=option) from None
