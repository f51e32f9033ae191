"""Command line: segment a B-scan, download or slim a checkpoint.

    python -m sam2oct segment IMAGE --checkpoint CKPT --json out.json --overlay out.png
    python -m sam2oct download {mgu,mgu_prompted,nr206}
    python -m sam2oct convert IN OUT
    python -m sam2oct finetune DATA --checkpoint BASE --out OUT.pt [--val DATA2 | --val-fraction F]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam2oct.errors import Sam2OctError
from sam2oct.profiles import PROFILES

# Distinct, colour-blind-friendlier hues for up to 12 layers (background is left uncoloured).
PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
]


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


def _segment(args) -> int:
    import torch

    from sam2oct.checkpoint import load_model
    from sam2oct.images import read_image
    from sam2oct.polygons import label_map_to_shapes
    from sam2oct.predictor import SemanticPredictor
    from sam2oct.profiles import resolve_profile

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, args.config, device)
    profile = resolve_profile(model.num_classes, args.profile, args.class_names)
    predictor = SemanticPredictor(model, args.preprocess or profile.preprocess, cache_size=1)
    results = []
    for path in args.images:
        gray = read_image(Path(path).read_bytes(), max_pixels=args.max_pixels)
        prediction = predictor.predict(gray)
        shapes = label_map_to_shapes(prediction.label_map, profile.class_names,
                                     tolerance=args.simplify, min_area=args.min_area)
        h, w = gray.shape
        results.append({
            "image": str(path), "width": w, "height": h, "profile": profile.name,
            "classes": list(profile.class_names),
            "ious": {n: round(float(v), 4) for n, v in zip(profile.class_names, prediction.ious)},
            "shapes": shapes,
        })
        if args.overlay:
            out = Path(args.overlay) if len(args.images) == 1 else Path(args.overlay) / f"{Path(path).stem}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            render_overlay(gray, prediction.label_map, shapes, profile.class_names).save(out)
        print(f"{path}: {len(shapes)} polygons, "
              f"{len({s['label'] for s in shapes})} layers", file=sys.stderr)
    doc = results[0] if len(results) == 1 else results
    text = json.dumps(doc)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


def _download(args) -> int:
    from sam2oct.hub import download

    path = download(args.profile, args.models_dir, args.revision)
    print(f"saved {path}\nuse it with: export SAM2_CHECKPOINT={path.resolve()}")
    return 0


def _convert(args) -> int:
    from sam2oct.hub import convert

    info = convert(args.src, args.dst, args.config)
    print(f"wrote {args.dst}: {info['tensors']} tensors, K={info['num_classes']}, {info['bytes'] / 2**20:.1f} MiB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sam2oct", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment B-scans into layer polygons (JSON) and an overlay PNG")
    seg.add_argument("images", nargs="+", metavar="IMAGE")
    seg.add_argument("--checkpoint", required=True, help="SAM2-OCT checkpoint file")
    seg.add_argument("--config", default=None, help="SAM 2 model config (default: SAM 2.1 Hiera Base+)")
    seg.add_argument("--profile", choices=sorted(PROFILES), help="default: inferred from the class count")
    seg.add_argument("--class-names", help="comma-separated class names overriding the profile's")
    seg.add_argument("--preprocess", choices=["stretch", "pad-equalize"], help="default: the profile's")
    seg.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    seg.add_argument("--json", help="write the layers here (default: stdout)")
    seg.add_argument("--overlay", help="write a colour overlay PNG here (a folder for several images)")
    seg.add_argument("--simplify", type=float, default=1.0, help="polygon tolerance in pixels")
    seg.add_argument("--min-area", type=int, default=16, help="merge regions smaller than this (pixels)")
    seg.add_argument("--max-pixels", type=int, default=4096 * 4096)
    seg.set_defaults(run=_segment)

    dl = sub.add_parser("download", help="fetch a released checkpoint into models/<profile>/")
    dl.add_argument("profile", choices=sorted(PROFILES))
    dl.add_argument("--models-dir", default="models")
    dl.add_argument("--revision", help="hub commit to fetch (default: the recorded one, else main)")
    dl.set_defaults(run=_download)

    cv = sub.add_parser("convert", help="write a slim weights-only copy of a checkpoint")
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.add_argument("--config", default=None, help="SAM 2 model config the checkpoint was built from")
    cv.set_defaults(run=_convert)

    ft = sub.add_parser("finetune", help="adapt a checkpoint to your own labelled B-scans (CVAT export)")
    ft.add_argument("data", metavar="DATA", help="training B-scans: a CVAT export ('CVAT for images 1.1' or "
                    "'Segmentation mask 1.1', zip or folder) or a folder with images/ and labels/")
    ft.add_argument("--checkpoint", required=True, help="SAM2-OCT checkpoint to start from")
    ft.add_argument("--out", required=True, help="write the fine-tuned checkpoint here")
    ft.add_argument("--config", default=None, help="SAM 2 model config (default: SAM 2.1 Hiera Base+)")
    ft.add_argument("--profile", choices=sorted(PROFILES), help="default: inferred from the class count")
    ft.add_argument("--class-names", help="comma-separated names of all K channels, as SAM2OCT_CLASS_NAMES")
    ft.add_argument("--preprocess", choices=["stretch", "pad-equalize"], help="default: the profile's")
    ft.add_argument("--mode", choices=["lora", "decoder", "full"], default="lora",
                    help="lora: adapters + class heads (default); decoder: frozen, cached encoder; full: all")
    ft.add_argument("--steps", type=int, default=300, help="optimiser steps, exactly (default: 300)")
    ft.add_argument("--batch", type=int, default=2, help="B-scans per step (default: 2)")
    ft.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    ft.add_argument("--lr-encoder", type=float, help="encoder-side learning rate (default: per mode)")
    ft.add_argument("--lr-decoder", type=float, help="decoder-side learning rate (default: per mode)")
    ft.add_argument("--warmup", type=int, help="warm-up steps before the cosine decay (default: 5%% of the steps)")
    ft.add_argument("--views", type=int, default=3, help="decoder mode: cached encodings per B-scan "
                    "(the original + augmented copies; default: 3)")
    ft.add_argument("--no-augment", action="store_true", help="train on the B-scans as they are")
    val = ft.add_mutually_exclusive_group()
    val.add_argument("--val", metavar="DATA2", help="validation B-scans (same formats as DATA)")
    val.add_argument("--val-fraction", type=float, help="hold out about this fraction of DATA, whole volumes")
    ft.add_argument("--report", help="write the JSON report here")
    ft.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    ft.add_argument("--seed", type=int, default=0, help="data order, augmentations, adapter init (default: 0)")
    ft.add_argument("--max-pixels", type=int, default=4096 * 4096)
    ft.set_defaults(run=_finetune)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Sam2OctError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _finetune(args) -> int:
    """Every user error is found before the model is built: options, paths, device, classes, data."""
    from dataclasses import replace

    import torch

    from sam2oct.checkpoint import load_config, num_classes_of, read_state_dict
    from sam2oct.datasets import load_dataset, split_by_volume
    from sam2oct.errors import ConfigError, DeviceError
    from sam2oct.finetune import FinetuneOptions, check_options, run
    from sam2oct.profiles import resolve_profile

    options = FinetuneOptions(
        mode=args.mode, steps=args.steps, batch=args.batch, rank=args.rank, lr_encoder=args.lr_encoder,
        lr_decoder=args.lr_decoder, warmup=args.warmup, seed=args.seed, augment=not args.no_augment,
        views=args.views)
    try:
        check_options(options)
    except ConfigError as exc:
        raise ConfigError(f"--{exc.option.replace('_', '-')}: {exc}") from None
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise ConfigError(f"--val-fraction: must be between 0 and 1, got {args.val_fraction}")
    for flag, path in (("DATA", args.data), ("--val", args.val)):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{flag}: not found: {path}")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the checkpoint file to write")
    if Path(args.checkpoint).exists() and out.exists() and out.resolve() == Path(args.checkpoint).resolve():
        raise ConfigError("--out is the base checkpoint; write the fine-tuned one to another file")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DeviceError(f"--device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: CUDA is not available on this machine")
    load_config(args.config)
    k = num_classes_of(read_state_dict(args.checkpoint), args.checkpoint)
    profile = resolve_profile(k, args.profile, args.class_names)
    options = replace(options, preprocess=args.preprocess or profile.preprocess, prompted=profile.prompted)

    def load(path):
        try:
            return load_dataset(path, profile.class_names, max_pixels=args.max_pixels)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    train_set = load(args.data)
    val_set = load(args.val) if args.val else None
    if args.val_fraction is not None:
        train_set, val_set = split_by_volume(train_set, args.val_fraction, args.seed)
    data = {"train": _data_summary(args.data, train_set),
            "validation": None if val_set is None else _data_summary(args.val or args.data, val_set)}
    print(f"training on {len(train_set.samples)} B-scans" + (f", validating on {len(val_set.samples)}"
          if val_set is not None else " (no validation: give --val or --val-fraction)"), file=sys.stderr)

    try:
        report = run(train_set, val_set, args.checkpoint, out, config=args.config, class_names=profile.class_names,
                     options=options, device=device, data=data, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"error: interrupted; {out} was not written", file=sys.stderr)
        return 130
    validation = report["validation"]
    if validation is not None:
        b, a = validation["before"]["mean_iou"], validation["after"]["mean_iou"]
        print(f"validation mean IoU (layers): {_pct(b)} before, {_pct(a)} after", file=sys.stderr)
    text = json.dumps(report, indent=1)
    if args.report:
        Path(args.report).write_text(text)
    print(f"wrote {out} ({report['steps']} steps, {report['wall_s']:.0f} s)", file=sys.stderr)
    return 0


def _data_summary(path, dataset) -> dict:
    volumes = sorted({s.volume if s.volume is not None else s.name for s in dataset.samples})
    return {"path": str(path), "source": dataset.source, "images": len(dataset.samples),
            "volumes": len(volumes), "volume_names": volumes, "skipped": dict(dataset.skipped)}


def _pct(value) -> str:
    return "-" if value is None else f"{value:.4f}"
