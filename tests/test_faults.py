"""Faults on the device: out of memory during a request answers 503, frees the feature cache and
the next request succeeds; an internal fault answers 500 and the worker keeps serving; a failed
cold start is logged once, clearly, with its cause, and stops the worker."""

import threading

import pytest
import torch
from conftest import TINY_CKPT
from harness import Worker, b64, banded_image, encode, start_failure, write_summary

import sam2oct.geometry.polygons
from sam2oct.errors import CheckpointError, ConfigError

FRAME_A = encode(banded_image(32, 24, seed=11))
FRAME_B = encode(banded_image(32, 24, seed=12))
SURVIVED = []  # (fault, status) for the summary line
COLD = []
# the fork's reply format: its requests also trace polygons, so a fault can strike every stage
FORK = {"SAM2OCT_CVAT_UI": "cvat-oct"}


def body(frame, **kw):
    return {"image": b64(frame), "pos_points": [[16.0, 12.0]], "neg_points": [], **kw}


@pytest.fixture(scope="module")
def reference():
    """Answers of an untroubled worker."""
    fn = Worker(**FORK)
    return {name: fn.call(body(f)).json for name, f in (("A", FRAME_A), ("B", FRAME_B))}


@pytest.fixture
def fn():
    return Worker(SAM2OCT_CACHE_SIZE="4", **FORK)


def fail_once(monkeypatch, owner, name, exc):
    """owner.name raises exc on its next call, then behaves again."""
    original = getattr(owner, name)
    state = {"calls": 0}

    def flaky(*args, **kw):
        state["calls"] += 1
        if state["calls"] == 1:
            raise exc
        return original(*args, **kw)

    monkeypatch.setattr(owner, name, flaky)
    return state


def encoder_of(predictor):
    """(owner, name) of what encodes a frame: the OpenVINO encoder where the runtime resolved to
    it (the default on a CPU), else the model's own encode_image."""
    if predictor.encoder is not None:
        return predictor, "encoder"
    return predictor.model, "encode_image"


def oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("where, exc", [
    ("encode_image", oom), ("decode", oom), ("encode_image", MemoryError), ("shapes", MemoryError),
])
def test_out_of_memory_is_503_frees_the_cache_and_the_next_request_works(fn, reference, monkeypatch, where, exc):
    assert fn.call(body(FRAME_A)).json == reference["A"]
    predictor = fn.model.predictor
    assert predictor.cache.frames == 1
    owner, name = {"encode_image": encoder_of(predictor), "decode": (predictor.model, "decode"),
                   "shapes": (sam2oct.geometry.polygons, "trace_label_map")}[where]
    state = fail_once(monkeypatch, owner, name, exc())
    reply = fn.call(body(FRAME_B))
    assert state["calls"] == 1
    assert reply.status == 503 and "out of memory" in reply.json["error"], reply
    assert len(predictor.cache) == 0  # freed what it could
    assert any("out of memory" in line for line in fn.log.lines("error"))
    # The next request succeeds, with the same answer as an untroubled worker.
    again = fn.call(body(FRAME_B))
    assert again.status == 200 and again.json == reference["B"]
    assert fn.call(body(FRAME_A)).json == reference["A"]
    SURVIVED.append((f"{exc.__name__ if isinstance(exc, type) else 'torch.OutOfMemoryError'} in {where}", 503))


def test_out_of_memory_releases_the_model_lock(fn, reference, monkeypatch):
    fail_once(monkeypatch, *encoder_of(fn.model.predictor), oom())
    assert fn.call(body(FRAME_A)).status == 503
    # Another thread can use the model right away: the fault left no lock held.
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn.model.infer(body(FRAME_B))))
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the model lock stayed held after the fault"
    assert out["r"] == reference["B"]
    SURVIVED.append(("torch.OutOfMemoryError, then another thread", 503))


def test_repeated_out_of_memory_then_recovery(fn, reference, monkeypatch):
    for _ in range(3):
        fail_once(monkeypatch, *encoder_of(fn.model.predictor), oom())
        assert fn.call(body(FRAME_A)).status == 503
        monkeypatch.undo()
    assert fn.call(body(FRAME_A)).json == reference["A"]
    assert len(fn.log.lines("error")) == 3  # one line per fault
    SURVIVED.append(("3 x torch.OutOfMemoryError in a row", 503))


def test_internal_fault_is_500_logged_and_the_worker_recovers(fn, reference, monkeypatch):
    fail_once(monkeypatch, fn.model.predictor.model, "decode", RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"))
    reply = fn.call(body(FRAME_A))
    assert reply.status == 500 and reply.json == {"error": "internal error: RuntimeError"}
    (line,) = fn.log.lines("error")
    assert "Traceback" in line and "CUDNN_STATUS_INTERNAL_ERROR" in line
    assert fn.call(body(FRAME_A)).json == reference["A"]
    SURVIVED.append(("RuntimeError in decode", 500))


# --- cold start -------------------------------------------------------------------------------

def _truncated(tmp_path):
    path = tmp_path / "truncated.pt"
    data = TINY_CKPT.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return str(path)


@pytest.mark.parametrize("env, exc_type, cause", [
    (lambda t: {"SAM2_CHECKPOINT": str(t / "models" / "nr206" / "missing.pt")}, CheckpointError,
     ["SAM2_CHECKPOINT: ", "missing.pt", "not found", "python -m sam2oct download"]),
    (lambda t: {"SAM2_CHECKPOINT": None}, CheckpointError, ["SAM2_CHECKPOINT: no checkpoint given", "download"]),
    (lambda t: {"SAM2_CHECKPOINT": _truncated(t)}, CheckpointError, ["truncated.pt", "not a readable PyTorch checkpoint"]),
    (lambda t: {"SAM2_CONFIG": str(t / "nope.yaml")}, CheckpointError, ["nope.yaml", "not found", "SAM2_CONFIG"]),
    (lambda t: {"SAM2_DEVICE": "cuda:0"}, ConfigError, ["SAM2_DEVICE", "CUDA is not available"]),
    (lambda t: {"SAM2OCT_CACHE_MB": "lots"}, ConfigError, ["SAM2OCT_CACHE_MB", "lots"]),
], ids=["missing-checkpoint", "unset-checkpoint", "truncated-checkpoint", "missing-config", "no-cuda", "bad-env"])
def test_cold_start_failure_is_logged_once_with_its_cause(tmp_path, env, exc_type, cause):
    exc, log = start_failure(**env(tmp_path))
    assert isinstance(exc, exc_type), repr(exc)
    errors = log.lines("error")
    assert len(errors) == 1, errors  # once
    assert errors[0].startswith("sam2-oct: cannot start: ")
    for word in cause:
        assert word in errors[0], (word, errors[0])
    assert "Traceback" not in errors[0]  # the cause in words, not a stack
    assert not log.lines("warn")
    COLD.append(errors[0].split("cannot start: ", 1)[1][:90])


@pytest.fixture(scope="module", autouse=True)
def summary():
    """After the file's tests, whichever ran: their summary line."""
    yield
    if SURVIVED or COLD:
        write_summary("faults", f"FAULTS SUMMARY: {len(SURVIVED)} request faults survived (next request 200, "
                      "same answer): " + "; ".join(f"{f} -> {s}" for f, s in SURVIVED)
                      + f". {len(COLD)} cold-start failures logged once each with the cause")
