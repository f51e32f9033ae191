"""Time label_map_to_shapes on a 1024x1024, 11-class layered label map with noise blobs.

Run from the repository root:

    .venv/bin/python benchmarks/bench_polygons.py [--repeat 21] [--jitter 0]

Prints the median wall time (and min/max) of label_map_to_shapes with its
defaults, then the tiling checks: the gap and overlap area of all shapes,
background included (classes shifted up by one so background is returned too).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sam2oct.polygons import label_map_to_shapes  # noqa: E402


def layered_map(size=1024, n_classes=11, n_blobs=40, jitter=0.0, seed=0):
    """Background, 10 wavy layers with a foveal dip, and round noise blobs of random classes.

    ``jitter`` adds independent per-column noise (in pixels) to every boundary,
    a ragged worst case with a vertex at nearly every column.
    """
    rng = np.random.default_rng(seed)
    x = np.arange(size) / size
    rows = np.arange(size)[:, None]
    top = size * (0.3 + 0.05 * np.sin(3 * np.pi * x) + 0.08 * np.exp(-(((x - 0.5) / 0.06) ** 2)))
    thickness = 0.4 * size / n_classes
    label_map = np.zeros((size, size), np.uint8)
    for k in range(1, n_classes + 1):
        wobble = sum(rng.uniform(0.5, 3) * np.sin(2 * np.pi * rng.uniform(1, 12) * x + rng.uniform(0, 6))
                     for _ in range(3))
        boundary = top + (k - 1) * thickness + wobble + rng.normal(0, jitter, size)
        label_map[rows >= boundary] = k % n_classes  # below the last layer: background again
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n_blobs):
        cy, cx, radius = rng.uniform(0, size, 2).tolist() + [rng.uniform(1, 8)]
        label_map[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = rng.integers(0, n_classes)
    return label_map


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--jitter", type=float, default=0.0, help="per-column boundary noise in pixels")
    args = parser.parse_args()

    label_map = layered_map(jitter=args.jitter)
    names = [f"class {k}" for k in range(11)]
    shapes = label_map_to_shapes(label_map, names)  # warm-up
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        label_map_to_shapes(label_map, names)
        times.append(time.perf_counter() - start)
    vertices = sum(len(s["points"]) for s in shapes)
    print(f"map 1024x1024, 11 classes, 40 blobs, jitter {args.jitter:g} px: "
          f"{len(shapes)} polygons, {vertices} vertices")
    print(f"label_map_to_shapes: median {statistics.median(times) * 1e3:.1f} ms "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, {args.repeat} runs)")

    everything = label_map_to_shapes(label_map.astype(np.int32) + 1, ["unused", *names])
    polys = [shapely.Polygon(s["points"]) for s in everything]
    union = shapely.union_all(polys)
    image = shapely.box(0, 0, 1024, 1024)
    print(f"checks (background included): gap area {image.difference(union).area:g}, "
          f"overlap area {sum(p.area for p in polys) - union.area:g}, "
          f"outside image {union.difference(image).area:g}, all valid {all(p.is_valid for p in polys)}")


if __name__ == "__main__":
    main()
