"""Time a warm interactor click through the Nuclio handler, as CVAT sends it, on this machine.

main.init_context and main.handler run under nuclio_sdk's test Platform (as tests/harness.py
does), with SAM 2.1 Hiera B+ (default config) holding random weights (built with
sam2oct.model.checkpoint.build_model, saved to a temporary checkpoint). The first click on the B-scan
encodes it; the clicks timed after it are warm: the features, the unprompted label map and the
frame's traced shapes are cached, so a click costs the request, the image decode, the selection
and the reply. Two label maps:

- noisy: the random-weight model's own map (thousands of regions: the worst case);
- smooth: the synthetic ground truth of the same B-scan (tests/data/bscan_768x496_s1_labels.png),
  put in place of the model's map by replacing the worker's predictor's decode.

Each request is one positive click (CVAT's JSON body as bytes, base64 PNG), at a different layer
pixel each time, answered in each reply format (SAM2OCT_CVAT_UI: current, legacy, cvat-oct; the
worker's setting is switched between runs, the model stays). Prints, per map and format, the
median and minimum time against the goals and the reply's size in bytes per click, then where
the time goes (median per click of each stage) for the default format and the fork's.

    python benchmarks/bench_click.py [--clicks 30] [--threads 0]

Not a test: it prints figures, it asserts nothing.
"""

import argparse
import base64
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nuclio_sdk  # noqa: E402
import nuclio_sdk.test  # noqa: E402

import main  # noqa: E402
from sam2oct.geometry import polygons  # noqa: E402
from sam2oct.pipeline import pipeline  # noqa: E402
from sam2oct.serving import cvat_request, replies  # noqa: E402
from sam2oct.model.checkpoint import build_model  # noqa: E402
from sam2oct.model.predictor import Prediction  # noqa: E402
from sam2oct.serving.settings import ENV_VARS  # noqa: E402

IMAGE = ROOT / "tests" / "data" / "bscan_768x496_s1.png"
LABELS = ROOT / "tests" / "data" / "bscan_768x496_s1_labels.png"
GOALS_MS = {"noisy": 100.0, "smooth": 20.0}


class Stages:
    """Wall time spent in chosen functions, per click."""

    def __init__(self):
        self.click = defaultdict(float)
        self.clicks = []

    def wrap(self, owner, name, stage):
        original = getattr(owner, name)

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                self.click[stage] += time.perf_counter() - t0

        setattr(owner, name, timed)

    def end_click(self, total):
        self.click["total"] = total
        self.clicks.append(dict(self.click))
        self.click.clear()


class NuclioWorker:
    """One function worker: init_context under the given environment, then handler calls."""

    def __init__(self, env):
        saved = {name: os.environ.get(name) for name in ENV_VARS}
        for name in ENV_VARS:
            os.environ.pop(name, None)
        os.environ.update(env)
        try:
            self.platform = nuclio_sdk.test.Platform()
            self.context = self.platform._get_handler_context(main.handler)  # runs init_context
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        self.pipeline = self.context.user_data.model.pipeline

    def call(self, body: bytes):
        event = nuclio_sdk.Event(body=body, content_type="application/json", method="POST", path="/")
        t0 = time.perf_counter()
        response = self.platform.call_handler(main.handler, event)
        return time.perf_counter() - t0, response


def click_body(image_b64: str, x: float, y: float) -> bytes:
    return json.dumps({"image": image_b64, "pos_points": [[x, y]], "neg_points": []}).encode()


def run_clicks(worker, image_b64, points, stages=None):
    times, sizes = [], []
    for x, y in points:
        dt, response = worker.call(click_body(image_b64, x, y))
        if response.status_code != 200:
            raise SystemExit(f"click ({x}, {y}) answered {response.status_code}: {response.body[:200]}")
        times.append(dt)
        sizes.append((len(response.body.encode()), len(json.loads(response.body).get("shapes", []))))
        if stages is not None:
            stages.end_click(dt)
    return times, sizes


def set_format(worker, fmt: str) -> None:
    """Switch the worker's reply format (SAM2OCT_CVAT_UI), keeping its model and caches."""
    model = worker.context.user_data.model
    options = dataclasses.replace(model.settings.options, cvat_ui=fmt)
    model.settings = dataclasses.replace(model.settings, options=options)


def main_(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=30, help="warm clicks timed per case")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = IMAGE.read_bytes()
    image_b64 = base64.b64encode(data).decode("ascii")
    smooth_map = np.asarray(Image.open(LABELS), dtype=np.uint8)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; image {IMAGE.name} "
          f"({len(data) / 1024:.0f} KiB PNG, {smooth_map.shape[1]}x{smooth_map.shape[0]})")

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(args.seed)
        ckpt = Path(tmp) / "hiera_bplus_random_k9.pt"
        t0 = time.perf_counter()
        torch.save({"model_state": build_model(9).state_dict()}, ckpt)
        env = {"SAM2_CHECKPOINT": str(ckpt), "SAM2OCT_WARMUP": "0", "SAM2OCT_PROFILE": "nr206",
               "SAM2OCT_TORCH_THREADS": str(args.threads), "SAM2_DEVICE": "cpu"}
        worker = NuclioWorker(env)
        print(f"model built, saved and loaded: {time.perf_counter() - t0:.1f} s")

    p = worker.pipeline
    h, w = smooth_map.shape
    cold, response = worker.call(click_body(image_b64, w / 2, h / 2))
    gray = p.read_image(data)
    encoded = p.encode(gray)
    noisy_map = p.predict(encoded).label_map
    n_regions = len(p.frame_shapes(encoded))
    print(f"first click (encode): {cold * 1000:.0f} ms, status {response.status_code}; "
          f"noisy map: {n_regions} polygons")

    rng = np.random.default_rng(args.seed)
    rows, cols = np.nonzero((noisy_map > 0) & (smooth_map > 0))
    pick = rng.choice(len(rows), size=args.clicks + 2, replace=False)
    points = [(float(cols[i]) + 0.5, float(rows[i]) + 0.5) for i in pick]

    formats = list(replies.FORMATS)
    results = {}
    for case in ("noisy", "smooth"):
        if case == "smooth":
            smooth = Prediction(low_res_logits=torch.zeros(0), ious=np.ones(9, dtype=np.float32), label_map=smooth_map,
                                confidence=np.ones(smooth_map.shape, dtype=np.float32))
            # the pipeline reads a frame's map from its predictor: swap it there
            original = p.predictor.decode
            p.predictor.decode = lambda enc, *a, **kw: smooth if enc.key == encoded.key else original(enc, *a, **kw)
            p.release_memory()  # shapes are cached per frame: trace the smooth map's
            worker.call(click_body(image_b64, *points[-1]))  # re-encode once: not timed
        for fmt in formats:
            set_format(worker, fmt)
            run_clicks(worker, image_b64, points[:2])  # settle (the fork's: trace the frame once)
            results[case, fmt] = run_clicks(worker, image_b64, points[2:])

    print(f"\nwarm click through main.handler ({args.clicks} clicks per case and format, one positive point each)")
    print(f"{'case':<7} {'format':<9} {'median ms':>10} {'min ms':>7} {'goal ms':>8}  "
          f"{'reply bytes: median':>20} {'max':>9}  {'shapes':>6}")
    for (case, fmt), (times, sizes) in results.items():
        med, lo = statistics.median(times) * 1000, min(times) * 1000
        size = statistics.median(b for b, _ in sizes)
        shapes = statistics.median(n for _, n in sizes)
        verdict = "met" if med <= GOALS_MS[case] else "MISSED"
        print(f"{case:<7} {fmt:<9} {med:>10.1f} {lo:>7.1f} {GOALS_MS[case]:>8.0f}  {size:>20,.0f} "
              f"{max(b for b, _ in sizes):>9,}  {shapes:>6.0f}   {verdict}")

    # Where the time goes: the same clicks again, with the stages timed.
    stages = Stages()
    model = worker.context.user_data.model
    stages.wrap(cvat_request, "parse_interactor", "request: JSON + base64")
    stages.wrap(type(p), "read_image", "image decode (PNG)")
    stages.wrap(type(p), "encode", "encode: pixel digest + cache hit")
    stages.wrap(type(p), "encode_file", "frame: digests + cache hit")
    stages.wrap(pipeline, "select", "select (click -> regions)")
    stages.wrap(type(p), "_selection_shapes", "shapes (frame cache)")
    stages.wrap(replies, "mask_points", "mask run lengths (current)")
    stages.wrap(replies, "crop_json", "mask crop as text (legacy, fork)")
    stages.wrap(polygons, "mask_outline", "mask outline (legacy, fork)")
    stages.wrap(type(model), "_interaction", "interaction")
    stages.wrap(type(model), "infer_json", "infer_json")
    columns = [(case, fmt) for case in ("noisy", "smooth") for fmt in ("current", "cvat-oct")]
    breakdown = {}
    for case, fmt in columns:
        if case == "noisy" and "decode" in vars(p.predictor):
            del p.predictor.decode
            p.release_memory()
            worker.call(click_body(image_b64, *points[-1]))  # re-trace the noisy map: not timed
        elif case == "smooth" and "decode" not in vars(p.predictor):
            p.predictor.decode = lambda enc, *a, **kw: smooth if enc.key == encoded.key else original(enc, *a, **kw)
            p.release_memory()
            worker.call(click_body(image_b64, *points[-1]))
        set_format(worker, fmt)
        run_clicks(worker, image_b64, points[:2])  # settle, not timed
        stages.clicks.clear()
        stages.click.clear()
        run_clicks(worker, image_b64, points[2:], stages)
        breakdown[case, fmt] = list(stages.clicks)

    def derived(c):
        """Leaf stages of one click: nested timings unfolded, the rest as 'other'."""
        c = dict(c)
        # infer_json = request parsing + the interaction + writing the reply's JSON
        c["reply JSON"] = c.pop("infer_json") - c.pop("interaction") - c["request: JSON + base64"]
        for name in ("mask run lengths (current)", "mask crop as text (legacy, fork)", "mask outline (legacy, fork)"):
            c.setdefault(name, 0.0)
        # the decode (on a new file) and the pixel digest run inside the frame lookup: it is the leaf
        for name in ("image decode (PNG)", "encode: pixel digest + cache hit"):
            c.pop(name, None)
        # the mask's encodings and outline are written with the reply's JSON: count them once
        c["reply JSON"] -= sum(c[name] for name in ("mask run lengths (current)", "mask crop as text (legacy, fork)",
                                                    "mask outline (legacy, fork)"))
        c["other"] = c["total"] - sum(v for k, v in c.items() if k != "total")
        return c

    print("\nbreakdown, median ms per click (stages timed by wrapping them)")
    print(f"{'stage':<34} " + " ".join(f"{case + '/' + fmt:>15}" for case, fmt in columns))
    rows = {key: [derived(c) for c in clicks] for key, clicks in breakdown.items()}
    names = []
    for clicks in rows.values():
        names += [n for n in clicks[0] if n not in names and n not in ("other", "total")]
    for name in names + ["other", "total"]:
        row = [statistics.median(c.get(name, 0.0) for c in rows[key]) * 1000 for key in columns]
        print(f"{name:<34} " + " ".join(f"{v:>15.2f}" for v in row))


if __name__ == "__main__":
    main_()
