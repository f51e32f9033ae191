"""`segment`: B-scans -> layer polygons (JSON) and colour overlays."""

import json
import sys
from pathlib import Path

from sam2oct.cli.flags import OPTION_NAMES, SEGMENT_OPTIONS, add_option_flags, option_values, with_checkpoint
from sam2oct.cli.overlay import render_overlay
from sam2oct.cli.paths import check_destination, check_images, overlay_targets, read_image_file, write_output


def run(args) -> int:
    from sam2oct.pipeline.pipeline import Pipeline, preflight

    # Each image is encoded once and decoded from its own features: no feature cache.
    options = option_values(args, cache_mb=0)
    check_images(args.images, options.max_pixels)
    overlays = overlay_targets(args.overlay, args.images)
    if args.json:
        check_destination("json", Path(args.json))
    options = with_checkpoint(args, options)
    preflight(options)  # device, config, checkpoint and profile, without building the model

    pipeline = Pipeline(options)
    for message, option in pipeline.warnings:
        print(f"warning: {OPTION_NAMES.get(option, option)}: {message}", file=sys.stderr)
    labels = pipeline.labels
    results = []
    for path, overlay in zip(args.images, overlays):
        gray = read_image_file(path, options.max_pixels)
        encoded = pipeline.encode(gray)
        prediction = pipeline.predict(encoded)
        label_map = pipeline.label_map(encoded)  # the cleaned map: the overlay shows what the polygons trace
        shapes = pipeline.frame_shapes(encoded)
        h, w = gray.shape
        results.append({
            "image": str(path), "width": w, "height": h, "profile": pipeline.profile.name,
            "classes": list(labels),
            "ious": {n: round(float(v), 4) for n, v in zip(labels, prediction.ious)},
            "shapes": shapes,
        })
        if overlay is not None:
            write_output("overlay", render_overlay(gray, label_map, shapes, labels).save, overlay)
        print(f"{path}: {len(shapes)} polygons, {len({s['label'] for s in shapes})} layers", file=sys.stderr)
    text = json.dumps(results[0] if len(results) == 1 else results)
    if args.json:
        write_output("json", lambda p: p.write_text(text), Path(args.json))
    else:
        print(text)
    return 0




def add_parser(sub) -> None:
    seg = sub.add_parser("segment", help="segment B-scans into layer polygons (JSON) and an overlay PNG",
                         description="Segment B-scans into layer polygons (JSON on stdout or --json) and "
                                     "colour overlays. Every input is checked before the model loads.")
    seg.add_argument("images", nargs="+", metavar="IMAGE", help="B-scan image files (PNG, JPEG, TIFF, BMP, ...)")
    seg.add_argument("--json", metavar="FILE", help="write the layers here (default: stdout)")
    seg.add_argument("--overlay", metavar="PATH", help="write a colour overlay PNG here (a folder for several images)")
    add_option_flags(seg, SEGMENT_OPTIONS)
    seg.set_defaults(run=run)
