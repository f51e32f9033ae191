"""`thickness`: layer thickness, the ETDRS grid and en-face maps from a segmented volume.

    python -m sam2oct thickness labels.npz --json report.json --csv sectors.csv --maps maps/
    python -m sam2oct thickness corrected_export.zip --spacing 3.87,11.5,120 --laterality OS
    python -m sam2oct thickness scan.vol --checkpoint CK --json report.json

INPUT is a label volume from `segment --labels` (.npz), a CVAT export of a volume task (zip or
folder; "CVAT for images 1.1", "Segmentation mask 1.1" or images/ + labels/), or a scanner file,
which is segmented first with the same model flags as `segment`. Every flag, output path and the
geometry are checked before the export is read or the model loads.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np

from sam2oct.cli.flags import MODEL_OPTIONS, RUNTIME_OPTIONS, add_option_flags, option_values, with_checkpoint
from sam2oct.cli.paths import check_destination, make_folder, write_output
from sam2oct.errors import ConfigError
from sam2oct.evaluation.thickness.inputs import BSCAN_ORDERS, INFERIOR_FIRST, LabelVolume, pattern_of
from sam2oct.evaluation.thickness.report import PATTERNS

NAMES = {"input": "INPUT", "spacing": "--spacing", "laterality": "--laterality", "bscan_order": "--bscan-order",
         "fovea_bscan": "--fovea-bscan", "fovea_column": "--fovea-column", "pattern": "--pattern",
         "csv": "--csv", "maps": "--maps", "volume_json": "--volume-json"}
_EXPORT_MARKERS = ("annotations.xml", "labelmap.txt")


def parse_spacing(text: str) -> tuple:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or 0 in values[:2]:
        raise ConfigError(f"expected AXIAL,LATERAL,BSCAN in µm (three positive numbers; BSCAN may be 0 for "
                          f"a single B-scan), got {text!r}", option="spacing")
    return values


def input_kind(path: Path) -> str:
    """'npz', 'export' or 'volume' (a scanner file, a multi-page TIFF or a folder of B-scans)."""
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder", option="input")
    if path.is_dir():
        top = {p.name for p in path.iterdir()}
        inner = {q.name for p in path.iterdir() if p.is_dir() for q in p.iterdir()}
        names = top | inner
        if any(m in names for m in _EXPORT_MARKERS) or {"images", "labels"} <= top:
            return "export"
        return "volume"
    if path.suffix.lower() == ".npz":
        return "npz"
    if path.name.lower() == "annotations.xml":
        return "export"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = zf.namelist()
        if members and all(m.endswith(".npy") for m in members):
            return "npz"
        return "export"
    return "volume"


def resolve_geometry(args, n: int, spacing, laterality: str, pattern):
    """(spacing, laterality, pattern) from the input, else the flags; a flag contradicting the
    input is refused, so a file's geometry is never silently replaced."""
    from sam2oct.evaluation.thickness.geometry import Spacing

    if args.spacing is not None:
        given = parse_spacing(args.spacing)
        if n > 1 and given[2] == 0:
            raise ConfigError(f"the B-scan distance is 0, but {args.input} holds {n} B-scans", option="spacing")
        if spacing is not None:
            recorded = (spacing.axial, spacing.lateral, spacing.bscan)
            if not np.allclose(recorded, given, rtol=1e-6):
                raise ConfigError(f"{args.input} records the spacing {_um(recorded)} µm; --spacing is for inputs "
                                  f"without one", option="spacing")
        spacing = Spacing(*given)
    if spacing is None:
        raise ConfigError(f"{args.input} records no voxel spacing; give --spacing AXIAL,LATERAL,BSCAN (µm)",
                          option="spacing")
    if args.laterality:
        if laterality and laterality != args.laterality:
            raise ConfigError(f"{args.input} records laterality {laterality}, not {args.laterality}",
                              option="laterality")
        laterality = args.laterality
    if args.pattern:
        if pattern and pattern != args.pattern:
            raise ConfigError(f"{args.input} records a {pattern} scan", option="pattern")
        pattern = args.pattern
    pattern = pattern or ("raster" if n > 1 else "line")
    if pattern == "raster" and n < 2:
        raise ConfigError(f"{args.input} holds one B-scan: an ETDRS grid needs a raster; give --pattern line or "
                          f"circle", option="pattern")
    if pattern == "raster" and not laterality:
        raise ConfigError(f"{args.input} records no laterality (the ETDRS grid's nasal side depends on it); "
                          f"give --laterality OD or OS", option="laterality")
    return spacing, laterality, pattern


def _with_geometry(vol: LabelVolume, args) -> LabelVolume:
    vol.spacing, vol.laterality, vol.pattern = resolve_geometry(args, vol.labels.shape[0], vol.spacing,
                                                                vol.laterality, vol.pattern)
    return vol


def _um(values) -> str:
    return ",".join(f"{v:.6g}" for v in values)


def _check_outputs(args) -> None:
    for option in ("json", "csv"):
        if getattr(args, option):
            check_destination(option, Path(getattr(args, option)))
    if args.maps:
        make_folder("maps", Path(args.maps))
    outputs = {option: Path(getattr(args, option)).resolve() for option in ("json", "csv") if getattr(args, option)}
    if len(set(outputs.values())) < len(outputs):
        raise ConfigError(f"--json and --csv name the same file {args.csv}", option="csv")
    for option, path in outputs.items():
        if path == Path(args.input).resolve():
            raise ConfigError(f"{path} is INPUT; name another file", option=option)


def _read_labels(args, kind: str) -> LabelVolume:
    """The label volume of an npz or an export (an export's geometry is checked before its pixels
    are read: volume.json and the frame count are cheap)."""
    from sam2oct.evaluation.thickness import inputs

    path = Path(args.input)
    if kind == "npz":
        if args.volume_json:
            raise ConfigError(f"{path} is a label volume, which records its geometry; --volume-json is for "
                              f"CVAT exports", option="volume_json")
        if args.bscan_order == INFERIOR_FIRST:
            raise ConfigError(f"{path}: a label volume from segment is superior-first already", option="bscan_order")
        return _with_geometry(inputs.read_npz(path), args)
    meta = inputs.read_volume_json(args.volume_json or path) or {}
    where = meta.get("_where", str(path))
    n = len(inputs.export_frames(path, meta)) or 1
    inputs.check_frame_count(meta, n, where)
    resolve_geometry(args, n, inputs.spacing_of(meta.get("spacing_um"), n, where),
                     inputs.laterality_of(meta["laterality"]) if meta.get("laterality") else "",
                     inputs.pattern_of(meta.get("scan_pattern")))
    return _with_geometry(inputs.read_export(path, _class_names(args), args.bscan_order, args.volume_json), args)


def _class_names(args):
    from sam2oct.model.profiles import PROFILES, parse_class_names

    if args.class_names:
        return parse_class_names(args.class_names)
    if args.profile:
        return PROFILES[args.profile].class_names
    return None


def segment_bscans(pipeline, bscans: np.ndarray, progress: bool | None = None) -> np.ndarray:
    """[N, H, W] label maps of 8-bit B-scans, one B-scan at a time, with a progress bar on a terminal:
    the cleaned maps (after the min-area merge) that `segment --labels` writes and CVAT receives."""
    from tqdm import tqdm

    dtype = np.uint8 if len(pipeline.labels) <= 256 else np.uint16
    out = np.zeros(bscans.shape, dtype=dtype)
    for i in tqdm(range(len(bscans)), desc="segmenting", unit="B-scan", file=sys.stderr,
                  disable=None if progress is None else not progress):
        gray = bscans[i].astype(np.float32) / 255.0
        out[i] = pipeline.label_map(pipeline.encode(gray))
    return out


def _segment_volume(args) -> LabelVolume:
    """A scanner file: read (geometry checked), then segmented with the model."""
    from sam2oct.evaluation.thickness import inputs
    from sam2oct.pipeline.pipeline import Pipeline, preflight

    try:
        from sam2oct.data.volumes.reader import read_volume
    except ImportError:
        raise ConfigError(f"{args.input}: not a label volume (.npz) or a CVAT export, and this build has no "
                          f"scanner-file reader (sam2oct.data.volumes)", option="input") from None
    if args.volume_json:
        raise ConfigError(f"{args.input} is a scanner file, which records its geometry; --volume-json is for "
                          f"CVAT exports", option="volume_json")
    if args.bscan_order == INFERIOR_FIRST:
        raise ConfigError("scanner files say their B-scan order (the reader puts the most superior first)",
                          option="bscan_order")
    options = option_values(args, cache_mb=0)
    volume = read_volume(args.input, max_pixels=options.max_pixels)
    n = len(volume.bscans)
    spacing, laterality, pattern = resolve_geometry(  # before the model loads
        args, n, inputs.spacing_of(volume.spacing_um, n, str(args.input)), volume.laterality,
        inputs.pattern_of(volume.scan_pattern))
    options = with_checkpoint(args, options)
    profile = preflight(options)
    pipeline = Pipeline(options)  # its warnings reach stderr through logging (cli.main)
    labels = segment_bscans(pipeline, volume.bscans)
    return LabelVolume(labels, tuple(profile.class_names), spacing, laterality, pattern,
                       f"{args.input} ({volume.format}, segmented)")


def run(args) -> int:
    from sam2oct.evaluation.thickness.maps import write_maps
    from sam2oct.evaluation.thickness.report import measure

    args.option_names = {**getattr(args, "option_names", {}), **NAMES}
    for option in ("fovea_bscan", "fovea_column"):
        value = getattr(args, option)
        if value is not None and value < 0:
            raise ConfigError(f"must be an index (0 or more), got {value}", option=option)
    if args.spacing is not None:
        parse_spacing(args.spacing)
    if args.volume_json and not Path(args.volume_json).is_file():
        raise ConfigError(f"{args.volume_json}: no such file", option="volume_json")
    _check_outputs(args)
    kind = input_kind(Path(args.input))
    vol = _segment_volume(args) if kind == "volume" else _read_labels(args, kind)
    report = measure(vol.labels, vol.spacing, vol.laterality, vol.class_names, fovea_bscan=args.fovea_bscan,
                     fovea_column=args.fovea_column, pattern=vol.pattern)
    out = report.as_json()
    out.update(source=vol.source, bscan_order=vol.bscan_order or "superior-first", notes=vol.notes)
    text = json.dumps(out, indent=1, allow_nan=False)
    if args.json:
        write_output("json", lambda p: _atomic_text(p, text), Path(args.json))
    if args.csv:
        write_output("csv", lambda p: _atomic_text(p, report.csv_text()), Path(args.csv))
    if args.maps:
        write_output("maps", lambda p: write_maps(report, p), Path(args.maps))
    if not args.json:
        print(text)
    print(_summary(report, vol), file=sys.stderr)
    return 0


def _atomic_text(path, text: str) -> None:
    from sam2oct.evaluation.thickness.outputs import atomic_write

    atomic_write(path, text.encode())


def _summary(report, vol) -> str:
    n, h, w = report.shape
    where = "not looked for (circle scan)" if report.fovea is None else \
        f"B-scan {report.fovea[0]}, column {report.fovea[1]} ({report.fovea_source})"
    text = f"{vol.source}: {n} B-scan(s) of {w}x{h}, {report.pattern}; fovea {where}"
    if report.has_grid:
        text += f"; CST {report.cst_um:.1f} µm" if report.cst_um is not None else "; CST: no data"
        low = [s for s, c in report.coverage.items() if c < 0.999]
        text += f"; sectors not fully covered: {', '.join(low)}" if low else "; grid fully covered"
    for note in vol.notes:
        text += f"\nnote: {note}"
    return text


def add_parser(sub) -> None:
    th = sub.add_parser(
        "thickness", help="layer thickness, ETDRS sectors and en-face maps from a segmented volume",
        description="Layer thickness per A-scan, the fovea, the nine ETDRS sectors (mean µm, volume, coverage) "
                    "and en-face heat maps, from a label volume (.npz from `segment --labels`), a CVAT export "
                    "of a volume task, or a scanner file (segmented first). Line and circle scans get a "
                    "thickness profile instead of a grid. See docs/thickness.md.")
    th.add_argument("input", metavar="INPUT", help="a .npz label volume, a CVAT export (zip or folder), or a "
                    "scanner file")
    th.add_argument("--volume-json", metavar="FILE",
                    help="the volume.json of the cvat-task bundle the task was made from (a CVAT export does not "
                         "keep it): spacing, laterality, pattern, frame order")
    th.add_argument("--spacing", metavar="AXIAL,LATERAL,BSCAN",
                    help="voxel spacing in µm, for inputs that do not record it")
    th.add_argument("--laterality", type=str.upper, choices=["OD", "OS"],
                    help="the eye, for inputs that do not record it (nasal is +x in OD, -x in OS)")
    th.add_argument("--bscan-order", choices=BSCAN_ORDERS,
                    help="frame order of an export that does not say (default: superior-first)")
    th.add_argument("--pattern", choices=PATTERNS, type=pattern_of,
                    help="scan pattern, for inputs that do not record it (default: raster for several "
                         "B-scans, line for one)")
    th.add_argument("--fovea-bscan", type=int, metavar="N", help="the fovea's B-scan (frame 0 = most superior); "
                    "default: found")
    th.add_argument("--fovea-column", type=int, metavar="N", help="the fovea's A-scan column; default: found")
    th.add_argument("--json", metavar="FILE", help="write the report here (default: stdout)")
    th.add_argument("--csv", metavar="FILE", help="write the sector means (one row per layer), or a line scan's "
                    "profile, here")
    th.add_argument("--maps", metavar="DIR", help="write en-face heat maps (PNG) and raw maps (.npy) here")
    add_option_flags(th, MODEL_OPTIONS + ("max_pixels", "torch_threads") + RUNTIME_OPTIONS, class_names={
        "help": "the classes, comma-separated, background first: of the model for a scanner file, of the "
                "export's labels for an export (default: from volume.json, else the released profile that "
                "names them)"})
    th.set_defaults(run=run)
