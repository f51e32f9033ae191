"""Encoder time per B-scan by batch size, in each runtime: does encoding several B-scans in one
call pay on this machine, and how much does it cost in memory?

    python benchmarks/bench_encode_batch.py [--frames 4] [--batches 1 2 4] [--threads 0]

SAM 2.1 Hiera B+ with K=9 random weights (seed 0; the cost does not depend on the weights),
through SemanticPredictor.encode_batch as segment and evaluate use it, on the real
Spectralis B-scans of tests/data (repeated up to --frames). For each runtime and batch size: the
seconds per frame of encoding --frames frames (feature cache off, one untimed call first), and
the process's peak RSS growth during those calls. OpenVINO's conversion goes to a temporary
cache (converted once, untimed).

Not a test: it prints figures, it asserts nothing.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2oct.geometry.images import read_image  # noqa: E402
from sam2oct.model import cpu_features  # noqa: E402
from sam2oct.model.checkpoint import build_model  # noqa: E402
from sam2oct.model.openvino_encoder import OpenVINOEncoder  # noqa: E402
from sam2oct.model.predictor import SemanticPredictor  # noqa: E402

IMAGES = sorted((ROOT / "tests" / "data" / "spectralis").glob("*_bscan_u8.png"))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grays = [read_image(p.read_bytes()) for p in IMAGES]
    grays = (grays * args.frames)[:args.frames]
    torch.manual_seed(0)
    model = build_model(9).eval()
    print(f"encode batch benchmark: Hiera B+ (random weights), {args.frames} frames, "
          f"{os.cpu_count()} cores, threads={args.threads or 'default'}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as cache:
        runtimes = [("torch fp32", None), ("openvino fp32", OpenVINOEncoder(model, "fp32", cache, args.threads))]
        if cpu_features.has_bf16():
            runtimes.append(("openvino bf16", OpenVINOEncoder(model, "bf16", cache, args.threads)))
        print(f"{'runtime':<16}{'batch':>6}{'s per frame':>13}{'peak RSS growth MiB':>22}")
        for name, encoder in runtimes:
            predictor = SemanticPredictor(model, cache_bytes=0, encoder=encoder)
            predictor.encode_batch(grays[:1])  # untimed: first-call set-up
            for batch in args.batches:
                before = peak_mib()
                t0 = time.perf_counter()
                predictor.encode_batch(grays, batch_size=batch)
                per_frame = (time.perf_counter() - t0) / len(grays)
                print(f"{name:<16}{batch:>6}{per_frame:>13.2f}{peak_mib() - before:>22.0f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
