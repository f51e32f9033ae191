"""`segment`: B-scans and scanner volumes -> layer polygons (JSON), colour overlays, label volumes."""

import json
import sys
from pathlib import Path

import numpy as np

from sam2oct.cli.flags import SEGMENT_OPTIONS, add_option_flags, option_values, with_checkpoint
from sam2oct.cli.overlay import render_overlay
from sam2oct.cli.paths import check_destination, overlay_targets, write_output
from sam2oct.cli.volume_io import (FLAG_NAMES, check_nifti_spacing, overlay_folders, per_input_files, progress_bar,
                                   read_sources, segment_frames, spacing_flag)
from sam2oct.data.cvat_bundle import frame_names
from sam2oct.errors import ConfigError


def run(args) -> int:
    from sam2oct.data.volumes.label_files import label_dtype, write_labels_npz, write_nifti
    from sam2oct.pipeline.pipeline import Pipeline, preflight

    args.option_names = {**getattr(args, "option_names", {}), **FLAG_NAMES}
    # Each image is encoded once and decoded from its own features: no feature cache.
    options = option_values(args, cache_mb=0)
    if args.batch < 1:
        raise ConfigError(f"must be 1 or more, got {args.batch}", option="batch")
    sources = read_sources(args.images, options.max_pixels, spacing=spacing_flag(args.spacing),
                           laterality=args.laterality)
    volumes = any(s.volume is not None for s in sources)
    if args.overlay and volumes:
        overlays = overlay_folders(args.overlay, sources)
    else:
        overlays = [(None, o) for o in overlay_targets(args.overlay, [s.path for s in sources])]
    label_files = per_input_files("labels", args.labels, sources, (".npz",))
    nifti_files = per_input_files("nifti", args.nifti, sources, (".nii.gz", ".nii"))
    check_nifti_spacing(sources, nifti_files)
    if args.json:
        check_destination("json", Path(args.json))
    options = with_checkpoint(args, options)
    profile = preflight(options)  # device, config, checkpoint and profile, without building the model

    pipeline = Pipeline(options)  # its warnings reach stderr through logging (cli.main)
    print(pipeline.runtime_note, file=sys.stderr)
    labels = pipeline.labels
    results = []
    bar = progress_bar(sum(s.n_bscans for s in sources))
    for source, (overlay_dir, overlay_file), npz, nifti in zip(sources, overlays, label_files, nifti_files):
        keep, maps = npz is not None or nifti is not None, None
        count = 0
        names = frame_names(source.n_bscans)
        if overlay_dir is not None:
            overlay_dir.mkdir(parents=True, exist_ok=True)
        for i, gray, prediction in segment_frames(pipeline, source, args.batch, options.max_pixels, bar):
            # the cleaned map (after the min-area merge) is the answer: polygons trace it, the
            # label files and overlays hold it
            label_map = pipeline.clean(prediction.label_map)
            shapes = pipeline.shapes(label_map)
            count += len(shapes)
            h, w = gray.shape
            entry = {"image": str(source.path)}
            if source.volume is not None:
                entry["bscan"] = i
            entry.update({"width": w, "height": h, "profile": pipeline.profile.name, "classes": list(labels),
                          "ious": {n: round(float(v), 4) for n, v in zip(labels, prediction.ious)},
                          "shapes": shapes})
            results.append(entry)
            if keep:
                if maps is None:
                    maps = np.zeros((source.n_bscans, h, w), label_dtype(len(labels)))
                maps[i] = label_map
            target = overlay_file if overlay_dir is None else overlay_dir / names[i]
            if target is not None:
                write_output("overlay", render_overlay(gray, label_map, shapes, labels).save, target)
        if npz is not None:
            write_output("labels", lambda p: write_labels_npz(p, maps, spacing_um=source.spacing_um,
                                                              laterality=source.laterality,
                                                              class_names=profile.class_names), npz)
        if nifti is not None:
            write_output("nifti", lambda p: write_nifti(p, maps, spacing_um=source.spacing_um), nifti)
        what = f"{source.n_bscans} B-scans, " if source.volume is not None else ""
        print(f"{source.path}: {what}{count} polygons", file=sys.stderr)
    bar.close()
    single = len(results) == 1 and sources[0].volume is None
    text = json.dumps(results[0] if single else results)
    if args.json:
        write_output("json", lambda p: p.write_text(text), Path(args.json))
    else:
        print(text)
    return 0


def add_parser(sub) -> None:
    seg = sub.add_parser("segment", help="segment B-scans or scanner volumes into layer polygons (JSON), overlays "
                                         "and label volumes",
                         description="Segment B-scans and scanner volumes (Heidelberg .vol/.e2e, DICOM OPT, "
                                     "Topcon, Zeiss, multi-page TIFF, a folder of B-scans; docs/volumes.md) into "
                                     "layer polygons (JSON on stdout or --json), colour overlays and label volumes. "
                                     "Every input is checked before the model loads.")
    seg.add_argument("images", nargs="+", metavar="IMAGE",
                     help="B-scan image files (PNG, JPEG, TIFF, BMP, ...) or volumes (files or folders of B-scans)")
    seg.add_argument("--json", metavar="FILE", help="write the layers here (default: stdout); a volume gives one "
                     "entry per B-scan with its 'bscan' index")
    seg.add_argument("--overlay", metavar="PATH", help="write a colour overlay PNG here (a folder for several "
                     "images, and for a volume: one PNG per B-scan)")
    seg.add_argument("--labels", metavar="FILE.npz", help="write the label volume here (.npz: labels [N,H,W], "
                     "spacing_um, laterality, class_names); a folder for several inputs (<name>.npz each)")
    seg.add_argument("--nifti", metavar="FILE.nii.gz", help="write the label volume as NIfTI with its spacing "
                     "(ITK-SNAP, 3D Slicer); a folder for several inputs")
    seg.add_argument("--spacing", metavar="AXIAL,LATERAL,BSCAN", help="micrometres, for inputs that do not "
                     "record it (TIFF, folders, images)")
    seg.add_argument("--laterality", type=str.upper, choices=["OD", "OS"],
                     help="OD or OS, for inputs that do not record it")
    seg.add_argument("--batch", type=int, default=2, help="B-scans per encoder pass (default: %(default)s)")
    add_option_flags(seg, SEGMENT_OPTIONS)
    seg.set_defaults(run=run)
