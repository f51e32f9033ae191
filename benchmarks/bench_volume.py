"""Seconds per volume and peak memory of `segment VOLUME --labels` on a 49-B-scan volume.

The volume is a Heidelberg .vol assembled from the real Spectralis line scan (768 x 496 B-scans,
tests/volume_files.py). The command runs as a child process, exactly as a user runs it, so the
figures hold start-up, checkpoint loading, reading the file, the encoder passes, the label maps,
the polygons of the JSON and the .npz:

    python benchmarks/bench_volume.py --model tiny              # the test fixture (K=9, 256 px)
    python benchmarks/bench_volume.py --model bplus --bscans 8  # SAM 2.1 Hiera B+, random weights

``--model bplus`` builds Hiera B+ with random weights and saves it as a checkpoint first (the cost
does not depend on the weights). Not a test: it prints figures, it asserts nothing.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from volume_files import build_vol  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "parity"
# the child: run the CLI, then report its own peak RSS (ru_maxrss, KiB on Linux)
CHILD = ("import json, resource, sys, time; from sam2oct.cli import main; t = time.perf_counter(); "
         "rc = main(sys.argv[1:]); print(json.dumps({'rc': rc, 'main_s': time.perf_counter() - t, "
         "'peak_rss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)")


def bplus_checkpoint(folder: Path) -> Path:
    code = ("import sys, torch; from sam2oct.model.checkpoint import build_model; "
            "torch.save({'model_state': build_model(9).state_dict()}, sys.argv[1])")
    path = folder / "bplus_random_k9.pt"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "bplus"], default="tiny")
    ap.add_argument("--bscans", type=int, default=49, help="B-scans in the volume (default 49)")
    ap.add_argument("--batch", type=int, default=2, help="segment --batch (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="segment --threads (default 2)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vol = build_vol(tmp / "bench.vol", args.bscans)
        if args.model == "tiny":
            model = ["--checkpoint", str(TINY / "tiny_k9.pt"), "--config", str(TINY / "tiny_k9.yaml")]
        else:
            model = ["--checkpoint", str(bplus_checkpoint(tmp)), "--profile", "nr206"]
        cmd = ["segment", str(vol), *model, "--labels", str(tmp / "labels.npz"), "--json", str(tmp / "out.json"),
               "--batch", str(args.batch), "--threads", str(args.threads), "--device", "cpu"]
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CHILD, *cmd], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"segment failed:\n{done.stderr}")
        figures = json.loads(done.stderr.strip().splitlines()[-1])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes share the CPUs)")
    print(f"model {args.model}, {args.bscans} B-scans of 768x496, --batch {args.batch}, --threads {args.threads}")
    print(f"wall: {wall:.1f} s per volume ({wall / args.bscans:.2f} s per B-scan, start-up and model load included)")
    print(f"in main(): {figures['main_s']:.1f} s; peak RSS: {figures['peak_rss_kib'] / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
