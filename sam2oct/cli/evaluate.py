"""`evaluate`: score a checkpoint on annotated B-scans (IoU, Dice, boundary error)."""

import json
import sys
from dataclasses import replace
from pathlib import Path

from sam2oct.cli.flags import MODEL_OPTIONS, RUNTIME_OPTIONS, add_option_flags, options_from_args
from sam2oct.cli.paths import check_destination, write_output
from sam2oct.errors import ConfigError
from sam2oct.model.preprocessing import PREPROCESS_MODES
from sam2oct.pipeline.options import OPTION_HELP


def run(args) -> int:
    from sam2oct.data.datasets import load_dataset
    from sam2oct.data.samples import DatasetError
    from sam2oct.evaluation.evaluate import compare, format_table, score
    from sam2oct.pipeline.pipeline import preflight

    args.option_names = {**getattr(args, "option_names", {}), "batch": "--batch"}
    if not Path(args.data).exists():
        raise DatasetError(f"dataset not found: {args.data}")
    if args.batch < 1:
        raise ConfigError(f"must be 1 or more, got {args.batch}", option="batch")
    if args.json:  # before hours of scoring, not after
        check_destination("json", Path(args.json))
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
    predictors = _label_map_predictors(options, modes, raw=args.raw)
    def progress(i, n, sample, mode=None):
        print(f"[{i}/{n}] {sample.name}" + (f" ({mode})" if mode else ""), file=sys.stderr)

    reports = {mode: score(dataset, progress=lambda *a, m=mode: progress(*a, m if len(modes) > 1 else None),
                           predict_many=predict_many, batch=args.batch)
               for mode, predict_many in predictors.items()}
    report = compare(reports) if len(reports) > 1 else {"preprocess": modes[0], **reports[modes[0]]}
    report["source"], report["skipped"] = dataset.source, dataset.skipped
    report["label_map"] = "raw" if args.raw else f"cleaned (min_area {options.min_area})"
    print(format_table(report))
    if args.json:
        text = json.dumps(report, indent=1, allow_nan=False)
        write_output("json", lambda p: p.write_text(text), Path(args.json))
    return 0


def _label_map_predictors(options, modes, raw: bool = False) -> dict:
    """{preprocessing: grey frames -> their label maps}, one model (and encoder) shared by all: the
    cleaned label map every front door answers with, or with ``raw`` the model's argmax map."""
    from sam2oct.pipeline.pipeline import Pipeline

    first = Pipeline(replace(options, preprocess=modes[0]))
    pipelines = [first] + [Pipeline(replace(options, preprocess=m), model=first.predictor.model,
                                    encoder=first.predictor.encoder) for m in modes[1:]]
    if raw:
        return {m: (lambda grays, p=p: [p.predict(e).label_map for e in p.encode_batch(grays)])
                for m, p in zip(modes, pipelines)}
    return {m: (lambda grays, p=p: [p.label_map(e) for e in p.encode_batch(grays)]) for m, p in zip(modes, pipelines)}




def add_parser(sub) -> None:
    ev = sub.add_parser("evaluate", help="score a checkpoint on annotated B-scans (IoU, Dice, boundary error)")
    ev.add_argument("data", metavar="DATA",
                    help="CVAT export (zip or folder: 'CVAT for images 1.1', 'Segmentation mask 1.1') "
                         "or a folder with images/ and labels/")
    add_option_flags(ev, MODEL_OPTIONS + ("min_area", "max_pixels") + RUNTIME_OPTIONS, preprocess={
        "choices": list(PREPROCESS_MODES) + ["both"],
        "help": OPTION_HELP["preprocess"] + "; 'both' scores the two side by side"})
    ev.add_argument("--json", help="write the full report here (per class, per image)")
    ev.add_argument("--batch", type=int, default=2, help="B-scans per encoder pass (default: %(default)s)")
    ev.add_argument("--raw", action="store_true",
                    help="score the model's raw argmax label map (model research), not the cleaned map "
                         "(after the --min-area merge) that every front door delivers")
    ev.set_defaults(run=run)
