"""`finetune`: adapt a checkpoint to labelled B-scans; writes the released checkpoint format."""

import json
import sys
from dataclasses import replace
from pathlib import Path

from sam2oct.cli.flags import MODEL_OPTIONS, RUNTIME_OPTIONS, add_option_flags, options_from_args
from sam2oct.cli.paths import check_destination, write_output
from sam2oct.errors import ConfigError


def run(args) -> int:
    """Every user error is found before the model is built: options, paths, device, classes, data."""
    from sam2oct.data.datasets import load_dataset, split_by_volume
    from sam2oct.training.finetune import FinetuneOptions, check_options, run
    from sam2oct.model.device import resolve_device
    from sam2oct.pipeline.pipeline import preflight

    vars(args).setdefault("option_names", {}).update({
        **{name: "--" + name.replace("_", "-") for name in (
            "mode", "steps", "batch", "rank", "lr_encoder", "lr_decoder", "warmup", "views", "val",
            "val_fraction", "out", "report")}, "data": "DATA"})
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
    check_destination("out", out)
    if args.report:
        check_destination("report", Path(args.report))
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
                     progress=sys.stderr.isatty(), runtime=options.runtime, precision=options.precision,
                     ov_cache_dir=options.ov_cache_dir, encode_batch=args.batch)
    except KeyboardInterrupt:
        print(f"error: interrupted; {out} was not written", file=sys.stderr)
        return 130
    validation = report["validation"]
    if validation is not None:
        b, a = validation["before"]["mean_iou"], validation["after"]["mean_iou"]
        print(f"validation mean IoU (layers): {_pct(b)} before, {_pct(a)} after", file=sys.stderr)
    if args.report:
        write_output("report", lambda p: p.write_text(json.dumps(report, indent=1, allow_nan=False)), Path(args.report))
    print(f"wrote {out} ({report['steps']} steps, {report['wall_s']:.0f} s)", file=sys.stderr)
    return 0


def _data_summary(path, dataset) -> dict:
    volumes = sorted({s.volume if s.volume is not None else s.name for s in dataset.samples})
    return {"path": str(path), "source": dataset.source, "images": len(dataset.samples),
            "volumes": len(volumes), "volume_names": volumes, "skipped": dict(dataset.skipped)}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def add_parser(sub) -> None:
    ft = sub.add_parser("finetune", help="adapt a checkpoint to your own labelled B-scans (CVAT export)",
                        description="Fine-tune a checkpoint on annotated B-scans and write a checkpoint with the "
                                    "same keys (docs/finetune.md). Every input is checked before the model loads.")
    ft.add_argument("data", metavar="DATA", help="training B-scans: a CVAT export ('CVAT for images 1.1' or "
                    "'Segmentation mask 1.1', zip or folder) or a folder with images/ and labels/")
    ft.add_argument("--out", required=True, metavar="FILE", help="write the fine-tuned checkpoint here")
    add_option_flags(ft, MODEL_OPTIONS + ("max_pixels",) + RUNTIME_OPTIONS, class_names={
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
    ft.set_defaults(run=run)
