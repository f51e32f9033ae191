"""Time label_map_to_shapes on a layered 11-class label map, and on a very noisy one.

Run from the repository root:

    .venv/bin/python benchmarks/bench_polygons.py [--repeat 21] [--jitter 0] [--salt 0.055]
    .venv/bin/python benchmarks/bench_polygons.py --label-map saved.npy [--min-area 16]
    .venv/bin/python benchmarks/bench_polygons.py --gdal   # also GDAL's polygonize and sieve, for reference
    .venv/bin/python benchmarks/bench_polygons.py --random-model   # the random-weight model's map

Two maps, both generated deterministically with numpy:

- **layered**: 1024x1024, background and ten wavy layers with a foveal dip,
  plus 40 round blobs (radius 1-8 px) of random classes; ``--jitter`` adds
  per-column noise (px) to every boundary, a ragged worst case.
- **noisy**: the same layers at a B-scan's 768x496, with salt noise: a fraction
  ``--salt`` of the pixels (5.5% by default) set to a random class, which
  gives about 20,000 4-connected regions, most of one to a few pixels -- what
  the model gives with random weights (its map of the sample B-scan had about
  19,000 regions).  Run with ``min_area=16``, the value the function and CLI use.

``--label-map`` times a saved map instead (``.npy`` or an image; classes
0..max), e.g. one dumped from the predictor; ``--random-model`` builds the
random-weight model and times the map it gives for one click on the sample
B-scan (about 19,000 regions).

For each map: the number of regions, the median wall time and CPU time
(and min/max) of label_map_to_shapes against the goal -- CPU time is this
process's own, so it hardly changes when other jobs share the cores (the
load average is printed first) -- and the tiling checks on all shapes,
background included (classes shifted up by one so background is returned
too): gap and overlap area, area outside the image, validity.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import rasterio.features
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sam2oct.geometry.polygons import label_map_to_shapes  # noqa: E402

GOAL_MS = 20.0  # per label map, on one core of the development machine


def layered_map(height=1024, width=None, n_classes=11, n_blobs=40, jitter=0.0, seed=0):
    """Background, 10 wavy layers with a foveal dip, and round noise blobs of random classes.

    ``jitter`` adds independent per-column noise (in pixels) to every boundary,
    a ragged worst case with a vertex at nearly every column.
    """
    width = width or height
    rng = np.random.default_rng(seed)
    x = np.arange(width) / width
    rows = np.arange(height)[:, None]
    top = height * (0.3 + 0.05 * np.sin(3 * np.pi * x) + 0.08 * np.exp(-(((x - 0.5) / 0.06) ** 2)))
    thickness = 0.4 * height / n_classes
    label_map = np.zeros((height, width), np.uint8)
    for k in range(1, n_classes + 1):
        wobble = sum(rng.uniform(0.5, 3) * np.sin(2 * np.pi * rng.uniform(1, 12) * x + rng.uniform(0, 6))
                     for _ in range(3))
        boundary = top + (k - 1) * thickness + wobble + rng.normal(0, jitter, width)
        label_map[rows >= boundary] = k % n_classes  # below the last layer: background again
    yy, xx = np.mgrid[:height, :width]
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0, 1, 2) * [height, width]
        radius = rng.uniform(1, 8)
        label_map[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = rng.integers(0, n_classes)
    return label_map


def salted(label_map, fraction, n_classes=11, seed=1):
    """``label_map`` with a ``fraction`` of its pixels set to a random class."""
    rng = np.random.default_rng(seed)
    noisy = label_map.copy()
    salt = rng.random(noisy.shape) < fraction
    noisy[salt] = rng.integers(0, n_classes, salt.sum())
    return noisy


def random_model_map():
    """Label map of SAM 2.1 Hiera B+ with random weights (seed 0, 11 classes) for one click on the sample B-scan."""
    import torch

    from sam2oct.model.checkpoint import build_model
    from sam2oct.geometry.images import read_image
    from sam2oct.model.predictor import SemanticPredictor

    torch.manual_seed(0)
    predictor = SemanticPredictor(build_model(11).eval(), cache_size=1)
    image = Path(__file__).resolve().parents[1] / "tests" / "data" / "bscan_768x496_s1.png"
    encoded = predictor.encode(read_image(image.read_bytes()))
    return predictor.decode(encoded, points=[[230, 200]], labels=[1]).label_map


def load_map(path):
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path)
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def run_case(title, label_map, min_area, repeat, tolerance=1.0):
    height, width = label_map.shape
    n_classes = int(label_map.max()) + 1
    names = [f"class {k}" for k in range(n_classes)]
    regions = sum(1 for _ in rasterio.features.shapes(label_map.astype(np.int32), connectivity=4))
    shapes = label_map_to_shapes(label_map, names, tolerance=tolerance, min_area=min_area)  # warm-up
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        label_map_to_shapes(label_map, names, tolerance=tolerance, min_area=min_area)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    vertices = sum(len(s["points"]) for s in shapes)
    print(f"{title}: {width}x{height}, {n_classes} classes, {regions} regions; min_area={min_area}"
          f"{'' if tolerance == 1 else f', tolerance={tolerance:g}'}: "
          f"{len(shapes)} polygons, {vertices} vertices")
    for name, times in (("wall", wall), ("CPU ", cpu)):
        median = statistics.median(times) * 1e3
        print(f"  label_map_to_shapes, {name} time: median {median:.1f} ms (min {min(times) * 1e3:.1f}, "
              f"max {max(times) * 1e3:.1f}, {repeat} runs); goal <= {GOAL_MS:g} ms: "
              f"{'met' if median <= GOAL_MS else 'NOT met'}")

    everything = label_map_to_shapes(label_map.astype(np.int32) + 1, ["unused", *names],
                                     tolerance=tolerance, min_area=min_area)
    polys = np.array([shapely.Polygon(s["points"]) for s in everything])
    union = shapely.union_all(polys)
    image = shapely.box(0, 0, width, height)
    print(f"  checks (background included): gap area {image.difference(union).area:g}, "
          f"overlap area {shapely.area(polys).sum() - union.area:g}, "
          f"outside image {union.difference(image).area:g}, all valid {bool(shapely.is_valid(polys).all())}")


def gdal_reference(label_map, repeat):
    """CPU time of GDAL's polygonize and sieve (via rasterio) on a blank map and on ``label_map``: the floor
    a GDAL-based label_map_to_shapes could not go below."""
    def cpu_median(fn):
        times = []
        for _ in range(repeat):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return statistics.median(times) * 1e3

    height, width = label_map.shape
    for title, raster in (("blank", np.zeros_like(label_map)), ("layered", label_map)):
        polygonize = cpu_median(lambda: list(rasterio.features.shapes(raster, connectivity=4)))
        sieve = cpu_median(lambda: rasterio.features.sieve(raster, 25, connectivity=4))
        print(f"GDAL on the {title} {width}x{height} map, CPU time: polygonize (rasterio.features.shapes) "
              f"median {polygonize:.1f} ms, sieve (size 25) median {sieve:.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--jitter", type=float, default=0.0, help="per-column boundary noise of the layered map, px")
    parser.add_argument("--salt", type=float, default=0.055, help="fraction of noisy pixels in the noisy map")
    parser.add_argument("--map", choices=["both", "layered", "noisy"], default="both", help="which maps to time")
    parser.add_argument("--label-map", help="time this saved label map (.npy or image) instead")
    parser.add_argument("--random-model", action="store_true",
                        help="time the label map that SAM 2.1 Hiera B+ with random weights (seed 0) gives for "
                             "one click on tests/data/bscan_768x496_s1.png instead (needs torch; ~10 s to build)")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="simplification tolerance (default 1, the function's)")
    parser.add_argument("--gdal", action="store_true", help="also time GDAL's polygonize and sieve, for reference")
    parser.add_argument("--min-area", type=int, default=None,
                        help="min_area (default: the function's default for the layered map, 16 for the noisy one)")
    args = parser.parse_args()
    # the machine is shared: wall time includes waiting for a core, CPU time (this process's) does not
    print("load average (1, 5, 15 min): " + ", ".join(f"{load:.1f}" for load in os.getloadavg()))

    if args.label_map:
        run_case(args.label_map, load_map(args.label_map), args.min_area or 16, args.repeat, args.tolerance)
        return
    if args.random_model:
        run_case("random-weight model, one click", random_model_map(), args.min_area or 16, args.repeat,
                 args.tolerance)
        return
    if args.gdal:
        gdal_reference(layered_map(), args.repeat)
    if args.map in ("both", "layered"):
        run_case(f"layered (40 blobs, jitter {args.jitter:g} px)", layered_map(jitter=args.jitter),
                 25 if args.min_area is None else args.min_area, args.repeat, args.tolerance)
    if args.map in ("both", "noisy"):
        run_case(f"noisy (salt {args.salt:g})", salted(layered_map(496, 768), args.salt),
                 16 if args.min_area is None else args.min_area, args.repeat, args.tolerance)


if __name__ == "__main__":
    main()
