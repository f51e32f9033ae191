"""Time sam2oct.cvat_function as cvat-cli runs it: detector frames per second, the interactor's warm
click, tracker steps per second.

The function is loaded through cvat-cli's FunctionLoader with ``-p`` parameters and called with
cvat-sdk's/cvat-cli's own context and prompt classes, on B-scans made from the sample (vertical
shifts of tests/data/bscan_768x496_s1.png, so every frame is new to the feature cache).

    python benchmarks/bench_cvat_function.py [--model tiny|hiera-b+] [--k 9|11] [--frames 4]
                                             [--threads 2] [--device cpu] [--runs 5]

``tiny`` is the test fixture checkpoint (tests/fixtures/parity/tiny_k9.pt, image size 256);
``hiera-b+`` is SAM 2.1 Hiera Base+ (the released checkpoints' architecture, image size 1024) with
seeded random weights, saved to a temporary checkpoint file first. Random weights give noise label
maps with hundreds or thousands of small regions, where a trained checkpoint gives a few dozen:
the region count per frame is printed, because tracing regions into polygons and masks costs in
proportion to it, and the detector's work after the model is also timed on the sample's layer label
map (tests/data/bscan_768x496_s1_labels.png), the kind of map a trained checkpoint gives. Not a
test: it prints figures, it asserts nothing.
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cvat_sdk.auto_annotation as cvataa  # noqa: E402
from cvat_cli._internal.agent_driver_interaction import (  # noqa: E402
    _InteractionFunctionContextImpl, _InteractionPromptsImpl,
)
from cvat_cli._internal.agent_driver_tracking import (  # noqa: E402
    _TrackingFunctionContextImpl, _TrackingFunctionShapeContextImpl,
)
from cvat_cli._internal.common import FunctionLoader  # noqa: E402
from cvat_cli._internal.parsers import parse_function_parameter  # noqa: E402
from cvat_sdk.auto_annotation.driver import _DetectionFunctionContextImpl  # noqa: E402

from sam2oct.model.checkpoint import build_model  # noqa: E402
from sam2oct.model.predictor import Prediction  # noqa: E402

SAMPLE = ROOT / "tests" / "data" / "bscan_768x496_s1.png"
LABELS = ROOT / "tests" / "data" / "bscan_768x496_s1_labels.png"
TINY_CKPT = ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.pt"
TINY_CONFIG = ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.yaml"


def load(kind, checkpoint, config, args):
    params = [f"kind=str:{kind}", f"checkpoint=str:{checkpoint}", f"device=str:{args.device}",
              f"torch_threads=int:{args.threads}"]
    if config:
        params.append(f"config=str:{config}")
    return FunctionLoader("sam2oct.cvat_function", None, dict(map(parse_function_parameter, params))).load()


def frames(n):
    base = np.asarray(Image.open(SAMPLE))
    return [Image.fromarray(np.roll(base, 3 * i, axis=0)) for i in range(n)]


def seconds(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_detector(checkpoint, config, args, images):
    fn = load("detector", checkpoint, config, args)
    for poly in (False, True):
        times, counts = [], []
        for i, image in enumerate(images):
            fn.pipeline.release_memory()  # every frame encoded and traced afresh
            ctx = _DetectionFunctionContextImpl(frame_name=f"frame_{i:06d}.png", conv_mask_to_poly=poly)
            dt, shapes = seconds(lambda: fn.detect(ctx, image))
            times.append(dt)
            counts.append(len(shapes))
        kind = "polygons (--conv-mask-to-poly)" if poly else "masks"
        steady = times[1:] or times
        print(f"  detector, {kind}: first frame {times[0]:.2f} s; then median {statistics.median(steady):.2f} s/frame "
              f"= {1 / statistics.median(steady):.2f} frames/s over {len(steady)} frames; "
              f"{min(counts)}-{max(counts)} shapes per frame")


def bench_detector_on_layers(checkpoint, config, args, images):
    """The detector's work after the model on a label map with real layers (the sample's label PNG),
    as a trained checkpoint gives: tracing regions, then cvat-sdk shapes."""
    fn = load("detector", checkpoint, config, args)
    p = fn.pipeline
    labels = np.asarray(Image.open(LABELS), dtype=np.uint8)
    encoded = p.encode(p.read_pil(images[0]))
    layers = Prediction(label_map=labels, ious=np.ones(p.num_classes, np.float32),
                        confidence=np.ones(labels.shape, np.float32))
    for poly in (False, True):
        times = []
        for _ in range(args.runs):
            # masks: one per layer; polygons: one per region (what detect() sends either way)
            dt, shapes = seconds(lambda: fn.annotations(
                (p.regions if poly else p.layers)(encoded, prediction=layers), poly))
            times.append(dt)
        kind = "polygons" if poly else "masks"
        print(f"  detector after the model, on the sample's layer label map ({LABELS.name}), {kind}: "
              f"median {statistics.median(times):.3f} s/frame, {len(shapes)} shapes")


def bench_interactor(checkpoint, config, args, images):
    fn = load("interactor", checkpoint, config, args)
    ctx = _InteractionFunctionContextImpl()
    image = images[0]
    w, h = image.size
    dt, pp = seconds(lambda: fn.preprocess_image(ctx, image))
    print(f"  interactor: preprocess_image (decode + encode) {dt:.2f} s")
    rng = np.random.default_rng(0)
    clicks = [(float(x), float(y)) for x, y in zip(rng.uniform(0, w, args.runs), rng.uniform(0, h, args.runs))]
    first, _ = seconds(lambda: fn.detect(ctx, pp, _InteractionPromptsImpl(
        pos_points=(clicks[0],), neg_points=(), bounding_box=None)))
    warm = []
    for i, click in enumerate(clicks):
        neg = (clicks[(i + 1) % len(clicks)],)
        prompts = _InteractionPromptsImpl(pos_points=(click,), neg_points=neg, bounding_box=None)
        warm.append(seconds(lambda: fn.detect(ctx, pp, prompts))[0])
    print(f"  interactor: first click after preprocess_image {first:.3f} s; warm clicks (1 positive + 1 negative, "
          f"{len(warm)} runs) median {statistics.median(warm):.3f} s, max {max(warm):.3f} s")


def bench_tracker(checkpoint, config, args, images):
    fn = load("tracker", checkpoint, config, args)
    ctx = _TrackingFunctionContextImpl()
    w, h = images[0].size
    shape = cvataa.TrackableShape(type="polygon", points=[w * 0.25, h * 0.3, w * 0.75, h * 0.3,
                                                          w * 0.75, h * 0.6, w * 0.25, h * 0.6])
    shape_ctx = _TrackingFunctionShapeContextImpl(original_shape_type=shape.type)
    state = fn.init_tracking_state(shape_ctx, fn.preprocess_image(ctx, images[0]), shape)
    pre, step, found = [], [], 0
    for image in images[1:]:
        dt, pp = seconds(lambda: fn.preprocess_image(ctx, image))
        pre.append(dt)
        dt, out = seconds(lambda: fn.track(shape_ctx, pp, state))
        step.append(dt)
        found += out is not None
    total = statistics.median(a + b for a, b in zip(pre, step))
    print(f"  tracker ({state.label}, polygon): per B-scan median preprocess_image {statistics.median(pre):.2f} s "
          f"+ track {statistics.median(step):.2f} s = {1 / total:.2f} steps/s over {len(step)} steps "
          f"(layer found on {found})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "hiera-b+"], default="tiny")
    ap.add_argument("--k", type=int, default=9, help="classes of the hiera-b+ model (9 = NR206, 11 = MGU)")
    ap.add_argument("--frames", type=int, default=4, help="B-scans per detector/tracker run")
    ap.add_argument("--runs", type=int, default=5, help="warm clicks")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (-p torch_threads)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    images = frames(max(args.frames, 2))
    w, h = images[0].size
    print(f"sam2oct cvat-cli function benchmark: {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} threads, device {args.device}; "
          f"{len(images)} B-scans {w}x{h} (shifts of {SAMPLE.name})")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "tiny":
            checkpoint, config = TINY_CKPT, TINY_CONFIG
            print(f"model: tiny test fixture {TINY_CKPT.name} (K=9, image size 256)")
        else:
            torch.manual_seed(0)
            model = build_model(args.k)
            checkpoint, config = Path(tmp) / "hiera_b+_random.pt", None
            torch.save({"model_state": model.state_dict()}, checkpoint)
            print(f"model: SAM 2.1 Hiera Base+ with random weights (K={args.k}, image size {model.image_size}, "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
            del model
        bench_detector(checkpoint, config, args, images[:args.frames])
        bench_detector_on_layers(checkpoint, config, args, images)
        bench_interactor(checkpoint, config, args, images)
        bench_tracker(checkpoint, config, args, images[:args.frames])


if __name__ == "__main__":
    main()
