"""Resource limits: decompression bombs and over-large bodies are refused (413) before any big
allocation, and the limits are the configured ones (SAM2OCT_MAX_PIXELS, SAM2OCT_MAX_IMAGE_BYTES,
SAM2OCT_MAX_POINTS)."""

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from PIL import Image
from harness import Worker, b64, banded_image, check_error, check_interactor, encode, write_summary

sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_limits import header_bomb, zero_png  # noqa: E402

BOUND_MIB = 50  # refusing may cost this much at most; decoding the 20000x20000 bomb costs ~380 MiB


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench_limits.py --json in a fresh process (its own peak-RSS mark)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_limits.py"), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bombs_and_big_bodies_refused_without_big_allocation(bench):
    rows = {r["case"]: r for r in bench["rows"]}
    assert set(rows) == {"png_20000x20000_decodable", "png_8000x8000_decodable", "png_header_100000x100000",
                         "body_24MiB_over_8MiB_limit", "body_24MiB_mime_lines_over_limit"}
    for r in rows.values():
        assert r["status"] == 413, r
        assert r["peak_mib"] < BOUND_MIB and r["traced_mib"] < BOUND_MIB, r
        assert r["seconds"] < 2.0, r
    assert "SAM2OCT_MAX_PIXELS" in rows["png_8000x8000_decodable"]["error"]  # our limit, not PIL's
    assert rows["png_20000x20000_decodable"]["file_bytes"] < 1_000_000  # a small file...
    control = bench["control_decode"]
    assert control["size"] == [20000, 20000]  # ...that really decodes...
    assert control["peak_mib"] > 300  # ...into ~400 MB: refusing saved that
    worst = max(r["peak_mib"] for r in rows.values())
    line = (f"LIMITS SUMMARY: {len(rows)} hostile requests -> 413; worst peak RSS increase {worst:.1f} MiB "
            f"(bound {BOUND_MIB}); " + "; ".join(f"{k} {r['file_bytes']} B: +{r['peak_mib']} MiB RSS, "
                                                 f"{r['traced_mib']} MiB traced" for k, r in rows.items())
            + f"; control: decoding the 20000x20000 bomb +{control['peak_mib']} MiB in {control['seconds']} s")
    write_summary("limits", line)


@pytest.fixture(scope="module")
def small_limits():
    return Worker(SAM2OCT_MAX_PIXELS="1000", SAM2OCT_MAX_IMAGE_BYTES="4000", SAM2OCT_MAX_POINTS="3")


def _body(im_bytes, **extra):
    return {"image": b64(im_bytes), "pos_points": [], "neg_points": [], **extra}


def test_pixel_limit_is_configurable(small_limits):
    ok = small_limits.call(_body(encode(banded_image(40, 25))))  # 1000 pixels: the limit
    check_interactor(ok, 40, 25)
    over = small_limits.call(_body(encode(banded_image(40, 26))))  # 1040
    check_error(over)
    assert over.status == 413 and "SAM2OCT_MAX_PIXELS" in over.json["error"] and "1000" in over.json["error"]
    # the same picture passes a worker with the default limit
    assert Worker().call(_body(encode(banded_image(40, 26)))).status == 200


def test_image_bytes_limit_is_exact_and_configurable(small_limits):
    png = encode(banded_image(30, 20))
    assert len(png) < 4000
    at_limit = png + bytes(4000 - len(png))  # bytes after IEND are ignored by PNG readers
    check_interactor(small_limits.call(_body(at_limit)), 30, 20)
    for extra in (1, 2, 3, 1000):
        reply = small_limits.call(_body(at_limit + bytes(extra)))
        assert reply.status == 413 and "4000 bytes" in reply.json["error"], (extra, reply)


def test_points_limit_is_configurable(small_limits):
    png = encode(banded_image(30, 20))
    three = [[5, 5], [10, 10], [15, 12]]
    assert small_limits.call(_body(png, pos_points=three)).status in (200, 422)
    for key in ("pos_points", "neg_points"):
        reply = small_limits.call(_body(png, **{key: three + [[1, 1]]}))
        assert reply.status == 400 and "at most 3" in reply.json["error"], reply
    brush = [{"label": "NFL", "mask": [600, 0, 0, 29, 19]}] * 4
    reply = small_limits.call(_body(png, brush=brush))
    assert reply.status == 400 and "at most 3" in reply.json["error"], reply


def test_bombs_through_the_handler_are_fast_413():
    fn = Worker()
    for data in (zero_png(20000, 20000), header_bomb(100_000, 100_000), header_bomb(4097, 4096)):
        t = time.perf_counter()
        reply = fn.call(_body(data))
        assert reply.status == 413 and "pixels" in reply.json["error"], reply
        assert time.perf_counter() - t < 1.0
    # one pixel over the default 4096 x 4096 names our limit
    assert "SAM2OCT_MAX_PIXELS" in fn.call(_body(header_bomb(4097, 4096))).json["error"]


def test_huge_lists_refused_by_length_not_by_walking_them():
    fn = Worker()
    png = encode(Image.new("L", (8, 8), 100))
    t = time.perf_counter()
    for body in (_body(png, pos_points=[[1, 1]] * 1_000_000),
                 _body(png, brush=[{"label": "NFL", "mask": [1]}] * 1_000_000),
                 _body(png, brush=[{"label": "NFL", "mask": [1] * 1_000_000 + [0, 0, 0, 0]}])):
        reply = fn.call(body)
        check_error(reply)
    assert time.perf_counter() - t < 2.0
