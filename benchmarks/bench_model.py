"""Time the SAM2-OCT model core: one cold encode, then warm decodes against cached features.

Builds SAM 2.1 Hiera Base+ with random weights (no checkpoint needed: the cost does not depend
on the weights) and wraps it in SemanticPredictor exactly as the function does.

    python benchmarks/bench_model.py [--device cpu|cuda] [--threads 2] [--runs 5] [--k 11]

Not a test: it prints figures, it asserts nothing.
"""

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2oct.model.checkpoint import build_model  # noqa: E402
from sam2oct.geometry.images import read_image  # noqa: E402
from sam2oct.model.predictor import SemanticPredictor  # noqa: E402

DEFAULT_IMAGE = ROOT / "tests" / "data" / "bscan_768x496_s1.png"
TARGET_S = 0.3  # warm decode budget per request


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median_time(fn, device, runs, before=None):
    times = []
    for _ in range(runs):
        if before:
            before()
        times.append(timed(fn, device)[0])
    return statistics.median(times), min(times), max(times)


def painted_labels(labels_png: Path, shape, k: int) -> np.ndarray:
    """Three vertical brush strokes (20 px wide) copied from a label map; -1 elsewhere."""
    h, w = shape
    if labels_png.is_file():
        with Image.open(labels_png) as im:
            full = np.asarray(im, dtype=np.int64)
    else:  # no label file: horizontal bands
        full = np.repeat((np.arange(h) * k // h)[:, None], w, axis=1)
    full = np.clip(full, 0, k - 1)
    out = np.full((h, w), -1, np.int64)
    for x in (w // 4, w // 2, 3 * w // 4):
        out[:, x - 10:x + 10] = full[:, x - 10:x + 10]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; 0 = torch's default)")
    ap.add_argument("--runs", type=int, default=5, help="runs per warm figure; the median is reported")
    ap.add_argument("--k", type=int, default=11, help="number of classes (11 = MGU, 9 = NR206)")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="B-scan to encode")
    ap.add_argument("--preprocess", default="stretch", choices=["stretch", "pad-equalize"])
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    t_build, model = timed(lambda: build_model(args.k).to(device).eval(), torch.device("cpu"))
    predictor = SemanticPredictor(model, preprocess=args.preprocess)
    gray = read_image(args.image.read_bytes())
    h, w = gray.shape
    n_params = sum(p.numel() for p in model.parameters())

    print(f"sam2oct model benchmark: SAM 2.1 Hiera Base+ (random weights), K={args.k}, "
          f"{n_params / 1e6:.1f} M parameters")
    print(f"device={device} threads={torch.get_num_threads()} precision={'bf16' if predictor.bf16 else 'fp32'} "
          f"preprocess={args.preprocess} runs={args.runs}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    if device.type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name(device)}")
    print(f"image: {args.image.relative_to(ROOT) if args.image.is_relative_to(ROOT) else args.image} ({w}x{h})")
    print(f"build model: {t_build:.2f} s")

    # Cold: the first encode of the process (includes one-off allocations and kernel selection).
    t_cold, enc = timed(lambda: predictor.encode(gray), device)
    print(f"encode, cold (first call): {t_cold:.3f} s")

    def fresh_encode():
        predictor.cache.clear()

    med, lo, hi = median_time(lambda: predictor.encode(gray), device, args.runs, before=fresh_encode)
    print(f"encode, warm (cache cleared): median {med:.3f} s (min {lo:.3f}, max {hi:.3f})")
    enc = predictor.encode(gray)  # cached from here on
    assert predictor.encode(gray) is enc

    rows = []

    def forget_unprompted():
        enc.unprompted = None

    # Warm decodes: features cached, only prompt encoder + mask decoder + label map run.
    rows.append(("auto (first decode after encode)",
                 median_time(lambda: predictor.decode(enc), device, args.runs, before=forget_unprompted)))
    rows.append(("auto + confidence (detector)",
                 median_time(lambda: predictor.decode(enc, confidence=True), device, args.runs,
                             before=forget_unprompted)))
    predictor.decode(enc)
    rows.append(("auto (memoised repeat)", median_time(lambda: predictor.decode(enc), device, args.runs)))
    clicks = dict(points=[[w * 0.3, h * 0.4], [w * 0.6, h * 0.5], [w * 0.8, h * 0.45]], labels=[1, 1, 0])
    rows.append(("points (3 clicks)", median_time(lambda: predictor.decode(enc, **clicks), device, args.runs)))
    dense = painted_labels(args.image.with_name(args.image.stem + "_labels.png"), (h, w), args.k)
    rows.append((f"dense ({(dense >= 0).mean():.0%} of pixels painted)",
                 median_time(lambda: predictor.decode(enc, dense_labels=dense), device, args.runs)))
    rows.append(("dense + 3 clicks",
                 median_time(lambda: predictor.decode(enc, dense_labels=dense, **clicks), device, args.runs)))

    print(f"warm decode (features cached), median of {args.runs}:")
    for name, (med, lo, hi) in rows:
        verdict = "ok" if med <= TARGET_S else f"OVER the {TARGET_S} s target"
        print(f"  {name:<34} {med:.3f} s (min {lo:.3f}, max {hi:.3f})  {verdict}")
    print(f"cache: {predictor.encoder_calls} encoder calls, hits={predictor.cache.hits} "
          f"misses={predictor.cache.misses}, {len(predictor.cache)} entry of "
          f"{predictor.cache.nbytes / 2**20:.1f} MiB (features + memoised unprompted prediction)")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak memory: process RSS {rss:.0f} MiB", end="")
    if device.type == "cuda":
        print(f", torch CUDA allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB, "
              f"reserved {torch.cuda.max_memory_reserved(device) / 2**20:.0f} MiB", end="")
    print()


if __name__ == "__main__":
    main()
