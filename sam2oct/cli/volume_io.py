"""Volumes on the command line: which inputs are volumes, reading them before the model loads,
where their per-B-scan and per-volume outputs go, and segmenting them in encoder batches."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam2oct.cli.paths import check_destination, make_folder, raise_problems, read_image_file
from sam2oct.data.volumes.label_files import nifti_zooms_mm
from sam2oct.data.volumes.reader import looks_like_volume, parse_spacing, read_volume
from sam2oct.data.volumes.volume import VolumeError
from sam2oct.errors import ConfigError

# the flags these commands add, for error messages (main merges them into OPTION_NAMES)
FLAG_NAMES = {"spacing": "--spacing", "laterality": "--laterality", "labels": "--labels", "nifti": "--nifti",
              "batch": "--batch", "out": "--out"}


@dataclass
class Source:
    """One input: a plain B-scan image (``volume`` None, read again when segmented) or a volume."""

    path: Path
    volume: object | None = None
    spacing_um: tuple = (math.nan, math.nan, math.nan)
    laterality: str = ""

    @property
    def stem(self) -> str:
        return self.path.name if self.path.is_dir() else self.path.stem

    @property
    def n_bscans(self) -> int:
        return 1 if self.volume is None else len(self.volume)

    def frames(self, max_pixels: int):
        """Grey float32 frames in [0, 1]: an 8-bit B-scan v -> v / 255, as reading its PNG gives."""
        if self.volume is None:
            yield read_image_file(self.path, max_pixels)
            return
        for frame in self.volume.bscans:
            out = frame.astype(np.float32)
            out /= np.float32(255)
            yield out


def spacing_flag(text):
    if text is None:
        return None
    try:
        return parse_spacing(text)
    except ValueError as exc:
        raise ConfigError(str(exc), option="spacing") from None


def read_sources(paths, max_pixels: int, *, spacing=None, laterality=None, all_volumes=False) -> list:
    """Every input read (volumes) or checked (images) before the model loads; the errors of
    several inputs are said together in one line. ``all_volumes`` reads images as 1-frame volumes."""
    sources, problems = [], []
    for p in paths:
        path = Path(p)
        try:
            if all_volumes or looks_like_volume(path):
                vol = read_volume(path, spacing=spacing, laterality=laterality, max_pixels=max_pixels)
                sources.append(Source(path, vol, vol.spacing_um, vol.laterality))
            else:
                read_image_file(path, max_pixels)
                sources.append(Source(path, None, spacing or (math.nan,) * 3, laterality or ""))
        except VolumeError as exc:
            problems.append(ConfigError(str(exc), option=exc.option or "images"))
        except ConfigError as exc:
            problems.append(exc)
    raise_problems(problems, len(paths))
    return sources


def unique_stems(option: str, sources) -> None:
    stems = [s.stem for s in sources]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ConfigError(f"several inputs are named {twice[0]!r}: their outputs would overwrite each other",
                          option=option)


def per_input_files(option: str, target, sources, suffixes: tuple) -> list:
    """Where each input's file goes: the file named (one input), or <folder>/<stem><suffix>."""
    if not target:
        return [None] * len(sources)
    out = Path(target)
    if len(sources) == 1 and not out.is_dir():
        if not out.name.endswith(suffixes):
            raise ConfigError(f"{out}: name a {' or '.join(suffixes)} file", option=option)
        check_destination(option, out)
        return [out]
    if out.is_file():
        raise ConfigError(f"{out}: is a file; with several inputs, name a folder", option=option)
    unique_stems(option, sources)
    make_folder(option, out)
    return [out / f"{s.stem}{suffixes[0]}" for s in sources]


def overlay_folders(target, sources) -> list:
    """Per input, where its overlays go: (folder, None) for a volume (bscan_000.png ...), or
    (None, file) for an image. One volume: the folder named; several inputs: <folder>/<stem>/."""
    out = Path(target)
    if out.is_file():
        raise ConfigError(f"{out}: is a file; a volume's overlays need a folder (one PNG per B-scan)",
                          option="overlay")
    unique_stems("overlay", sources)
    make_folder("overlay", out)
    if len(sources) == 1:
        return [(out, None)]
    return [(out / s.stem, None) if s.volume is not None else (None, out / f"{s.stem}.png") for s in sources]


def check_nifti_spacing(sources, targets) -> None:
    for source, target in zip(sources, targets):
        if target is None:
            continue
        try:
            nifti_zooms_mm(source.spacing_um, source.n_bscans)
        except VolumeError as exc:
            raise ConfigError(f"{source.path}: {exc} (--spacing)", option="nifti") from None


def batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def segment_frames(pipeline, source: Source, batch: int, max_pixels: int, progress=None):
    """(frame index, grey frame, prediction) per B-scan, encoded ``batch`` B-scans at a time."""
    index = 0
    for grays in batched(source.frames(max_pixels), batch):
        encoded = pipeline.encode_batch(grays) if len(grays) > 1 else [pipeline.encode(grays[0])]
        for gray, enc in zip(grays, encoded):
            yield index, gray, pipeline.predict(enc)
            index += 1
            if progress is not None:
                progress.update(1)


def progress_bar(total: int):
    from tqdm import tqdm

    # on a terminal only (disable=None): redirected stderr keeps its one line per input
    return tqdm(total=total, unit="B-scan", file=sys.stderr, disable=None, leave=False)
