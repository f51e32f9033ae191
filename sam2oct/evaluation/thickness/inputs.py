"""Label volumes for thickness: a ``segment --labels`` .npz, or a CVAT export of a volume task.

An export is read through the project's dataset loader ("CVAT for images 1.1", "Segmentation
mask 1.1" or images/ + labels/; zip or folder). Its frames are every image file in the export
(images/ or JPEGImages/), in natural name order (bscan_2 before bscan_10); a frame nobody
annotated stays in its place with no retina, so it counts as not covered instead of shifting the
B-scans after it. Frame 0 is taken as the most superior B-scan unless the bundle's volume.json or
the caller says the frames run inferior-first.

volume.json (written by ``cvat-task --out`` beside annotations.xml) gives what an export lacks:
``spacing_um`` ([axial, lateral, bscan] or {axial, lateral, bscan}, µm; null where unknown),
``laterality``, ``scan_pattern``, and optionally ``bscan_order`` ('superior-first', the default
for a bundle since the volume readers put the most superior B-scan first, or 'inferior-first')
and ``class_names``.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from sam2oct.evaluation.thickness.geometry import Spacing, ThicknessError, laterality_of
from sam2oct.model.profiles import PROFILES

VOLUME_JSON = "volume.json"
_VOLUME_JSON_MAX = 1 << 20
SUPERIOR_FIRST, INFERIOR_FIRST = "superior-first", "inferior-first"
BSCAN_ORDERS = (SUPERIOR_FIRST, INFERIOR_FIRST)
_FRAME_FOLDERS = ("images", "JPEGImages")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class LabelVolume:
    labels: np.ndarray  # [N, H, W] class indices, frame 0 the most superior B-scan
    class_names: tuple
    spacing: Spacing | None  # None: not in the file; the caller must supply it
    laterality: str  # 'OD', 'OS' or '' (not known)
    pattern: str | None  # 'raster', 'line', 'circle', 'radial', or None (not known)
    source: str
    frames: list = field(default_factory=list)  # frame names in volume order (exports)
    bscan_order: str | None = None  # as the input said it, None where it did not
    notes: list = field(default_factory=list)  # what the reader had to assume or skipped


def pattern_of(value) -> str | None:
    """A scan pattern in the thickness report's words, from a reader's wording (None if unknown)."""
    text = str(value or "").strip().lower()
    for key, words in (("circle", ("circle", "circular", "peripapillary")), ("radial", ("radial", "star")),
                       ("raster", ("raster", "volume", "cube", "macular")), ("line", ("line", "single"))):
        if any(w in text for w in words):
            return key
    return None


def spacing_of(value, n_bscans: int, where: str) -> Spacing | None:
    """The spacing a file records, None where it records none (or leaves a needed part unknown:
    null, NaN or 0 from readers that had nothing). A single B-scan needs no B-scan distance."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = [value.get(k) for k in ("axial", "lateral", "bscan")]
    try:
        values = [math.nan if v is None else float(v) for v in np.asarray(value, dtype=object).ravel()]
    except (TypeError, ValueError):
        raise ThicknessError(f"{where}: spacing {value!r} is not three numbers (axial, lateral, B-scan µm)") from None
    if len(values) != 3:
        raise ThicknessError(f"{where}: spacing has {len(values)} numbers, not 3 (axial, lateral, B-scan µm)")
    known = [math.isfinite(v) and v > 0 for v in values]
    if n_bscans == 1 and not known[2]:
        values[2], known[2] = 0.0, True
    if not all(known):
        return None
    try:
        return Spacing(*values)
    except ThicknessError as exc:
        raise ThicknessError(f"{where}: {exc}") from None


def _optional_laterality(value, where):
    if value in (None, ""):
        return ""
    try:
        return laterality_of(value)
    except ThicknessError as exc:
        raise ThicknessError(f"{where}: {exc}") from None


def read_npz(path) -> LabelVolume:
    """The label volume `segment --labels` writes: labels, spacing_um, laterality, class_names."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ThicknessError(f"{path}: not a readable .npz label volume ({exc})") from None
    missing = [k for k in ("labels", "class_names") if k not in fields]
    if missing:
        raise ThicknessError(f"{path}: lacks {', '.join(missing)} (a label volume from `segment --labels` "
                             f"holds labels, spacing_um, laterality and class_names)")
    labels = fields["labels"]
    if labels.ndim == 2:
        labels = labels[None]
    spacing = spacing_of(fields.get("spacing_um"), labels.shape[0], str(path))
    laterality = str(fields["laterality"]) if "laterality" in fields else ""
    pattern = pattern_of(str(fields["scan_pattern"])) if "scan_pattern" in fields else None
    return LabelVolume(labels, tuple(str(n) for n in np.asarray(fields["class_names"]).ravel()),
                       spacing, _optional_laterality(laterality, str(path)),
                       pattern, f"{path} (label volume)")


# --- exports ---------------------------------------------------------------------------------------

def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _export_root(path) -> Path:
    """The export's zip or folder (an annotations.xml given alone stands for its folder)."""
    path = Path(path)
    return path.parent if path.is_file() and path.suffix.lower() == ".xml" else path


def _export_files(path: Path) -> list:
    """Every file name in the export (zip members or paths under the folder), posix, relative."""
    path = _export_root(path)
    if path.is_dir():
        out = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            out += [Path(dirpath, f).relative_to(path).as_posix() for f in filenames]
        return out
    try:
        with zipfile.ZipFile(path) as zf:
            return [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ThicknessError(f"{path}: not a readable zip archive ({exc})") from None


def export_frames(path, meta: dict | None = None) -> list:
    """The export's frame names in volume order: volume.json's ``frames`` where it lists them (a
    cvat-task bundle), else the images under images/ (or JPEGImages/), else the images beside
    annotations.xml (a bundle's layout), in natural name order."""
    listed = (meta or {}).get("frames")
    if listed:
        if not isinstance(listed, list) or not all(isinstance(f, str) and f for f in listed):
            raise ThicknessError(f"{meta.get('_where', path)}: frames must be a list of file names")
        return list(listed)
    files = [n for n in _export_files(Path(path)) if n.lower().endswith(_IMAGE_SUFFIXES)]
    frames = []
    for name in files:
        parts = PurePosixPath(name).parts
        for i, part in enumerate(parts[:-1]):
            if part in _FRAME_FOLDERS:
                frames.append("/".join(parts[i + 1:]))
                break
    if not frames:  # a bundle: frames beside annotations.xml (at the top, or in one top folder)
        frames = [PurePosixPath(n).name for n in files if n.count("/") <= 1]
    return sorted(set(frames), key=_natural_key)


def _place(sample_names, frames, where) -> dict:
    """{sample name: frame index}: by the name, or by its trailing path (a bundle folder read as
    '<bundle>/<frame>')."""
    index = {f: i for i, f in enumerate(frames)}
    out = {}
    for name in sample_names:
        parts = name.split("/")
        hit = next((index["/".join(parts[k:])] for k in range(len(parts)) if "/".join(parts[k:]) in index), None)
        if hit is None:
            raise ThicknessError(f"{where}: B-scan {name!r} of the export is not one of its frames "
                                 f"({frames[0]!r} ... {frames[-1]!r})")
        out[name] = hit
    return out


def read_volume_json(path) -> dict | None:
    """volume.json inside the export (its root or beside annotations.xml), or None; a .json file
    given itself is read as the volume.json (a CVAT export does not keep the bundle's)."""
    path = _export_root(path)
    if path.is_file() and path.suffix.lower() == ".json":
        data, where = path.read_bytes()[:_VOLUME_JSON_MAX + 1], str(path)
    elif path.is_dir():
        found = sorted(path.glob(VOLUME_JSON)) + sorted(path.glob(f"*/{VOLUME_JSON}"))
        if not found:
            return None
        data, where = found[0].read_bytes()[:_VOLUME_JSON_MAX + 1], str(found[0])
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if PurePosixPath(n).name == VOLUME_JSON and n.count("/") <= 1]
                if not names:
                    return None
                name = sorted(names, key=len)[0]
                if zf.getinfo(name).file_size > _VOLUME_JSON_MAX:
                    raise ThicknessError(f"{path}: {name} is over {_VOLUME_JSON_MAX} bytes")
                data, where = zf.read(name), f"{path}: {name}"
        except (zipfile.BadZipFile, OSError, KeyError) as exc:
            raise ThicknessError(f"{path}: not a readable zip archive ({exc})") from None
    if len(data) > _VOLUME_JSON_MAX:
        raise ThicknessError(f"{where}: over {_VOLUME_JSON_MAX} bytes")
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ThicknessError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ThicknessError(f"{where}: not a JSON object")
    meta["_where"] = where
    return meta


def check_frame_count(meta: dict, n: int, where: str) -> None:
    expected = meta.get("n_bscans")
    if expected is not None and int(expected) != n:
        raise ThicknessError(f"{where} describes {expected} B-scans, but the export holds {n}: not this "
                             f"volume's export, or frames were added or deleted in CVAT")


def _load_dataset(path, class_names):
    from sam2oct.data.datasets import load_dataset
    from sam2oct.data.samples import DatasetError

    try:
        return load_dataset(path, class_names)
    except DatasetError as exc:
        raise ThicknessError(str(exc)) from None


def _guess_classes(path):
    """The first released profile whose classes name every label in the export."""
    tried = {}
    for profile in PROFILES.values():
        if profile.class_names in tried.values():
            continue
        try:
            return _load_dataset(path, profile.class_names), profile.name
        except ThicknessError as exc:
            if "unknown label" not in str(exc):
                raise
            tried[profile.name] = profile.class_names
    names = "; ".join(f"{p}: {', '.join(c[1:])}" for p, c in tried.items())
    raise ThicknessError(f"{path}: its labels are not the layers of a released profile ({names}); name the "
                         f"classes (comma-separated, background first)", option="class_names")


def read_export(path, class_names=None, bscan_order: str | None = None, volume_json=None) -> LabelVolume:
    """A CVAT export of one volume as a label volume; class_names default to volume.json's, else
    the released profile whose layers the export's labels are. ``volume_json``: the bundle's
    volume.json where the export does not hold it."""
    path = Path(path)
    meta = read_volume_json(volume_json if volume_json is not None else path) or {}
    where = meta.get("_where", str(path))
    notes = []
    if class_names is None and meta.get("class_names"):
        class_names = tuple(str(c) for c in meta["class_names"])
    if class_names is None:
        dataset, profile = _guess_classes(path)
        notes.append(f"label names read as the classes of profile {profile}")
    else:
        dataset = _load_dataset(path, tuple(class_names))
    volumes = sorted({s.volume or "" for s in dataset.samples})
    if len(volumes) > 1 and all(volumes):
        raise ThicknessError(f"{path}: holds B-scans of {len(volumes)} volumes ({', '.join(volumes[:4])}"
                             f"{', ...' if len(volumes) > 4 else ''}); export one volume's task")
    frames = export_frames(path, meta)
    check_frame_count(meta, len(frames), where)
    place = _place([s.name for s in dataset.samples], frames, where)
    shapes = {s.labels.shape for s in dataset.samples}
    if len(shapes) > 1:
        raise ThicknessError(f"{path}: its B-scans differ in size ({', '.join(f'{w}x{h}' for h, w in sorted(shapes))})")
    h, w = shapes.pop()
    labels = np.zeros((len(frames), h, w), dtype=dataset.samples[0].labels.dtype)
    for sample in dataset.samples:
        labels[place[sample.name]] = sample.labels
    empty = len(frames) - len(set(place.values()))
    if empty:
        notes.append(f"{empty} of {len(frames)} B-scans have no annotation (not covered)")
    # cvat-task writes its frames superior-first (the volume readers reorder), so a bundle's
    # volume.json without a bscan_order says superior-first
    said = meta.get("bscan_order") or (SUPERIOR_FIRST if meta else None)
    if said is not None and said not in BSCAN_ORDERS:
        raise ThicknessError(f"{where}: bscan_order {said!r} is not one of {', '.join(BSCAN_ORDERS)}")
    if said is not None and bscan_order is not None and said != bscan_order:
        raise ThicknessError(f"{where} says the B-scans run {said}; drop the contradicting setting",
                             option="bscan_order")
    order = bscan_order or said
    if order == INFERIOR_FIRST:
        labels, frames = labels[::-1], frames[::-1]
    return LabelVolume(labels, dataset.class_names, spacing_of(meta.get("spacing_um"), len(frames), where),
                       _optional_laterality(meta.get("laterality"), where), pattern_of(meta.get("scan_pattern")),
                       dataset.source, frames, order, notes)
