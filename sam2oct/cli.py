"""Command line: segment a B-scan, download or slim a checkpoint.

    python -m sam2oct segment IMAGE --checkpoint CKPT --json out.json --overlay out.png
    python -m sam2oct download {mgu,mgu_prompted,nr206}
    python -m sam2oct convert IN OUT
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

    ev = sub.add_parser("evaluate", help="score a checkpoint on annotated B-scans (IoU, Dice, boundary error)")
    ev.add_argument("data", metavar="DATA",
                    help="CVAT export (zip or folder: 'CVAT for images 1.1', 'Segmentation mask 1.1') "
                         "or a folder with images/ and labels/")
    ev.add_argument("--checkpoint", required=True, help="SAM2-OCT checkpoint file")
    ev.add_argument("--config", default=None, help="SAM 2 model config (default: SAM 2.1 Hiera Base+)")
    ev.add_argument("--profile", choices=sorted(PROFILES), help="default: inferred from the class count")
    ev.add_argument("--class-names", help="comma-separated class names overriding the profile's")
    ev.add_argument("--preprocess", choices=["stretch", "pad-equalize", "both"],
                    help="default: the profile's; 'both' scores the two side by side")
    ev.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    ev.add_argument("--json", help="write the full report here (per class, per image)")
    ev.add_argument("--max-pixels", type=int, default=4096 * 4096)
    ev.set_defaults(run=_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Sam2OctError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _evaluate(args) -> int:
    from sam2oct.checkpoint import num_classes_of, read_state_dict
    from sam2oct.datasets import DatasetError, load_dataset
    from sam2oct.evaluate import compare, format_table, score
    from sam2oct.profiles import resolve_profile

    if not Path(args.data).exists():
        raise DatasetError(f"dataset not found: {args.data}")
    # The classes come from the checkpoint's K (weights mapped, not built into a model), so a
    # label the model does not know stops the run before the slow part.
    k = num_classes_of(read_state_dict(args.checkpoint), args.checkpoint)
    profile = resolve_profile(k, args.profile, args.class_names)
    dataset = load_dataset(args.data, profile.class_names, max_pixels=args.max_pixels)
    skipped = ", ".join(f"{v} {k}" for k, v in dataset.skipped.items())
    print(f"{dataset.source}: {len(dataset)} B-scans" + (f"; skipped {skipped}" if skipped else ""),
          file=sys.stderr)
    modes = ["stretch", "pad-equalize"] if args.preprocess == "both" else [args.preprocess or profile.preprocess]
    predictors = _label_map_predictors(args, modes)
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


def _label_map_predictors(args, modes) -> dict:
    """{preprocessing: grey frame -> label map}, one model shared by all."""
    import torch

    from sam2oct.checkpoint import load_model
    from sam2oct.predictor import SemanticPredictor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, args.config, device)
    return {mode: (lambda gray, p=SemanticPredictor(model, mode, cache_size=1): p.predict(gray).label_map)
            for mode in modes}
