"""Shared pieces of the reliability suites: start the Nuclio function the way Nuclio does
(``nuclio_sdk.test.Platform``), record what it logs, build test images, check replies."""

import base64
import io
import json
import os
import re
import threading
from contextlib import contextmanager

import nuclio_sdk
import nuclio_sdk.test
import numpy as np
from conftest import TINY_CKPT, TINY_CONFIG
from PIL import Image

import main
from sam2oct.settings import ENV_VARS

BASE_ENV = {
    "SAM2_CHECKPOINT": str(TINY_CKPT),
    "SAM2_CONFIG": str(TINY_CONFIG),
    "SAM2OCT_WARMUP": "0",
}
NR206_NAMES = ("background", "NFL", "GCL+IPL", "INL", "OPL", "ONL", "ELM+IS", "OS", "RPE")


@contextmanager
def environ(env: dict):
    """Set (value str) or unset (value None) variables for the duration; restore after."""
    saved = {k: os.environ.get(k) for k in env}
    try:
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RecordingLogger:
    """The nuclio_sdk Logger interface (no warning(), no exception()), keeping every line."""

    def __init__(self):
        self.records = []  # (level, message)
        self._lock = threading.Lock()

    def _log(self, level, message, *args, **kw):
        with self._lock:
            self.records.append((level, str(message) % args if args else str(message)))

    def debug(self, message, *args):
        self._log("debug", message, *args)

    def info(self, message, *args):
        self._log("info", message, *args)

    def warn(self, message, *args):
        self._log("warn", message, *args)

    def error(self, message, *args):
        self._log("error", message, *args)

    def debug_with(self, message, *args, **kw):
        self._log("debug", message, *args)

    def info_with(self, message, *args, **kw):
        self._log("info", message, *args)

    def warn_with(self, message, *args, **kw):
        self._log("warn", message, *args)

    def error_with(self, message, *args, **kw):
        self._log("error", message, *args)

    def lines(self, level):
        with self._lock:
            return [m for lv, m in self.records if lv == level]


def _no_constant(name):
    raise AssertionError(f"reply body holds {name}, which is not JSON")


class Reply:
    def __init__(self, response):
        self.response = response
        self.status = response.status_code
        # What Nuclio's wrapper would put on the wire: the body must already be a JSON string.
        assert isinstance(response.body, str), f"body is {type(response.body).__name__}, not a JSON string"
        assert response.content_type == "application/json"
        self.json = json.loads(response.body, parse_constant=_no_constant)  # NaN is not JSON

    def __repr__(self):
        return f"Reply({self.status}, {json.dumps(self.json)[:200]})"


class Function:
    """One Nuclio worker: a Platform whose init_context ran once under the given environment."""

    def __init__(self, log=None, **env):
        self.platform = nuclio_sdk.test.Platform()
        self.log = log if log is not None else RecordingLogger()
        self.platform._logger = self.log  # the contexts the Platform builds take this logger
        self.requests = 0
        self._context = None
        # Only the given variables: nothing from the caller's shell leaks in.
        with environ({**{k: None for k in ENV_VARS}, **BASE_ENV, **env}):
            # init_context runs on the first call; keep the context it built.
            first = self.platform.call_handler_with_context_mutation(main.handler, _event({}), self._keep)
        assert first.status_code == 400  # an empty body is refused, not answered

    def _keep(self, context):
        self._context = context
        return context

    @property
    def context(self):
        return self._context

    @property
    def model(self):
        return self._context.user_data.model

    def call(self, body, content_type="application/json") -> Reply:
        self.requests += 1
        return Reply(self.platform.call_handler(main.handler, _event(body, content_type)))


def _event(body, content_type="application/json"):
    return nuclio_sdk.Event(body=body, content_type=content_type, method="POST", path="/")


def start_failure(**env) -> tuple[BaseException, RecordingLogger]:
    """Start a worker that must fail in init_context; returns the exception and what it logged."""
    log = RecordingLogger()
    try:
        Function(log=log, **env)
    except Exception as exc:  # noqa: BLE001 - whatever escapes init_context is what is tested
        return exc, log
    raise AssertionError(f"init_context succeeded with {env}")


# --- images ----------------------------------------------------------------------------------

def encode(im: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def noise_image(width, height, seed=0, mode="L") -> Image.Image:
    rng = np.random.default_rng(seed)
    a = (rng.random((height, width)) * 255).astype(np.uint8)
    return Image.fromarray(a, "L") if mode == "L" else Image.fromarray(a, "L").convert(mode)


def banded_image(width, height, seed=0) -> Image.Image:
    """A smooth B-scan-like picture (horizontal bands), different per seed."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    a = 0.5 + 0.4 * np.sin(2 * np.pi * (3 + seed) * y + rng.random() * 6 * x)
    return Image.fromarray((a * 255).astype(np.uint8), "L")


# --- reply checks ----------------------------------------------------------------------------

def check_error(reply: Reply):
    assert 400 <= reply.status < 500, reply
    assert isinstance(reply.json, dict) and isinstance(reply.json.get("error"), str) and reply.json["error"], reply


def _is_int(v):
    return type(v) is int


def check_interactor(reply: Reply, width, height, labels=NR206_NAMES):
    """Stock CVAT's interactor fields (and the fork's shapes) are well-formed and consistent."""
    assert reply.status == 200, reply
    obj = reply.json
    assert isinstance(obj, dict)
    mask, bounds = obj["mask"], obj["bounds"]
    assert isinstance(bounds, list) and len(bounds) == 4 and all(map(_is_int, bounds)), bounds
    xtl, ytl, xbr, ybr = bounds
    assert 0 <= xtl <= xbr < width and 0 <= ytl <= ybr < height, (bounds, width, height)
    assert isinstance(mask, list) and len(mask) == ybr - ytl + 1
    assert all(isinstance(row, list) and len(row) == xbr - xtl + 1 for row in mask)
    values = {v for row in mask for v in row}
    assert all(_is_int(v) for row in mask for v in row)
    assert values <= {0, 1} and 1 in values, values  # one non-zero value, and something set
    # bounds are tight: the first/last row and column hold a set pixel
    assert any(mask[0]) and any(mask[-1])
    assert any(row[0] for row in mask) and any(row[-1] for row in mask)
    pts = obj["points"]
    assert isinstance(pts, list) and len(pts) >= 3
    for x, y in pts:
        assert 0 <= x <= width and 0 <= y <= height, (x, y)
    for shape in obj["shapes"]:
        assert shape["type"] == "polygon" and shape["label"] in labels[1:]
        assert len(shape["points"]) >= 3
        for x, y in shape["points"]:
            assert 0 <= x <= width and 0 <= y <= height
    assert set(obj["labels"]) <= set(labels[1:])


def check_detector(reply: Reply, width, height, labels=NR206_NAMES):
    assert reply.status == 200, reply
    items = reply.json
    assert isinstance(items, list)
    covered = 0
    for item in items:
        assert item["type"] == "mask" and item["label"] in labels[1:]
        mask = item["mask"]
        assert all(map(_is_int, mask))
        xtl, ytl, xbr, ybr = mask[-4:]
        assert 0 <= xtl <= xbr < width and 0 <= ytl <= ybr < height
        bitmap = mask[:-4]
        assert len(bitmap) == (xbr - xtl + 1) * (ybr - ytl + 1)
        assert set(bitmap) <= {0, 255} and 255 in bitmap
        covered += bitmap.count(255)
        pts = item["points"]
        assert len(pts) % 2 == 0 and len(pts) >= 6
        assert 0.0 <= float(item["confidence"]) <= 1.0
    assert covered <= width * height


# --- memory ----------------------------------------------------------------------------------

def vm_kib(field="VmRSS") -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# --- figures for docs/RELIABILITY.md ---------------------------------------------------------

def write_summary(name: str, line: str) -> None:
    """Keep a suite's summary line under out/reliability/ (scripts/reliability_report.py reads them)."""
    from conftest import ROOT

    folder = ROOT / "out" / "reliability"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(line + "\n")
