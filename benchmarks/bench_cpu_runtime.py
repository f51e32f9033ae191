"""The CPU fast path, measured: `segment` of real B-scans, whole process, per runtime and precision,
and how far the label maps of each runtime/precision agree with PyTorch fp32.

    python benchmarks/bench_cpu_runtime.py [--images PNG ...] [--repeats 2] [--threads 0]

Timing: `python -m sam2oct segment IMAGES --json ...` as a fresh process per variant (imports,
model load, OpenVINO's cached compiled model, every encode, decode and polygon), with SAM 2.1
Hiera B+ and K=9 random weights (seed 0; the cost does not depend on the weights). Each OpenVINO
variant runs once untimed first, so its conversion cache is warm (each timed run's "runtime"
line is printed: it says the model came from the cache). Variants alternate in order across
repeats; the median is reported, with the load average before and after.

Agreement: in one process, the label maps `segment` would draw (Pipeline.predict) of each
variant against PyTorch fp32, as % of pixels equal (pooled over the images, and the worst
image), plus the features' relative error (image_embed and the two high-resolution levels,
largest of the three). Random weights give near-equal logits for many pixels, where any rounding
flips the argmax, so the same is measured with the tiny fixture checkpoint (trained-ish
weights, image size 1024) as well. For scale, two more rows: torch fp32 on the frames after a
JPEG round trip (quality 95, and 70: CVAT's default image quality for a task's frames), and
torch bf16 autocast (what precision auto already takes on recent GPUs).

Encoder alone: the seconds per B-scan of those same encodes (median over the images, after one
untimed encode), the encoder's speed-up, and the whole-process speed-up it allows: the torch fp32
run's time less its encodes, plus each variant's encodes (an upper bound: OpenVINO's load is not
counted). It says how far the whole-process figures can go with this encoder on this CPU.

Not a test: it prints figures, it asserts nothing.
"""

import argparse
import io
from importlib import metadata
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2oct.geometry.images import read_image  # noqa: E402
from sam2oct.model import cpu_features, runtime  # noqa: E402
from sam2oct.model.checkpoint import DEFAULT_CONFIG, build_model  # noqa: E402
from sam2oct.pipeline.options import PipelineOptions  # noqa: E402
from sam2oct.pipeline.pipeline import Pipeline  # noqa: E402

IMAGES = sorted((ROOT / "tests" / "data" / "spectralis").glob("*_bscan_u8.png"))
FIXTURE = (ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.pt", ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.yaml")
BASE = ("torch", "fp32")
JPEG_QUALITIES = (95, 70)


def variants() -> list:
    """(runtime, precision) pairs: torch fp32 first, then OpenVINO fp32, auto and (if the CPU can) bf16."""
    out = [BASE, ("openvino", "fp32"), ("openvino", "auto")]
    if cpu_features.has_bf16():
        out.append(("openvino", "bf16"))
    return out


def label(v) -> str:
    if v[0].startswith("torch fp32, frame"):
        return f"{v[0]} {v[1]}"
    return f"--runtime {v[0]} --precision {v[1]}"


def random_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = build_model(9)
    path = folder / "hiera_bplus_random_k9.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def segment(ckpt, config, images, v, cache_dir, threads, out_json) -> tuple:
    """(seconds, the runtime line segment printed) of one whole `segment` process."""
    cmd = [sys.executable, "-m", "sam2oct", "segment", *map(str, images), "--checkpoint", str(ckpt),
           "--json", str(out_json), "--runtime", v[0], "--precision", v[1], "--ov-cache-dir", str(cache_dir),
           "--threads", str(threads)]
    if config:
        cmd += ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"segment failed ({label(v)}):\n{done.stderr[-3000:]}")
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("runtime ")), "?")
    return seconds, line


def timing(args, ckpt, cache_dir, work: Path) -> None:
    vs = variants()
    print(f"\n== whole-process segment of {len(args.images)} B-scans, Hiera B+ (random weights, K=9) ==")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for v in vs:
        if v[0] == "openvino":  # warm the conversion cache (untimed)
            s, line = segment(ckpt, None, args.images, v, cache_dir, args.threads, work / "warm.json")
            print(f"warm-up {label(v)}: {s:.1f} s ({line})")
    times = {v: [] for v in vs}
    for r in range(args.repeats):
        order = vs[r % len(vs):] + vs[:r % len(vs)]
        for v in order:
            s, line = segment(ckpt, None, args.images, v, cache_dir, args.threads, work / "out.json")
            times[v].append(s)
            print(f"run {r + 1} {label(v)}: {s:.1f} s ({line})", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    base = statistics.median(times[BASE])
    print(f"\n{'variant':<42}{'median s':>10}{'speed-up':>10}")
    for v in vs:
        m = statistics.median(times[v])
        print(f"{label(v):<42}{m:>10.1f}{base / m:>9.2f}x")
    return {v: statistics.median(t) for v, t in times.items()}


def agreement(name, ckpt, config, images, cache_dir, threads) -> None:
    grays = [read_image(Path(p).read_bytes()) for p in images]
    print(f"\n== label agreement with torch fp32: {name} ==")
    model = None
    results, encode_s = {}, {}
    # torch bf16 (autocast) too: the precision the GPU path's auto already takes, for comparison.
    for v in variants() + [("torch", "bf16")]:
        opts = PipelineOptions(checkpoint=str(ckpt), config=str(config) if config else DEFAULT_CONFIG,
                               runtime=v[0], precision=v[1], ov_cache_dir=str(cache_dir), cache_mb=0,
                               torch_threads=threads)
        pipeline = Pipeline(opts, model=model)
        model = pipeline.predictor.model
        maps, feats, seconds = [], [], []
        pipeline.encode(grays[-1])  # untimed: the first inference allocates its working memory
        for g in grays:
            t0 = time.perf_counter()
            encoded = pipeline.encode(g)
            seconds.append(time.perf_counter() - t0)
            feats.append([encoded.features.image_embed, *encoded.features.high_res_feats])
            maps.append(pipeline.predict(encoded).label_map)
        enc = pipeline.predictor.encoder
        runs_as = f"torch {'bf16' if pipeline.predictor.bf16 else 'fp32'}" if enc is None else f"openvino {enc.precision}"
        results[v] = (maps, feats, runs_as)
        encode_s[v] = statistics.median(seconds)
    # For scale: torch fp32 on the same frames after a JPEG round trip, as CVAT serves a task's
    # frames (its default image quality is 70): how much the labels move for a change of the
    # input that deployments already accept.
    pipeline = Pipeline(PipelineOptions(checkpoint=str(ckpt), config=str(config) if config else DEFAULT_CONFIG,
                                        runtime="torch", precision="fp32", cache_mb=0, torch_threads=threads),
                        model=model)
    for quality in JPEG_QUALITIES:
        maps, feats = [], []
        for g in grays:
            encoded = pipeline.encode(jpeg_round_trip(g, quality))
            feats.append([encoded.features.image_embed, *encoded.features.high_res_feats])
            maps.append(pipeline.predict(encoded).label_map)
        results[("torch fp32, frame as JPEG", f"q{quality}")] = (maps, feats, "torch fp32")
    ref_maps, ref_feats, _ = results[BASE]
    print(f"{'variant':<42}{'runs as':<16}{'pixels equal':>14}{'worst image':>13}{'feature rel err':>17}")
    for v, (maps, feats, runs_as) in results.items():
        if v == BASE:
            continue
        equal = sum(int((a == b).sum()) for a, b in zip(maps, ref_maps))
        total = sum(a.size for a in maps)
        worst = min(float((a == b).mean()) for a, b in zip(maps, ref_maps))
        err = max(float((x.double() - y.double()).norm() / y.double().norm())
                  for fs, rs in zip(feats, ref_feats) for x, y in zip(fs, rs))
        print(f"{label(v):<42}{runs_as:<16}{100 * equal / total:>13.3f}%{100 * worst:>12.3f}%{err:>17.2e}")
    return encode_s


def encoder_alone(encode_s, whole, n_images) -> None:
    """The encoder's own speed-up, and the whole-process speed-up it allows: the rest of a
    torch fp32 run (imports, loading, decoding, polygons, writing) is taken as it is and only
    the encodes are replaced, which is an upper bound (OpenVINO's load adds to the rest)."""
    base = encode_s[BASE]
    rest = whole[BASE] - n_images * base if whole else None
    print(f"\n== the encoder alone (one process, seconds per B-scan, median of {n_images}) ==")
    if rest is not None:
        print(f"torch fp32 whole process {whole[BASE]:.1f} s = {n_images} encodes x {base:.2f} s "
              f"+ {rest:.1f} s of everything else")
    head = f"{'variant':<42}{'encode s':>10}{'speed-up':>10}"
    print(head + (f"{'whole-process ceiling':>23}" if rest is not None else ""))
    for v in variants() + [("torch", "bf16")]:
        line = f"{label(v):<42}{encode_s[v]:>10.2f}{base / encode_s[v]:>9.2f}x"
        if rest is not None:
            line += f"{whole[BASE] / (rest + n_images * encode_s[v]):>22.2f}x"
        print(line)


def jpeg_round_trip(gray: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(gray * 255), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return read_image(buf.getvalue())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", type=Path, default=IMAGES)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per variant (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="--threads of segment (0: all cores)")
    ap.add_argument("--skip-timing", action="store_true", help="only the agreement figures")
    args = ap.parse_args()
    print("sam2oct CPU runtime benchmark")
    print(f"cpu: {cpu_features.cpu_model() or platform.processor()}, {os.cpu_count()} logical cores, "
          f"bf16 flags: {', '.join(cpu_features.bf16_flags()) or 'none'}")
    print(f"torch {torch.__version__}, openvino {metadata.version('openvino')}, python {platform.python_version()}")
    print(f"auto precision under openvino: {runtime.openvino_precision('auto')} (AUTO_BF16={runtime.AUTO_BF16})")
    print("images: " + ", ".join(str(Path(p).relative_to(ROOT)) if Path(p).is_relative_to(ROOT) else str(p)
                                 for p in args.images))
    with tempfile.TemporaryDirectory(prefix="bench-cpu-runtime-") as tmp:
        work = Path(tmp)
        cache_dir = work / "ov-cache"
        ckpt = random_checkpoint(work)
        whole = None if args.skip_timing else timing(args, ckpt, cache_dir, work)
        encode_s = agreement("Hiera B+, random weights (seed 0), K=9", ckpt, None, args.images, cache_dir,
                             args.threads)
        encoder_alone(encode_s, whole, len(args.images))
        agreement("tiny fixture checkpoint (tests/fixtures/parity/tiny_k9)", *FIXTURE, args.images, cache_dir,
                  args.threads)


if __name__ == "__main__":
    main()
