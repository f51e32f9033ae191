"""Command line: segment B-scans, score and fine-tune a checkpoint, download or slim one.

    python -m sam2oct download nr206                      # once: models/nr206/...
    python -m sam2oct segment IMAGE... --json out.json --overlay out.png
    python -m sam2oct evaluate DATA --checkpoint CK [--preprocess both] --json REPORT
    python -m sam2oct convert IN OUT
    python -m sam2oct finetune DATA --checkpoint BASE --out OUT.pt [--val DATA2 | --val-fraction F]

A thin front door over sam2oct.pipeline.pipeline: flags become ``PipelineOptions`` (their defaults and
help come from there), and every user error is found before the model loads and said in one
line, ``error: --flag: what is wrong``, with exit status 2.

Other subcommands reuse the model flags: ``add_option_flags(parser, MODEL_OPTIONS)`` adds
--checkpoint (with --models-dir), --config, --profile, --class-names, --preprocess and --device
with the pipeline's defaults; ``options_from_args(args)`` turns them into checked
``PipelineOptions`` (finding the checkpoint when none is named: ``option_values`` then
``with_checkpoint``, to check other inputs in between); ``pipeline.preflight(options)``
then checks the device, config, checkpoint and profile without building the model. Raise
``Sam2OctError`` (``option=`` a pipeline option or a key of ``OPTION_NAMES``) and ``main`` says
it in the command line's names.
"""

import argparse
import json
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam2oct.errors import ConfigError, RequestError, Sam2OctError, describe
from sam2oct.pipeline.pipeline import LABEL_STYLES, OPTION_HELP, PRECISIONS, PipelineOptions
from sam2oct.model.preprocessing import PREPROCESS_MODES
from sam2oct.model.profiles import PROFILES
from sam2oct.serving.settings import OPTION_ENV

# pipeline option -> its flag
OPTION_FLAGS = {
    "checkpoint": "--checkpoint",
    "config": "--config",
    "device": "--device",
    "profile": "--profile",
    "class_names": "--class-names",
    "preprocess": "--preprocess",
    "label_style": "--label-style",
    "precision": "--precision",
    "simplify": "--simplify",
    "min_area": "--min-area",
    "max_pixels": "--max-pixels",
    "torch_threads": "--threads",
}
# What errors are named by: the flags, and the command line's own settings.
OPTION_NAMES = {**OPTION_FLAGS, "models_dir": "--models-dir", "json": "--json", "overlay": "--overlay"}
# The flags of every command that runs the model (segment, evaluate, finetune).
MODEL_OPTIONS = ("checkpoint", "config", "profile", "class_names", "preprocess", "device")
SEGMENT_OPTIONS = MODEL_OPTIONS + ("label_style", "precision", "simplify", "min_area", "max_pixels", "torch_threads")

_CHOICES = {"profile": tuple(PROFILES), "preprocess": PREPROCESS_MODES, "label_style": LABEL_STYLES,
            "precision": PRECISIONS}
_METAVARS = {"checkpoint": "FILE", "config": "CONFIG", "device": "DEVICE", "class_names": "NAMES",
             "simplify": "PX", "min_area": "PIXELS", "max_pixels": "PIXELS", "torch_threads": "N"}
_CHECKPOINT_ENV = OPTION_ENV["checkpoint"]
_CHECKPOINT_HELP = (f" (default: ${_CHECKPOINT_ENV}, else the checkpoint `python -m sam2oct download` "
                    f"stored under --models-dir)")

# Distinct, colour-blind-friendlier hues for up to 12 layers (background is left uncoloured).
PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
]


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the command line's one-line format."""

    def error(self, message):
        message = message.removeprefix("argument ")
        self.exit(2, f"error: {message}; see: {self.prog} --help\n")


def _choice(text: str) -> str:
    return text.strip().lower()


def add_option_flags(parser, options=MODEL_OPTIONS, **overrides) -> None:
    """Add the flags of these pipeline options, with the pipeline's defaults and help.

    ``overrides``: per option, argparse keywords to change (e.g. ``preprocess={"choices": [...]}``).
    --checkpoint brings --models-dir, where it looks when neither it nor $SAM2_CHECKPOINT is set.
    """
    defaults = {f.name: f.default for f in fields(PipelineOptions)}
    for name in options:
        default = defaults[name]
        kw = {"dest": name, "default": default, "help": OPTION_HELP[name]}
        if name in _METAVARS:
            kw["metavar"] = _METAVARS[name]
        if name in _CHOICES:
            kw.update(choices=_CHOICES[name], type=_choice)
        elif isinstance(default, (int, float)):
            kw.update(type=type(default))
        if name == "checkpoint":
            kw["help"] += _CHECKPOINT_HELP
        elif default not in (None, ""):
            kw["help"] += " (default: %(default)s)"
        kw.update(overrides.get(name, {}))
        parser.add_argument(OPTION_FLAGS[name], **kw)
        if name == "checkpoint":
            parser.add_argument("--models-dir", default="models", metavar="DIR",
                                help="where `download` stores checkpoints (default: %(default)s)")


def option_values(args, **overrides) -> PipelineOptions:
    """Checked PipelineOptions from the parsed flags as given (``overrides`` win); no file is read."""
    values = {name: getattr(args, name) for name in PipelineOptions.names() if hasattr(args, name)}
    values.update(overrides)
    return PipelineOptions(**values)


def with_checkpoint(args, options: PipelineOptions) -> PipelineOptions:
    """The options with a checkpoint: --checkpoint, else $SAM2_CHECKPOINT, else the one `download`
    stored under --models-dir (that of --profile, or the only one; it then sets the profile too)."""
    if options.checkpoint or not hasattr(args, "checkpoint"):
        return options
    from_env = os.environ.get(_CHECKPOINT_ENV, "").strip()
    if from_env:
        args.option_names = {"checkpoint": _CHECKPOINT_ENV}  # its errors name where it came from
        print(f"using checkpoint {from_env} (${_CHECKPOINT_ENV})", file=sys.stderr)
        return replace(options, checkpoint=from_env)
    from sam2oct.model.hub import stored_checkpoint

    path, profile = stored_checkpoint(getattr(args, "models_dir", "models"), options.profile or None)
    print(f"using checkpoint {path} (downloaded, profile {profile})", file=sys.stderr)
    return replace(options, checkpoint=str(path), profile=profile)


def options_from_args(args, **overrides) -> PipelineOptions:
    """option_values, then with_checkpoint: what a command that runs the model starts from."""
    return with_checkpoint(args, option_values(args, **overrides))


# --- segment ------------------------------------------------------------------------------------

def render_overlay(gray: np.ndarray, label_map: np.ndarray, shapes: list, class_names, alpha=0.4) -> Image.Image:
    """Layers tinted over the grey B-scan, each polygon outlined in its layer's colour."""
    base = np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    colours = np.array([PALETTE[k % len(PALETTE)] for k in range(len(class_names))], dtype=np.float32)
    tint = colours[label_map]
    out = np.where(label_map[..., None] > 0, base * (1 - alpha) + tint * alpha, base).astype(np.uint8)
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    index = {name: k for k, name in enumerate(class_names)}
    for shape in shapes:
        colour = PALETTE[index[shape["label"]] % len(PALETTE)]
        draw.polygon([tuple(p) for p in shape["points"]], outline=colour)
    return image


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


def _check_images(paths, max_pixels: int) -> None:
    """Every image is there and decodes, before the model loads (a B-scan decodes in milliseconds)."""
    problems = []
    for path in paths:
        try:
            read_image_file(path, max_pixels)
        except ConfigError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        shown = "; ".join(str(p) for p in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ConfigError(f"{len(problems)} of {len(paths)} images cannot be used: {shown}{more}", option="images")


def _make_folder(option: str, folder: Path) -> None:
    existing = next(f for f in (folder, *folder.parents) if f.exists())
    if not existing.is_dir():
        raise ConfigError(f"{folder}: cannot be a folder, {existing} is a file", option=option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create this folder ({exc.strerror or exc})", option=option) from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{folder}: cannot write in this folder (permission denied)", option=option)


def _check_destination(option: str, path: Path) -> None:
    """A file we will write: not a folder, its folder made, writable."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; name the file to write", option=option)
    _make_folder(option, path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{path}: cannot be overwritten (permission denied)", option=option)


def _overlay_targets(overlay, images) -> list:
    """Where each image's overlay goes: the file named, or <folder>/<image name>.png."""
    if not overlay:
        return [None] * len(images)
    out = Path(overlay)
    if len(images) == 1 and not out.is_dir():
        if out.suffix.lower() not in Image.registered_extensions():
            raise ConfigError(f"{out}: no image format has the extension {out.suffix!r}; name a .png file",
                              option="overlay")
        _check_destination("overlay", out)
        return [out]
    if out.is_file():
        raise ConfigError(f"{out}: is a file; with several images, name a folder for their overlays", option="overlay")
    stems = [Path(p).stem for p in images]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ConfigError(f"several images are named {twice[0]!r}: their overlays would overwrite each other "
                          f"in {out}", option="overlay")
    _make_folder("overlay", out)
    return [out / f"{stem}.png" for stem in stems]


def _write(option: str, write, path) -> None:
    try:
        write(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be written ({exc.strerror or exc})", option=option) from None


def _segment(args) -> int:
    from sam2oct.pipeline.pipeline import Pipeline, preflight

    # Each image is encoded once and decoded from its own features: no feature cache.
    options = option_values(args, cache_mb=0)
    _check_images(args.images, options.max_pixels)
    overlays = _overlay_targets(args.overlay, args.images)
    if args.json:
        _check_destination("json", Path(args.json))
    options = with_checkpoint(args, options)
    preflight(options)  # device, config, checkpoint and profile, without building the model

    pipeline = Pipeline(options)
    for message, option in pipeline.warnings:
        print(f"warning: {OPTION_NAMES.get(option, option)}: {message}", file=sys.stderr)
    labels = pipeline.labels
    results = []
    for path, overlay in zip(args.images, overlays):
        gray = read_image_file(path, options.max_pixels)
        prediction = pipeline.predict(pipeline.encode(gray))
        shapes = pipeline.shapes(prediction.label_map)
        h, w = gray.shape
        results.append({
            "image": str(path), "width": w, "height": h, "profile": pipeline.profile.name,
            "classes": list(labels),
            "ious": {n: round(float(v), 4) for n, v in zip(labels, prediction.ious)},
            "shapes": shapes,
        })
        if overlay is not None:
            _write("overlay", render_overlay(gray, prediction.label_map, shapes, labels).save, overlay)
        print(f"{path}: {len(shapes)} polygons, {len({s['label'] for s in shapes})} layers", file=sys.stderr)
    text = json.dumps(results[0] if len(results) == 1 else results)
    if args.json:
        _write("json", lambda p: p.write_text(text), Path(args.json))
    else:
        print(text)
    return 0


# --- download, convert ----------------------------------------------------------------------------

def _download(args) -> int:
    from sam2oct.model.hub import download

    path = download(args.profile, args.models_dir, args.revision)
    print(f"saved {path}\nuse it with: python -m sam2oct segment IMAGE   (it finds {path} in "
          f"{args.models_dir}/), or: export {_CHECKPOINT_ENV}={path.resolve()}")
    return 0


def _convert(args) -> int:
    from sam2oct.model.hub import convert

    info = convert(args.src, args.dst, args.config)
    print(f"wrote {args.dst}: {info['tensors']} tensors, K={info['num_classes']}, {info['bytes'] / 2**20:.1f} MiB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sam2oct", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment B-scans into layer polygons (JSON) and an overlay PNG",
                         description="Segment B-scans into layer polygons (JSON on stdout or --json) and "
                                     "colour overlays. Every input is checked before the model loads.")
    seg.add_argument("images", nargs="+", metavar="IMAGE", help="B-scan image files (PNG, JPEG, TIFF, BMP, ...)")
    seg.add_argument("--json", metavar="FILE", help="write the layers here (default: stdout)")
    seg.add_argument("--overlay", metavar="PATH", help="write a colour overlay PNG here (a folder for several images)")
    add_option_flags(seg, SEGMENT_OPTIONS)
    seg.set_defaults(run=_segment)

    dl = sub.add_parser("download", help="fetch a released checkpoint into models/<profile>/")
    dl.add_argument("profile", choices=sorted(PROFILES))
    dl.add_argument("--models-dir", default="models", metavar="DIR", help="default: %(default)s")
    dl.add_argument("--revision", help="hub commit to fetch (default: the recorded one, else main)")
    dl.set_defaults(run=_download)

    cv = sub.add_parser("convert", help="write a slim weights-only copy of a checkpoint")
    cv.add_argument("src")
    cv.add_argument("dst")
    add_option_flags(cv, ("config",))
    cv.set_defaults(run=_convert)

    ev = sub.add_parser("evaluate", help="score a checkpoint on annotated B-scans (IoU, Dice, boundary error)")
    ev.add_argument("data", metavar="DATA",
                    help="CVAT export (zip or folder: 'CVAT for images 1.1', 'Segmentation mask 1.1') "
                         "or a folder with images/ and labels/")
    add_option_flags(ev, MODEL_OPTIONS + ("max_pixels",), preprocess={
        "choices": list(PREPROCESS_MODES) + ["both"],
        "help": OPTION_HELP["preprocess"] + "; 'both' scores the two side by side"})
    ev.add_argument("--json", help="write the full report here (per class, per image)")
    ev.set_defaults(run=_evaluate)

    ft = sub.add_parser("finetune", help="adapt a checkpoint to your own labelled B-scans (CVAT export)",
                        description="Fine-tune a checkpoint on annotated B-scans and write a checkpoint with the "
                                    "same keys (docs/finetune.md). Every input is checked before the model loads.")
    ft.add_argument("data", metavar="DATA", help="training B-scans: a CVAT export ('CVAT for images 1.1' or "
                    "'Segmentation mask 1.1', zip or folder) or a folder with images/ and labels/")
    ft.add_argument("--out", required=True, metavar="FILE", help="write the fine-tuned checkpoint here")
    add_option_flags(ft, MODEL_OPTIONS + ("max_pixels",), class_names={
        "help": "comma-separated names of all K channels in channel order, as for segment and the function"})
    ft.add_argument("--mode", choices=["lora", "decoder", "full"], default="lora",
                    help="lora: adapters + class heads; decoder: frozen, cached encoder; full: all (default: %(default)s)")
    ft.add_argument("--steps", type=int, default=300, help="optimiser steps, exactly (default: %(default)s)")
    ft.add_argument("--batch", type=int, default=2, help="B-scans per step (default: %(default)s)")
    ft.add_argument("--rank", type=int, default=8, help="LoRA rank (default: %(default)s)")
    ft.add_argument("--lr-encoder", type=float, help="encoder-side learning rate (default: per mode)")
    ft.add_argument("--lr-decoder", type=float, help="decoder-side learning rate (default: per mode)")
    ft.add_argument("--warmup", type=int, help="warm-up steps before the cosine decay (default: 5%% of the steps)")
    ft.add_argument("--views", type=int, default=3, help="decoder mode: cached encodings per B-scan "
                    "(the original + augmented copies; default: %(default)s)")
    ft.add_argument("--no-augment", action="store_true", help="train on the B-scans as they are")
    val = ft.add_mutually_exclusive_group()
    val.add_argument("--val", metavar="DATA2", help="validation B-scans (same formats as DATA)")
    val.add_argument("--val-fraction", type=float, metavar="F",
                     help="hold out about this fraction of DATA, whole volumes")
    ft.add_argument("--report", metavar="FILE", help="write the JSON report here")
    ft.add_argument("--seed", type=int, default=0, help="data order, augmentations, adapter init (default: %(default)s)")
    ft.set_defaults(run=_finetune)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: one line and exit 2 (_Parser.error)
    try:
        return args.run(args)
    except Sam2OctError as exc:
        names = {**OPTION_NAMES, **getattr(args, "option_names", {})}
        print(f"error: {describe(exc, names)}", file=sys.stderr)
        return 2


def _evaluate(args) -> int:
    from sam2oct.data.datasets import DatasetError, load_dataset
    from sam2oct.evaluation.evaluate import compare, format_table, score
    from sam2oct.pipeline.pipeline import preflight

    if not Path(args.data).exists():
        raise DatasetError(f"dataset not found: {args.data}")
    both = args.preprocess == "both"
    # Each frame is encoded once per preprocessing: no feature cache.
    options = options_from_args(args, preprocess="" if both else args.preprocess, cache_mb=0)
    # The classes come from the checkpoint's K without building the model, so a label the
    # model does not know stops the run before the slow part.
    profile = preflight(options)
    dataset = load_dataset(args.data, profile.class_names, max_pixels=options.max_pixels)
    skipped = ", ".join(f"{v} {k}" for k, v in dataset.skipped.items())
    print(f"{dataset.source}: {len(dataset)} B-scans" + (f"; skipped {skipped}" if skipped else ""),
          file=sys.stderr)
    modes = list(PREPROCESS_MODES) if both else [options.preprocess or profile.preprocess]
    predictors = _label_map_predictors(options, modes)
    def progress(i, n, sample, mode=None):
        print(f"[{i}/{n}] {sample.name}" + (f" ({mode})" if mode else ""), file=sys.stderr)

    reports = {mode: score(dataset, predict, lambda *a, m=mode: progress(*a, m if len(modes) > 1 else None))
               for mode, predict in predictors.items()}
    report = compare(reports) if len(reports) > 1 else {"preprocess": modes[0], **reports[modes[0]]}
    report["source"], report["skipped"] = dataset.source, dataset.skipped
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, allow_nan=False))
    return 0


def _label_map_predictors(options, modes) -> dict:
    """{preprocessing: grey frame -> label map}, one model shared by all."""
    from sam2oct.pipeline.pipeline import Pipeline

    first = Pipeline(replace(options, preprocess=modes[0]))
    pipelines = [first] + [Pipeline(replace(options, preprocess=m), model=first.predictor.model) for m in modes[1:]]
    return {m: (lambda gray, p=p: p.predict(p.encode(gray)).label_map) for m, p in zip(modes, pipelines)}


# --- finetune ---------------------------------------------------------------------------------------

def _finetune(args) -> int:
    """Every user error is found before the model is built: options, paths, device, classes, data."""
    from sam2oct.data.datasets import load_dataset, split_by_volume
    from sam2oct.training.finetune import FinetuneOptions, check_options, run
    from sam2oct.pipeline.pipeline import preflight, resolve_device

    args.option_names = {**getattr(args, "option_names", {}), **{
        name: "--" + name.replace("_", "-") for name in (
            "mode", "steps", "batch", "rank", "lr_encoder", "lr_decoder", "warmup", "views", "val",
            "val_fraction", "out", "report")}, "data": "DATA"}
    tuning = FinetuneOptions(
        mode=args.mode, steps=args.steps, batch=args.batch, rank=args.rank, lr_encoder=args.lr_encoder,
        lr_decoder=args.lr_decoder, warmup=args.warmup, seed=args.seed, augment=not args.no_augment,
        views=args.views)
    check_options(tuning)
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise ConfigError(f"must be between 0 and 1, got {args.val_fraction}", option="val_fraction")
    for option, path in (("data", args.data), ("val", args.val)):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"not found: {path}", option=option)
    out = Path(args.out)
    _check_destination("out", out)
    if args.report:
        _check_destination("report", Path(args.report))
    options = options_from_args(args, cache_mb=0)
    if out.exists() and Path(options.checkpoint).exists() and out.resolve() == Path(options.checkpoint).resolve():
        raise ConfigError("is the base checkpoint; write the fine-tuned one to another file", option="out")
    profile = preflight(options)  # device, config, checkpoint and profile, without building the model
    device = resolve_device(options.device)
    tuning = replace(tuning, preprocess=options.preprocess or profile.preprocess, prompted=profile.prompted)

    def load(path):
        try:
            return load_dataset(path, profile.class_names, max_pixels=options.max_pixels)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}", option="data") from None

    train_set = load(args.data)
    val_set = load(args.val) if args.val else None
    if args.val_fraction is not None:
        train_set, val_set = split_by_volume(train_set, args.val_fraction, args.seed)
    data = {"train": _data_summary(args.data, train_set),
            "validation": None if val_set is None else _data_summary(args.val or args.data, val_set)}
    print(f"training on {len(train_set.samples)} B-scans" + (f", validating on {len(val_set.samples)}"
          if val_set is not None else " (no validation: give --val or --val-fraction)"), file=sys.stderr)
    try:
        report = run(train_set, val_set, options.checkpoint, out, config=options.config,
                     class_names=profile.class_names, options=tuning, device=str(device), data=data,
                     progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"error: interrupted; {out} was not written", file=sys.stderr)
        return 130
    validation = report["validation"]
    if validation is not None:
        b, a = validation["before"]["mean_iou"], validation["after"]["mean_iou"]
        print(f"validation mean IoU (layers): {_pct(b)} before, {_pct(a)} after", file=sys.stderr)
    if args.report:
        _write("report", lambda p: p.write_text(json.dumps(report, indent=1, allow_nan=False)), Path(args.report))
    print(f"wrote {out} ({report['steps']} steps, {report['wall_s']:.0f} s)", file=sys.stderr)
    return 0


def _data_summary(path, dataset) -> dict:
    volumes = sorted({s.volume if s.volume is not None else s.name for s in dataset.samples})
    return {"path": str(path), "source": dataset.source, "images": len(dataset.samples),
            "volumes": len(volumes), "volume_names": volumes, "skipped": dict(dataset.skipped)}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.4f}"
