"""Fine-tuning figures: speed and memory per mode, a synthetic scanner shift, and real B-scans.

    python benchmarks/bench_finetune.py [--threads 2] [--seeds 3] [--skip speed,cache,shift,real]

1. speed: optimiser steps per second and peak resident memory (each run in its own process) for
   every mode, on the tiny K=9 fixture at image_size 256 and on SAM 2.1 Hiera Base+ (K=9, random
   weights: the cost does not depend on them) at 1024, batch 1, 496x768 synthetic B-scans.
   Decoder mode also reports its one-off encoding time per B-scan (one view each here).
1b. cache: decoder mode's peak resident memory (ru_maxrss) with a volume's worth of cached views
   (--cache-scans B-scans x --cache-views views, the tiny K=9 fixture at its full 1024 input), the
   memory that grows with the data: features plus label maps per view, targets built per step.
2. shift: the tiny fixture is trained on synthetic "scanner A" B-scans (full, from scratch), then
   adapted with the defaults (LoRA) to "scanner B" (stronger speckle, lower contrast, more blur);
   held-out scanner-B layer mIoU before and after, mean +- sd over seeds (data and training seeds).
3. real: the tiny fixture fine-tuned on the Spectralis "CVAT for images 1.1" export in
   tests/data/spectralis (made by scripts/make_spectralis_cvat.py): train on one volume, score the
   other (both ways), mean +- sd over seeds.

Not a test: it prints figures, it asserts nothing.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2oct.model.checkpoint import build_model, load_model  # noqa: E402
from sam2oct.training.finetune import FinetuneOptions, predictor_fn, train  # noqa: E402
from sam2oct.data.synthetic import SCANNER_A, SCANNER_B, synthetic_set  # noqa: E402

TINY_CKPT = ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.pt"
TINY_CONFIG = ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.yaml"
SPECTRALIS_ZIP = ROOT / "tests" / "data" / "spectralis" / "spectralis_layers_cvat_for_images_1.1.zip"
SPECTRALIS_CLASSES = ("background", "NFL", "GCL-BM", "below-BM", "OPL", "ONL", "ELM+IS", "OS", "RPE")
# The tiny fixture's weights are random, so it learns from scratch: full training at card-like rates.
FROM_SCRATCH = {"mode": "full", "lr_encoder": 3e-3, "lr_decoder": 1e-2}


def tiny_config(folder: Path) -> Path:
    path = folder / "tiny_k9_256.yaml"
    path.write_text(TINY_CONFIG.read_text().replace("image_size: 1024", "image_size: 256"))
    return path


def mean_sd(values) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


# --- 1. speed and memory, one process per (model, mode) -------------------------------------------

def speed_one(config: str, mode: str, steps: int, threads: int, scans: int = 2, views: int = 1) -> dict:
    """Runs in a child process: time `steps` steps after one warm-up step; peak RSS of the process."""
    from sam2oct.data.samples import Sample

    torch.set_num_threads(threads)
    model = load_model(TINY_CKPT, config) if config != "b+" else build_model(9).eval()
    data = [Sample(f"s{i}.png", g, lab, None)
            for i, (g, lab) in enumerate(synthetic_set(scans, 496, 768, SCANNER_A, 0))]
    times = []
    encode_s = None
    start = time.perf_counter()

    def tick(step, loss, parts):
        times.append(time.perf_counter())

    train(model, data, FinetuneOptions(mode=mode, steps=steps + 1, batch=1, views=views), callback=tick)
    if mode == "decoder":
        # Everything before the first step's end that is not a step: the one-off encoding.
        # per B-scan
        encode_s = (times[0] - start - (times[2] - times[1] if len(times) > 2 else 0.0)) / len(data)
    per_step = (times[-1] - times[0]) / steps
    return {"steps_per_s": 1 / per_step, "s_per_step": per_step, "encode_once_s": encode_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_speed(args, folder):
    print(f"\n== 1. speed: batch 1, 496x768 B-scans, {args.threads} threads, one process per row")
    print(f"{'model':<28}{'mode':<9}{'steps':>6}{'s/step':>10}{'steps/s':>10}{'prep+encode/scan':>18}{'peak RSS':>11}")
    rows = [("tiny K=9 @256", str(tiny_config(folder)), args.tiny_steps),
            ("Hiera B+ K=9 @1024", "b+", args.bplus_steps)]
    for label, config, steps in rows:
        for mode in ("lora", "decoder", "full"):
            n = steps * (5 if mode == "decoder" else 1)
            cmd = [sys.executable, __file__, "--speed-one", config, mode, str(n), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode:
                print(f"{label:<28}{mode:<9} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            enc = "-" if r["encode_once_s"] is None else f"{r['encode_once_s']:.2f} s"
            print(f"{label:<28}{mode:<9}{n:>6}{r['s_per_step']:>10.3f}{r['steps_per_s']:>10.2f}{enc:>18}"
                  f"{r['peak_rss_mib']:>8.0f} MiB", flush=True)


def bench_cache(args, folder):
    scans, views = args.cache_scans, args.cache_views
    print(f"\n== 1b. decoder-mode cache: tiny K=9 @1024, {scans} B-scans (496x768) x {views} views, "
          f"2 steps, batch 1, one process")
    cmd = [sys.executable, __file__, "--speed-one", str(TINY_CONFIG), "decoder", "2", "--threads", str(args.threads),
           "--scans", str(scans), "--views", str(views)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        print(f"  failed: {proc.stderr.strip().splitlines()[-1:]}")
        return
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    per_view_target = 9 * 1024 * 1024 * 4 / 2**20
    print(f"  peak RSS {r['peak_rss_mib']:.0f} MiB for {scans * views} cached views "
          f"(a [K,1024,1024] float target per view would add {per_view_target:.0f} MiB each, "
          f"{scans * views * per_view_target:.0f} MiB in all)", flush=True)


# --- 2. synthetic scanner shift --------------------------------------------------------------------

def _set(n, scanner, seed, tag):
    from sam2oct.data.samples import Dataset, Sample
    from sam2oct.model.profiles import NR206_CLASSES

    items = synthetic_set(n, 192, 256, scanner, seed)
    return Dataset([Sample(f"{tag}_{i:03d}.png", g, lab, None) for i, (g, lab) in enumerate(items)], NR206_CLASSES)


def bench_shift(args, folder):
    from sam2oct.evaluation.evaluate import score

    config = tiny_config(folder)
    print(f"\n== 2. scanner shift (tiny K=9 @256, 192x256 B-scans): A-training {args.a_steps} full steps on "
          f"{args.a_images} scanner-A scans; adaptation {args.b_steps} LoRA steps (defaults) on {args.b_images} "
          f"scanner-B scans; held out: {args.held_out} scans per scanner")
    rows = {"A-model on A": [], "A-model on B (before)": [], "adapted on B (after)": [], "adapted on A": []}
    for seed in range(args.seeds):
        base = 1000 * (seed + 1)
        model = load_model(TINY_CKPT, config)
        train(model, _set(args.a_images, SCANNER_A, base, "a").samples,
              FinetuneOptions(steps=args.a_steps, seed=seed, **FROM_SCRATCH))
        val_a, val_b = _set(args.held_out, SCANNER_A, base + 1, "va"), _set(args.held_out, SCANNER_B, base + 2, "vb")
        predict = predictor_fn(model, "stretch")
        rows["A-model on A"].append(score(val_a, predict)["mean_iou"])
        rows["A-model on B (before)"].append(score(val_b, predict)["mean_iou"])
        started = time.perf_counter()
        train(model, _set(args.b_images, SCANNER_B, base + 3, "b").samples,
              FinetuneOptions(steps=args.b_steps, seed=seed))
        took = time.perf_counter() - started
        predict = predictor_fn(model, "stretch")
        rows["adapted on B (after)"].append(score(val_b, predict)["mean_iou"])
        rows["adapted on A"].append(score(val_a, predict)["mean_iou"])
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()) + f" ({took:.0f} s adapting)",
              flush=True)
    for name, values in rows.items():
        print(f"  {name:<24} mIoU {mean_sd(values)}")


# --- 3. real Spectralis B-scans ---------------------------------------------------------------------

def bench_real(args, folder):
    from sam2oct.data.datasets import load_dataset
    from sam2oct.evaluation.evaluate import score

    config = tiny_config(folder)
    data = load_dataset(SPECTRALIS_ZIP, SPECTRALIS_CLASSES)
    volumes = sorted({s.volume or s.name for s in data.samples})
    print(f"\n== 3. real B-scans: {data.source}, {len(data.samples)} B-scans in volumes {volumes}; tiny K=9 @256 "
          f"from its fixture weights, {args.real_steps} full steps (from-scratch rates), train on one volume, "
          f"score the other")
    for held in volumes:
        val = replace(data, samples=[s for s in data.samples if (s.volume or s.name) == held])
        training = [s for s in data.samples if (s.volume or s.name) != held]
        before, after, bmae = [], [], []
        for seed in range(args.seeds):
            model = load_model(TINY_CKPT, config)
            before.append(score(val, predictor_fn(model, "stretch"))["mean_iou"])
            train(model, training, FinetuneOptions(steps=args.real_steps, seed=seed, **FROM_SCRATCH))
            result = score(val, predictor_fn(model, "stretch"))
            after.append(result["mean_iou"])
            bmae.append(result["boundary_mae_px"]["overall"])
        print(f"  held out {held} ({len(val.samples)} B-scans; trained on {len(training)}): layer mIoU "
              f"{mean_sd(before)} before, {mean_sd(after)} after; boundary MAE after {mean_sd(bmae)} px", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: speed, shift, real")
    parser.add_argument("--tiny-steps", type=int, default=10)
    parser.add_argument("--bplus-steps", type=int, default=2)
    parser.add_argument("--a-steps", type=int, default=600)
    parser.add_argument("--a-images", type=int, default=32)
    parser.add_argument("--b-steps", type=int, default=300)
    parser.add_argument("--b-images", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--real-steps", type=int, default=300)
    parser.add_argument("--cache-scans", type=int, default=32, help="1b: B-scans cached (default: %(default)s)")
    parser.add_argument("--cache-views", type=int, default=3, help="1b: views per B-scan (default: %(default)s)")
    parser.add_argument("--speed-one", nargs=3, metavar=("CONFIG", "MODE", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--scans", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--views", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_one:
        config, mode, steps = args.speed_one
        print(json.dumps(speed_one(config, mode, int(steps), args.threads, args.scans, args.views)))
        return
    torch.set_num_threads(args.threads)
    print(f"bench_finetune: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {args.threads} threads")
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "speed" not in skip:
            bench_speed(args, folder)
        if "cache" not in skip:
            bench_cache(args, folder)
        if "shift" not in skip:
            bench_shift(args, folder)
        if "real" not in skip:
            bench_real(args, folder)


if __name__ == "__main__":
    main()
