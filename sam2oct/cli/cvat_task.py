"""`cvat-task`: scanner volumes -> pre-annotated CVAT tasks.

    python -m sam2oct cvat-task VOLUME [VOLUME ...] --out DIR [--polygons]
        [--server-host HOST [--server-port N] [--auth USER[:PASS]] [--project-id N]]

Per volume, DIR/<name>/ gets the bundle of sam2oct/data/cvat_bundle.py (B-scan PNGs in frame
order, the model's layers as "CVAT for images 1.1" masks or polygons, labels.json, volume.json).
With a server (sam2oct/cli/cvat_server.py) each bundle also becomes a task there, its
annotations imported; the URL is printed, and recorded in the bundle's volume.json, which stays
in DIR (a CVAT export does not keep it).
"""

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from sam2oct.cli import cvat_server
from sam2oct.cli.cvat_server import SERVER_FLAGS, add_server_flags, create_task, task_fields, wants_server
from sam2oct.cli.overlay import PALETTE_HEX
from sam2oct.cli.flags import SEGMENT_OPTIONS, add_option_flags, option_values, with_checkpoint
from sam2oct.cli.paths import make_folder
from sam2oct.cli.volume_io import FLAG_NAMES, progress_bar, read_sources, segment_frames, spacing_flag, unique_stems
from sam2oct.data.cvat_bundle import ANNOTATION_FORMAT, ANNOTATIONS_XML, LABELS_JSON, VOLUME_JSON, write_bundle
from sam2oct.errors import ConfigError


def layer_names(profile, label_style: str) -> list:
    """The labels the bundle and the task use for the layers (class 1..K-1), as the pipeline names them."""
    k = profile.num_classes
    names = list(profile.class_names) if label_style == "names" else [f"OCT_Object_{i}" for i in range(k)]
    return names[1:]


def run(args) -> int:
    from sam2oct.data.volumes.label_files import atomic_path, label_dtype
    from sam2oct.pipeline.pipeline import Pipeline, preflight

    args.option_names = {**getattr(args, "option_names", {}), **FLAG_NAMES, **SERVER_FLAGS}
    options = option_values(args, cache_mb=0)
    if args.batch < 1:
        raise ConfigError(f"must be 1 or more, got {args.batch}", option="batch")
    out = Path(args.out)
    sources = read_sources(args.volumes, options.max_pixels, spacing=spacing_flag(args.spacing),
                           laterality=args.laterality, all_volumes=True)
    unique_stems("out", sources)
    make_folder("out", out)
    targets = [out / s.stem for s in sources]
    for target in targets:
        if target.exists():
            raise ConfigError(f"{target}: exists already; remove it or choose another --out", option="out")
    options = with_checkpoint(args, options)
    profile = preflight(options)  # device, config, checkpoint and profile, without building the model
    client = fields = None
    if wants_server(args):  # log in and check the project's labels before anything is computed or sent
        client = cvat_server.connect(args)
        fields = task_fields(client, args.project_id, layer_names(profile, options.label_style))

    pipeline = Pipeline(options)  # its warnings reach stderr through logging (cli.main)
    bar = progress_bar(sum(s.n_bscans for s in sources))
    for source, target in zip(sources, targets):
        n, h, w = source.volume.bscans.shape
        maps = np.zeros((n, h, w), label_dtype(pipeline.num_classes))
        shapes = [] if args.polygons else None
        for i, _, prediction in segment_frames(pipeline, source, args.batch, options.max_pixels, bar):
            maps[i] = pipeline.clean(prediction.label_map)  # the one label map every front door answers with
            if shapes is not None:
                shapes.append(pipeline.shapes(maps[i]))
        write_bundle(target, source.volume, maps, pipeline.labels, shapes=shapes, colours=PALETTE_HEX,
                     extra_meta={"profile": pipeline.profile.name})
        print(f"{source.path}: {n} B-scans -> {target}", file=sys.stderr)
        if client is None:
            print(_create_command(target))
            continue
        url = create_task(client, target, fields)
        meta = json.loads((target / VOLUME_JSON).read_text())
        meta["cvat_task_url"] = url
        with atomic_path(target / VOLUME_JSON, ".json") as tmp:
            tmp.write_text(json.dumps(meta, indent=1, allow_nan=False))
        print(url)
        print(f"{target / VOLUME_JSON}: the volume's spacing and source (a CVAT export does not keep it)",
              file=sys.stderr)
    bar.close()
    return 0


def _create_command(bundle: Path) -> str:
    """The cvat-cli command that makes this bundle a task."""
    q = shlex.quote
    frames = f"{q(str(bundle))}/bscan_*.png"
    return (f"cvat-cli task create {q(bundle.name)} local {frames} --labels {q(str(bundle / LABELS_JSON))} "
            f"--annotation_path {q(str(bundle / ANNOTATIONS_XML))} --annotation_format {q(ANNOTATION_FORMAT)} "
            f"--image_quality 100 --sorting-method predefined")


def add_parser(sub) -> None:
    ct = sub.add_parser("cvat-task", help="scanner volumes -> pre-annotated CVAT tasks (bundles for cvat-cli, "
                                          "or tasks made on a server)",
                        description=__doc__.splitlines()[0] + " Every input is checked before the model loads.")
    ct.add_argument("volumes", nargs="+", metavar="VOLUME",
                    help="scanner files (docs/volumes.md), multi-page TIFFs or folders of B-scans")
    ct.add_argument("--out", required=True, metavar="DIR", help="write one bundle folder per volume here")
    ct.add_argument("--polygons", action="store_true", help="layers as polygons (default: one mask per layer "
                    "per B-scan)")
    ct.add_argument("--spacing", metavar="AXIAL,LATERAL,BSCAN", help="micrometres, for inputs that do not record it")
    ct.add_argument("--laterality", type=str.upper, choices=["OD", "OS"], help="for inputs that do not record it")
    ct.add_argument("--batch", type=int, default=2, help="B-scans per encoder pass (default: %(default)s)")
    add_option_flags(ct, SEGMENT_OPTIONS)
    add_server_flags(ct)
    ct.set_defaults(run=run)
