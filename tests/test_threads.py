"""Threads: one worker's model used from several threads at once (the CLI batch path, cvat-sdk
functions) gives exactly the single-threaded answers; the feature cache stays bounded and
encodes each frame once when it can hold them all."""

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import nuclio_sdk
import pytest
from harness import Worker, b64, banded_image, cache_mb_for, encode, write_summary

import main
from sam2oct.errors import RequestError

THREADS = 4
FRAMES = [encode(banded_image(32, 24, seed=20 + s)) for s in range(4)]
PROMPTS = [
    {"pos_points": [], "neg_points": []},
    {"pos_points": [[10.0, 8.0]], "neg_points": []},
    {"pos_points": [[20.0, 15.0], [3.0, 20.0]], "neg_points": [[28.0, 4.0]]},
    {"pos_points": [[16.0, 12.0]], "neg_points": [], "obj_bbox": [[4, 4], [28, 20]]},
    {"pos_points": [[1e6, 1.0]], "neg_points": []},  # refused: far outside
]
QUESTIONS = [(f, p) for f in range(len(FRAMES)) for p in range(len(PROMPTS))]
STATS = {}


def ask(model, frame, prompt):
    """One request straight to ModelHandler.infer; a refusal is an answer too."""
    body = {"image": b64(FRAMES[frame]), **PROMPTS[prompt]}
    try:
        return json.dumps(model.infer(body), sort_keys=True)
    except RequestError as exc:
        return f"{exc.status}: {exc}"


def hammer(n_threads, work):
    """Run work(thread_index) in n threads started together; return their results."""
    barrier = threading.Barrier(n_threads)

    def run(i):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(run, range(n_threads)))


def orders(seed, items, rounds=2):
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        batch = list(items)
        rng.shuffle(batch)
        out += batch
    return out


@pytest.mark.parametrize("cache_size", [32, 2])
def test_concurrent_infer_matches_single_threaded(cache_size):
    model = Worker(SAM2OCT_CACHE_MB=cache_mb_for(cache_size, FRAMES[0])).model
    predictor = model.predictor
    expected = {q: ask(model, *q) for q in QUESTIONS}
    assert sum(a.startswith("400") for a in expected.values()) == len(FRAMES)  # the far click, per frame
    predictor.cache.clear()
    hits0, misses0, enc0 = predictor.cache.hits, predictor.cache.misses, predictor.encoder_calls
    sizes, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            sizes.append(predictor.cache.nbytes)
            stop.wait(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        rounds = 2 if cache_size >= len(FRAMES) else 1  # misses cost an encode each
        results = hammer(THREADS, lambda i: [(q, ask(model, *q)) for q in orders(i, QUESTIONS, rounds)])
    finally:
        stop.set()
        watcher.join()
    calls = [r for per_thread in results for r in per_thread]
    assert len(calls) == THREADS * rounds * len(QUESTIONS)
    wrong = [q for q, answer in calls if answer != expected[q]]
    assert not wrong, f"{len(wrong)} answers differ from the single-threaded ones, e.g. {wrong[:3]}"
    hits, misses = predictor.cache.hits - hits0, predictor.cache.misses - misses0
    encodes = predictor.encoder_calls - enc0
    assert hits + misses == len(calls)  # one lookup per request
    assert encodes == misses  # no lost or duplicated encode
    # bounded in bytes at every moment (a frame refused after its encode holds no memo, so the
    # entry count may pass cache_size; the bytes may not)
    assert max(sizes) <= predictor.cache.max_bytes and predictor.cache.nbytes <= predictor.cache.max_bytes
    if cache_size >= len(FRAMES):
        assert encodes == len(FRAMES)  # racing threads waited for the one encode of a frame
    STATS[f"infer, cache {cache_size}"] = (len(calls), hits, misses)


def test_concurrent_handler_calls_detector():
    fn = Worker(SAM2OCT_MODE="detector", SAM2OCT_CACHE_MB=cache_mb_for(8, FRAMES[0], detector=True))
    ctx = fn.context

    def call(frame):
        event = nuclio_sdk.Event(body={"image": b64(FRAMES[frame])}, content_type="application/json",
                                 method="POST", path="/")
        resp = main.handler(ctx, event)
        return resp.status_code, resp.body

    expected = {f: call(f) for f in range(len(FRAMES))}
    assert all(status == 200 for status, _ in expected.values())
    fn.model.predictor.cache.clear()
    results = hammer(THREADS, lambda i: [(f, call(f)) for f in orders(100 + i, range(len(FRAMES)))])
    calls = [r for per_thread in results for r in per_thread]
    assert all(answer == expected[f] for f, answer in calls)
    assert not fn.log.lines("error")
    STATS["main.handler, detector"] = (len(calls), None, None)


@pytest.fixture(scope="module", autouse=True)
def summary():
    """After the file's tests, whichever ran: their summary line (a fixture, not a test that
    depends on the others having run first)."""
    yield
    if STATS:
        write_summary("threads", "THREADS SUMMARY: " + "; ".join(
            f"{name}: {THREADS} threads, {n} calls identical to single-threaded"
            + (f" ({h} hits / {m} misses, encodes == misses)" if h is not None else "")
            for name, (n, h, m) in STATS.items()))
