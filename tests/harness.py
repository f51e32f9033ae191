"""Drive main.handler the way Nuclio does, with nuclio_sdk's test Platform.

    fn = Worker(SAM2OCT_MODE="detector")           # init_context runs now, under these env vars
    status, body = fn.call({"image": b64(data)})   # a Reply: also reply.status, reply.json
    fn.model, fn.context, fn.log.lines("error")    # the worker's ModelHandler, context, log

A Worker starts from the tiny test checkpoint with warm-up off (BASE_ENV) plus the given
variables (None unsets one); nothing from the caller's shell leaks in, and os.environ is put
back afterwards, also when init fails. main reads the environment only in init_context, so a
Worker keeps its configuration for life: share one per configuration (module-scoped fixture).
"""

import base64
import io
import json
import logging
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import nuclio_sdk
import nuclio_sdk.json_encoder
import nuclio_sdk.test
import numpy as np
from conftest import ROOT, TINY_CKPT, TINY_CONFIG
from PIL import Image

import main
from sam2oct.serving.settings import ENV_VARS

BASE_ENV = {"SAM2_CHECKPOINT": str(TINY_CKPT), "SAM2_CONFIG": str(TINY_CONFIG), "SAM2OCT_WARMUP": "0"}
NR206_NAMES = ("background", "NFL", "GCL+IPL", "INL", "OPL", "ONL", "ELM+IS", "OS", "RPE")


# --- environment and worker ------------------------------------------------------------------

def _apply(env: dict):
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)


@contextmanager
def environ(env: dict):
    """Set (value) or unset (None) variables for the duration; restore them after."""
    saved = {name: os.environ.get(name) for name in env}
    try:
        _apply(env)
        yield
    finally:
        _apply(saved)


class RecordingLogger(nuclio_sdk.Logger):
    """The Platform's own nuclio_sdk logger (stdout, caplog) that also keeps every line it is given."""

    LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error"}

    def __init__(self):
        super().__init__(logging.DEBUG, "mock_platform")
        self.records = []  # (level, message)
        self._lock = threading.Lock()

    def _update_bound_vars_and_log(self, level, message, *args, **kw):
        # every public method (debug ... error_with) ends here
        with self._lock:
            self.records.append((self.LEVELS[level], str(message) % args if args else str(message)))
        super()._update_bound_vars_and_log(level, message, *args, **kw)

    def lines(self, level):
        with self._lock:
            return [m for lv, m in self.records if lv == level]


def _no_constant(name):
    raise AssertionError(f"reply body holds {name}, which is not JSON")


class Reply(NamedTuple):
    """A checked reply: unpacks and compares as (status, parsed JSON body)."""

    status: int
    json: object

    def __repr__(self):
        return f"Reply({self.status}, {json.dumps(self.json)[:200]})"


class Worker:
    """One Nuclio worker: a Platform whose init_context ran once under the given environment."""

    def __init__(self, log=None, **env):
        self.platform = nuclio_sdk.test.Platform()
        self.log = log if log is not None else RecordingLogger()
        self.platform._logger = self.log  # the contexts the Platform builds take this logger
        self.requests = 0
        with environ({**{name: None for name in ENV_VARS}, **BASE_ENV, **env}):
            # The Platform runs init_context on its first call; run it now, under this environment.
            self.context = self.platform._get_handler_context(main.handler)
        assert self.response({}).status_code == 400  # an empty body is refused, not answered

    @property
    def model(self):
        return self.context.user_data.model

    def response(self, body, content_type="application/json") -> nuclio_sdk.Response:
        """The handler's raw return value."""
        event = nuclio_sdk.Event(body=body, content_type=content_type, method="POST", path="/")
        return self.platform.call_handler(main.handler, event)

    def call(self, body, content_type="application/json") -> Reply:
        """One request; checks the reply is a Response with a strict JSON body (NaN is not JSON)."""
        self.requests += 1
        resp = self.response(body, content_type)
        assert isinstance(resp, nuclio_sdk.Response), f"handler returned {type(resp).__name__}"
        assert isinstance(resp.body, str), f"body is {type(resp.body).__name__}, not a JSON string"
        assert resp.content_type == "application/json"
        return Reply(resp.status_code, json.loads(resp.body, parse_constant=_no_constant))


def cache_mb_for(entries: int, frame: bytes, *, detector=False) -> str:
    """SAM2OCT_CACHE_MB that holds exactly ``entries`` frames the size of ``frame``.

    The cache is bounded in bytes; a frame's entry is its features, the memoised unprompted
    prediction (with the detector's confidence map when ``detector``) and the frame's results
    (cleaned label map, shapes), plus the grey frame kept by its file's digest: about the same for
    every frame of one size. Half an entry of slack keeps the bound between ``entries`` and
    ``entries + 1``.
    """
    worker = Worker(SAM2OCT_MODE="detector") if detector else Worker()
    assert worker.call({"image": b64(frame)}).status == 200
    return repr((entries + 0.5) * worker.model.predictor.cache.nbytes / (1 << 20))


def start_failure(**env) -> tuple[BaseException, RecordingLogger]:
    """Start a worker that must fail in init_context; returns the exception and what it logged."""
    log = RecordingLogger()
    try:
        Worker(log, **env)
    except Exception as exc:  # noqa: BLE001 - whatever escapes init_context is what is tested
        return exc, log
    raise AssertionError(f"init_context succeeded with {env}")


def wire(response) -> dict:
    """What Nuclio's wrapper would send for a handler's return value."""
    return nuclio_sdk.Response.from_entrypoint_output(nuclio_sdk.json_encoder.Encoder().encode, response)


# --- images ----------------------------------------------------------------------------------

def b64(data) -> str:
    """Base64 text of bytes or of a file (str or Path), as CVAT sends an image."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    return base64.b64encode(data).decode("ascii")


def encode(im: Image.Image, fmt="PNG", **kw) -> bytes:
    """The file bytes of a PIL image (PNG unless told)."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


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
    """The interactor's reply is well-formed and consistent: CVAT 2.60+'s mask shapes (the default
    format), or stock CVAT's legacy fields (and the fork's polygon shapes)."""
    assert reply.status == 200, reply
    obj = reply.json
    assert isinstance(obj, dict)
    assert set(obj["labels"]) <= set(labels[1:])
    if "mask" not in obj:
        _check_mask_shapes(obj, width, height)
        return
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
    for shape in obj.get("shapes", []):
        assert shape["type"] == "polygon" and shape["label"] in labels[1:]
        assert len(shape["points"]) >= 3
        for x, y in shape["points"]:
            assert 0 <= x <= width and 0 <= y <= height


def _check_mask_shapes(obj, width, height):
    """CVAT 2.60+'s interactor reply: mask shapes (run lengths over a tight box), or none and why."""
    shapes = obj["shapes"]
    assert isinstance(shapes, list) and len(shapes) <= 1
    if not shapes:
        assert obj["reason"] and not obj["labels"], obj
    for shape in shapes:
        assert set(shape) == {"type", "points", "attributes", "group", "occluded", "rotation", "source"}
        assert shape["type"] == "mask" and shape["source"] == "semi-auto"
        (conf,) = shape["attributes"]
        assert conf["spec_id"] == 0 and 0 <= float(conf["value"]) <= 1
        *runs, x1, y1, x2, y2 = shape["points"]
        assert all(map(_is_int, shape["points"]))
        assert 0 <= x1 <= x2 < width and 0 <= y1 <= y2 < height
        assert len(runs) >= 2 and runs[1] > 0 and min(runs) >= 0 and min(runs[1:]) > 0
        assert sum(runs) == (x2 - x1 + 1) * (y2 - y1 + 1)


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


# --- memory and summaries --------------------------------------------------------------------

def vm_kib(field="VmRSS") -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


SUMMARY_DIR_ENV = "SAM2OCT_SUMMARY_DIR"


def write_summary(name: str, line: str) -> None:
    """Print a suite's summary line and, when $SAM2OCT_SUMMARY_DIR names a folder (as
    scripts/reliability_report.py sets it), keep it there as <name>.txt. A plain test run
    writes nothing into the repository."""
    print("\n" + line)
    folder = os.environ.get(SUMMARY_DIR_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.txt").write_text(line + "\n")
