"""Peak memory of refusing hostile images: decompression bombs and over-large bodies.

Starts the function exactly as Nuclio does (main.init_context through nuclio_sdk's test Platform,
tiny test checkpoint), answers one small request to warm it, then for each hostile request:
resets the kernel's peak-RSS mark (/proc/self/clear_refs), calls the handler, and reports the
peak resident size above the resident size just before the call. A control decodes the 20000x20000
bomb with PIL's limits lifted, to show what refusing it saved.

    python benchmarks/bench_limits.py [--json] [--no-control]

tests/test_limits.py runs it in a subprocess and asserts on its --json output.
"""

import argparse
import base64
import io
import json
import os
import re
import struct
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
MIB = 1 << 20


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width: int, height: int) -> bytes:
    """A genuinely decodable 8-bit grey PNG of zeros; the IDAT is compressed row by row, so
    neither this function nor the file ever holds the raw canvas (20000x20000: ~390 KB)."""
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + the row
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def header_bomb(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR was patched to declare width x height (CRC fixed)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _trim():
    """Hand freed heap back to the OS, so a later allocation shows up in the RSS again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def measure(fn):
    """(result, seconds, peak RSS above the RSS before in MiB, peak traced Python allocation in MiB).

    RSS catches what C libraries allocate (PIL's decoder); tracemalloc catches every Python and
    numpy allocation even where the allocator reuses memory the process already holds."""
    import gc
    import tracemalloc

    gc.collect()
    _trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = kib("VmRSS")
    tracemalloc.start()
    t = time.perf_counter()
    try:
        result = fn()
        seconds = time.perf_counter() - t
        traced = tracemalloc.get_traced_memory()[1] / MIB
    finally:
        tracemalloc.stop()
    return result, seconds, (kib("VmHWM") - before) / 1024, traced


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--no-control", action="store_true", help="skip decoding the bomb (saves ~2 s)")
    args = ap.parse_args(argv)

    os.environ.update({
        "SAM2_CHECKPOINT": str(FIXTURES / "tiny_k9.pt"), "SAM2_CONFIG": str(FIXTURES / "tiny_k9.yaml"),
        "SAM2OCT_WARMUP": "0", "SAM2OCT_MAX_IMAGE_BYTES": str(8 * MIB),
    })
    import logging

    import nuclio_sdk
    import nuclio_sdk.test
    from PIL import Image

    import main as fn_main

    logging.getLogger("mock_platform").setLevel(logging.ERROR)
    platform = nuclio_sdk.test.Platform()

    def call(body):
        event = nuclio_sdk.Event(body=body, content_type="application/json", method="POST", path="/")
        resp = platform.call_handler(fn_main.handler, event)
        return resp.status_code, json.loads(resp.body)

    small = io.BytesIO()
    Image.new("L", (32, 24), 90).save(small, "PNG")
    warm = call({"image": base64.b64encode(small.getvalue()).decode(), "pos_points": [], "neg_points": []})
    assert warm[0] in (200, 422), warm

    t = time.perf_counter()
    bomb = zero_png(20000, 20000)
    build_s = time.perf_counter() - t
    cases = {
        "png_20000x20000_decodable": bomb,
        "png_8000x8000_decodable": zero_png(8000, 8000),  # under PIL's own bomb limit: ours must act
        "png_header_100000x100000": header_bomb(100_000, 100_000),
    }
    rows = []
    for name, data in cases.items():
        body = {"image": base64.b64encode(data).decode(), "pos_points": [], "neg_points": []}
        (status, reply), sec, peak, traced = measure(lambda: call(body))
        rows.append({"case": name, "file_bytes": len(data), "status": status, "error": reply.get("error", ""),
                     "seconds": round(sec, 4), "peak_mib": round(peak, 2), "traced_mib": round(traced, 2)})
    # An over-large body: 24 MiB of image bytes against SAM2OCT_MAX_IMAGE_BYTES = 8 MiB.
    big = base64.b64encode(bytes(24 * MIB)).decode()
    body = {"image": big, "pos_points": [], "neg_points": []}
    (status, reply), sec, peak, traced = measure(lambda: call(body))
    rows.append({"case": "body_24MiB_over_8MiB_limit", "file_bytes": 24 * MIB, "base64_chars": len(big),
                 "status": status, "error": reply.get("error", ""), "seconds": round(sec, 4),
                 "peak_mib": round(peak, 2), "traced_mib": round(traced, 2)})
    # The same with MIME line breaks every 76 characters (CVAT never sends these).
    lines = "\n".join(big[i:i + 76] for i in range(0, len(big), 76))
    del big
    body = {"image": lines, "pos_points": [], "neg_points": []}
    (status, reply), sec, peak, traced = measure(lambda: call(body))
    rows.append({"case": "body_24MiB_mime_lines_over_limit", "file_bytes": 24 * MIB, "base64_chars": len(lines),
                 "status": status, "error": reply.get("error", ""), "seconds": round(sec, 4),
                 "peak_mib": round(peak, 2), "traced_mib": round(traced, 2)})
    del lines, body

    out = {"rows": rows, "bomb_build_seconds": round(build_s, 2), "baseline_rss_mib": round(kib("VmRSS") / 1024, 1)}
    if not args.no_control:
        def decode_bomb():
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(io.BytesIO(bomb)) as im:
                im.load()
                return im.size
        size, sec, peak, _ = measure(decode_bomb)
        out["control_decode"] = {"size": list(size), "seconds": round(sec, 2), "peak_mib": round(peak, 1)}

    if args.json:
        print(json.dumps(out))
        return
    print(f"baseline RSS {out['baseline_rss_mib']} MiB (tiny model loaded, one request answered)")
    for r in rows:
        print(f"{r['case']:32s} {r['file_bytes']:>10d} B  -> {r['status']}  peak RSS +{r['peak_mib']:.1f} MiB, traced {r['traced_mib']:.1f} MiB  "
              f"{r['seconds'] * 1000:.1f} ms  ({r['error'][:70]})")
    if "control_decode" in out:
        c = out["control_decode"]
        print(f"control: decoding the 20000x20000 bomb with PIL's limit lifted: peak +{c['peak_mib']} MiB, "
              f"{c['seconds']} s")


if __name__ == "__main__":
    main()
