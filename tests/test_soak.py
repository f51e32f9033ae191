"""Soak: hundreds of requests over more frames than the feature cache holds, interactor and
detector mixed. Memory stays flat after warm-up, the cache stays bounded, nothing accumulates,
every answer equals the first answer to the same question, and the cache hit counts equal the
ones worked out by hand for the access pattern.

Short form always runs (~250 requests). SAM2OCT_SOAK_LONG=1 runs ten times as many.
"""

import gc
import json
import logging
import os

import pytest
from harness import Worker, b64, banded_image, cache_mb_for, encode, vm_kib, write_summary

from sam2oct.model.predictor import EncodedImage

LONG = os.environ.get("SAM2OCT_SOAK_LONG", "") not in ("", "0")
SCALE = 10 if LONG else 1
CACHE = 3
FRAMES = [encode(banded_image(32, 24, seed=s)) for s in range(5)]  # 5 distinct frames > 3 cached
PROMPTS = [  # six clicks an annotator might make on one frame
    {"pos_points": [], "neg_points": []},
    {"pos_points": [[8.0, 20.0]], "neg_points": []},
    {"pos_points": [], "neg_points": [[16.0, 12.0]]},
    {"pos_points": [[12.5, 10.5]], "neg_points": []},
    {"pos_points": [[30.0, 20.0], [5.0, 3.0]], "neg_points": []},
    {"pos_points": [[16.0, 12.0]], "neg_points": [[28.0, 6.0]], "obj_bbox": [[2, 2], [30, 22]]},
]
RSS_BOUND_MIB = 64  # resident growth allowed after warm-up
OBJECTS_BOUND = 2000  # growth allowed in the number of live Python objects after warm-up


# Both encoder runtimes: OpenVINO's worker threads hold memory differently from PyTorch's (see
# sam2oct/model/malloc_arenas.py). openvino is a test requirement, so both always run.
@pytest.fixture(scope="module", params=["torch", "openvino"])
def workers(request):
    runtime = {"SAM2OCT_RUNTIME": request.param}
    return (Worker(SAM2OCT_CACHE_MB=cache_mb_for(CACHE, FRAMES[0]), **runtime),
            Worker(SAM2OCT_CACHE_MB=cache_mb_for(CACHE, FRAMES[0], detector=True), SAM2OCT_MODE="detector",
                   **runtime))


class Soak:
    def __init__(self, interactor, detector):
        self.fns = {"interactor": interactor, "detector": detector}
        self.first = {}  # (mode, frame, prompt) -> first reply, as JSON text
        self.sent = 0
        self.rss = []  # KiB samples

    def call(self, mode, frame, prompt=0):
        fn = self.fns[mode]
        body = {"image": b64(FRAMES[frame]), **(PROMPTS[prompt] if mode == "interactor" else {})}
        reply = fn.call(body)
        self.sent += 1
        assert reply.status in (200, 422), reply
        text = json.dumps([reply.status, reply.json], sort_keys=True)
        assert self.first.setdefault((mode, frame, prompt), text) == text, (mode, frame, prompt)
        assert fn.model.predictor.cache.frames <= CACHE

    def counts(self, mode):
        p = self.fns[mode].model.predictor
        return p.cache.hits, p.cache.misses, p.encoder_calls

    def phase(self, run):
        """Run a phase; return the (hits, misses) it added per mode, after checking encodes == misses."""
        before = {m: self.counts(m) for m in self.fns}
        run()
        out = {}
        for m in self.fns:
            h0, m0, e0 = before[m]
            h1, m1, e1 = self.counts(m)
            assert e1 - e0 == m1 - m0, f"{m}: {e1 - e0} encodes for {m1 - m0} misses"
            out[m] = (h1 - h0, m1 - m0)
        return out


def _live_objects():
    """Live objects the worker could hold, less the log records pytest's log capture keeps (one
    per request line, a growth of the test run, not of the worker)."""
    return sum(type(o) is not logging.LogRecord for o in gc.get_objects())


def _live_encoded():
    gc.collect()
    return sum(type(o) is EncodedImage for o in gc.get_objects())


def test_soak(workers):
    soak = Soak(*workers)
    r1, visits, r3 = 3 * SCALE, 20 * SCALE, 20 * SCALE

    # Phase 1, warm-up: cycle the 5 frames r1 times. Under LRU with 3 entries, the frame asked
    # for is always the one evicted 2 requests ago: 0 hits, 5 * r1 misses.
    # The warm level is the highest RSS seen late in the warm-up, sampled after every request once
    # each worker has run its first inferences: OpenVINO's resident memory swings by tens of MiB
    # from one inference to the next (freed and taken again, not kept), so a leak shows as growth
    # above that peak, not above one sample.
    warm_samples = []
    for f in range(5):  # detector warm-up: 5 misses on an empty cache
        soak.call("detector", f)

    def cyclic():
        for i in range(5 * r1):
            soak.call("interactor", i % 5, i // 5 % len(PROMPTS))
            if i >= 5:
                warm_samples.append(vm_kib("VmRSS"))
    assert soak.phase(cyclic) == {"interactor": (0, 5 * r1), "detector": (0, 0)}
    gc.collect()
    warm_rss, warm_objects = max(warm_samples), _live_objects()

    # Phase 2, locality: visit frames 0,1,2,3,4,0,... clicking the 6 prompts on each. The visit's
    # frame was last used 5 visits ago (evicted), so each visit misses once, then hits 5 times:
    # visits misses, 5 * visits hits. The detector sees each visited frame twice in a row after
    # the visit: a miss then a hit (visits each). The two workers' caches are separate.
    def locality():
        for v in range(visits):
            f = v % 5
            for p in range(len(PROMPTS)):
                soak.call("interactor", f, p)
            soak.call("detector", f)
            soak.call("detector", f)
            if v % 5 == 4:
                soak.rss.append(vm_kib("VmRSS"))
    assert len(PROMPTS) == 6
    assert soak.phase(locality) == {"interactor": (5 * visits, visits), "detector": (visits, visits)}

    # Phase 3, review of 3 frames that fit: the cache holds the last 3 visited frames, 2, 3, 4
    # (visits is a multiple of 5). Cycling 0, 1, 2 r3 times: 0 and 1 miss (evicting 2 and 3),
    # 2 misses (it was evicted by 1), then every request hits: 3 misses, 3 * r3 - 3 hits.
    def review():
        for i in range(3 * r3):
            soak.call("interactor", i % 3, 1)
    assert soak.phase(review) == {"interactor": (3 * r3 - 3, 3), "detector": (0, 0)}

    gc.collect()
    soak.rss.append(vm_kib("VmRSS"))
    growth_mib = (max(soak.rss) - warm_rss) / 1024
    # and no upward trend after the warm-up, whatever its peak: the later half of the samples
    # stays within the bound of the earlier half's highest
    half = len(soak.rss) // 2
    trend_mib = (max(soak.rss[half:]) - max(soak.rss[:half])) / 1024
    objects = _live_objects() - warm_objects
    live = _live_encoded()
    i_hits, i_misses, _ = soak.counts("interactor")
    d_hits, d_misses, _ = soak.counts("detector")
    runtime = soak.fns["interactor"].model.predictor.encoder
    runtime = "torch" if runtime is None else f"openvino {runtime.precision}"
    line = (f"SOAK SUMMARY ({'long' if LONG else 'short'}, {runtime}): {soak.sent} requests "
            f"({len(soak.first)} distinct questions, every repeat answered identically); cache {CACHE} of 5 frames; "
            f"interactor {i_hits} hits / {i_misses} misses, detector {d_hits} hits / {d_misses} misses (as computed by hand); "
            f"RSS peak late in warm-up {warm_rss / 1024:.1f} MiB, max growth {growth_mib:+.1f} MiB, "
            f"later half over earlier half {trend_mib:+.1f} MiB (bound {RSS_BOUND_MIB} each); "
            f"live objects {objects:+d} (bound {OBJECTS_BOUND}); live EncodedImage {live} (bound {2 * CACHE})")
    write_summary(("soak-long" if LONG else "soak") + "-" + runtime.split()[0], line)
    assert growth_mib < RSS_BOUND_MIB, line
    assert trend_mib < RSS_BOUND_MIB, line
    assert objects < OBJECTS_BOUND, line
    assert live <= 2 * CACHE, line  # only what the two caches hold
    assert soak.sent == 5 * r1 + 5 + visits * (len(PROMPTS) + 2) + 3 * r3  # 240 short, 2355 long
