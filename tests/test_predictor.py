"""SemanticPredictor: the feature cache (counted encoder calls and bytes, LRU bound), memoised
unprompted decode, what each flag computes, label maps, dense prompts in both modes (values and
memory), more than 255 classes, precision choice and thread safety. Uses the tiny fixture weights
(at image size 1024, and at 256 where only counting matters)."""

import threading
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CKPT, TINY_CONFIG
from torch.profiler import ProfilerActivity, profile

import sam2oct.model.predictor
from sam2oct.model.checkpoint import build_model, load_model
from sam2oct.errors import ConfigError
from sam2oct.geometry.interaction import select
from sam2oct.model.predictor import SemanticPredictor, image_digest, use_bf16

H, W = 96, 160


def frame(seed: int, h=H, w=W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None]
    return np.clip(0.5 + 0.3 * np.sin(12 * y + seed) + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    # The tiny config at image size 256: same code paths, 16x cheaper encodes for counting tests.
    cfg = tmp_path_factory.mktemp("cfg") / "tiny_256.yaml"
    cfg.write_text(TINY_CONFIG.read_text().replace("image_size: 1024", "image_size: 256"))
    return cfg


@pytest.fixture(scope="module")
def small_model(small_config):
    model = load_model(TINY_CKPT, small_config)
    assert model.image_size == 256
    return model


@pytest.fixture
def predictor(small_model):
    return SemanticPredictor(small_model)


@pytest.fixture(scope="module")
def shared(tiny_model):
    # One predictor with frame 0 encoded, for the decode tests (full-size tiny model).
    p = SemanticPredictor(tiny_model)
    return p, p.encode(frame(0))


def same(a, b) -> bool:
    return np.array_equal(a.ious, b.ious) and np.array_equal(a.label_map, b.label_map)


def model_logits(model, features, coords=None, point_labels=None, dense=None) -> torch.Tensor:
    """The model's own low-res logits [K, h, w], for checking what the predictor makes of them."""
    with torch.inference_mode():
        logits, _ = model.decode(features, coords, point_labels, dense)
    return logits[0]


def upsampled_argmax(logits: torch.Tensor, h=H, w=W) -> np.ndarray:
    """Spec step 6 in stretch mode: argmax of the logits resized (bilinear) to the image, int64."""
    return F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0).numpy()


# --- feature cache --------------------------------------------------------------------------------

def test_second_encode_of_same_frame_hits(predictor):
    a = frame(0)
    first = predictor.encode(a)
    again = predictor.encode(a.copy())  # same content, another array
    assert predictor.encoder_calls == 1
    assert again is first
    assert (predictor.cache.hits, predictor.cache.misses) == (1, 1)


def test_different_frames_miss(predictor):
    a = frame(0)
    b = a.copy()
    b[50, 80] += 0.01  # one pixel differs
    predictor.encode(a)
    predictor.encode(b)
    assert predictor.encoder_calls == 2
    assert (predictor.cache.hits, predictor.cache.misses) == (0, 2)
    assert len(predictor.cache) == 2


def feature_bytes(enc) -> int:
    """Bytes of the encoder's output tensors, counted here from their shapes and dtypes."""
    f = enc.features
    return sum(t.numel() * t.element_size() for t in [f.image_embed, *f.high_res_feats])


@pytest.fixture(scope="module")
def entry_bytes(small_model):
    """(bytes of one encoded frame's features, bytes its unprompted memo adds) for H x W frames."""
    p = SemanticPredictor(small_model, cache_bytes=0)
    enc = p.encode(frame(0))
    pred = p.decode(enc, logits=True)
    memo = pred.label_map.nbytes + pred.ious.nbytes + pred.low_res_logits.numel() * 4
    return feature_bytes(enc), memo


def test_entry_bytes_are_counted(small_model, entry_bytes):
    one, memo = entry_bytes
    p = SemanticPredictor(small_model)
    enc = p.encode(frame(0))
    assert p.cache.nbytes == enc.nbytes == one
    p.decode(enc, points=[[10, 10]], labels=[1], confidence=True)  # prompted: nothing kept
    assert p.cache.nbytes == one
    p.decode(enc)  # the unprompted memo is kept with the features, and counted
    assert p.cache.nbytes == enc.nbytes == one + memo
    p.decode(enc, confidence=True)  # a later call adds the confidence map to the memo
    assert p.cache.nbytes == one + memo + H * W * 4
    p.encode(frame(1))
    assert p.cache.nbytes == 2 * one + memo + H * W * 4 and len(p.cache) == 2


def test_bound_in_bytes_evicts_least_recently_used(small_model, entry_bytes):
    one, _ = entry_bytes
    p = SemanticPredictor(small_model, cache_bytes=2 * one + one // 2)  # room for two frames
    a, b, c = frame(1), frame(2), frame(3)
    p.encode(a)
    p.encode(b)
    p.encode(a)  # a is now the most recent
    p.encode(c)  # evicts b, not a
    assert p.encoder_calls == 3 and len(p.cache) == 2 and p.cache.nbytes == 2 * one
    p.encode(a)
    p.encode(c)
    assert p.encoder_calls == 3
    p.encode(b)
    assert p.encoder_calls == 4 and p.cache.nbytes <= p.cache.max_bytes


def test_memo_added_later_counts_towards_the_bound(small_model, entry_bytes):
    one, memo = entry_bytes
    assert memo > 0
    p = SemanticPredictor(small_model, cache_bytes=2 * one + memo // 2)
    a, b = frame(1), frame(2)
    p.encode(a)
    enc_b = p.encode(b)
    assert len(p.cache) == 2
    p.decode(enc_b)  # b grows past the room left: the least recently used frame (a) goes
    assert len(p.cache) == 1 and p.cache.nbytes == one + memo
    p.encode(b)
    assert p.encoder_calls == 2
    p.encode(a)
    assert p.encoder_calls == 3


def test_entry_larger_than_the_bound_is_returned_not_kept(small_model, entry_bytes):
    one, memo = entry_bytes
    p = SemanticPredictor(small_model, cache_bytes=one - 1)
    a = frame(0)
    enc = p.encode(a)
    assert len(p.cache) == 0 and p.cache.nbytes == 0
    assert p.decode(enc).label_map.shape == (H, W)
    p.encode(a)
    assert p.encoder_calls == 2
    # Fits bare, not with its memo: dropped when the memo is added, the decode still answered.
    q = SemanticPredictor(small_model, cache_bytes=one + memo // 2)
    enc = q.encode(a)
    assert len(q.cache) == 1
    assert q.decode(enc).label_map.shape == (H, W)
    assert len(q.cache) == 0 and q.cache.nbytes == 0


def test_cache_bytes_zero_caches_nothing(small_model):
    p = SemanticPredictor(small_model, cache_bytes=0)
    a = frame(0)
    p.encode(a)
    p.encode(a)
    assert p.encoder_calls == 2 and len(p.cache) == 0 and p.cache.nbytes == 0


def test_negative_cache_bytes_refused(small_model):
    with pytest.raises(ConfigError) as info:
        SemanticPredictor(small_model, cache_bytes=-1)
    assert info.value.option == "cache_mb" and "-1" in str(info.value)


def test_cache_clear(small_model):
    p = SemanticPredictor(small_model)
    p.decode(p.encode(frame(0)))
    p.cache.clear()
    assert len(p.cache) == 0 and p.cache.nbytes == 0
    p.encode(frame(0))
    assert p.encoder_calls == 2


def test_cache_key_depends_on_mode_shape_and_content():
    a = frame(0, 8, 12)
    keys = {
        image_digest(a, "stretch"),
        image_digest(a, "pad-equalize"),
        image_digest(a.reshape(12, 8), "stretch"),  # same bytes, other shape
        image_digest(a.astype(np.float64), "stretch"),
        image_digest(np.where(np.arange(96).reshape(8, 12) == 95, 0, a).astype(np.float32), "stretch"),
    }
    assert len(keys) == 5
    assert image_digest(a, "stretch") == image_digest(a.copy(), "stretch")


def test_modes_give_different_features(small_model):
    a = frame(0)
    s = SemanticPredictor(small_model, preprocess="stretch").encode(a)
    p = SemanticPredictor(small_model, preprocess="pad-equalize").encode(a)
    assert s.key != p.key
    assert p.geometry.mode == "pad-equalize" and p.geometry.content_box == (48, 80, W, H)
    assert not torch.equal(s.features.image_embed, p.features.image_embed)


# --- decoding ---------------------------------------------------------------------------------------

def test_unprompted_decode_is_memoised(predictor):
    enc = predictor.encode(frame(0))
    first = predictor.decode(enc)
    again = predictor.decode(enc)
    assert same(again, first) and again.label_map is first.label_map
    assert same(predictor.predict(frame(0)), first)  # through the cache, too
    assert (predictor.encoder_calls, predictor.decoder_calls) == (1, 1)
    other = predictor.predict(frame(1))
    assert predictor.decoder_calls == 2 and not np.array_equal(other.label_map, first.label_map)


def test_memoised_arrays_are_read_only(predictor):
    # Every caller gets the same memoised arrays: none may change what the next one sees.
    pred = predictor.decode(predictor.encode(frame(0)), confidence=True)
    for a in (pred.label_map, pred.ious, pred.confidence):
        with pytest.raises(ValueError):
            a[0] = 1
    assert predictor.decode(predictor.encode(frame(0))).label_map.flags.writeable is False


def test_only_what_is_asked_for_is_returned(shared):
    predictor, enc = shared
    for prompts in ({}, {"points": [[40.0, 30.0]], "labels": [1]}):
        plain = predictor.decode(enc, **prompts)
        assert plain.confidence is None and plain.low_res_logits is None
        assert plain.label_map.shape == (H, W) and plain.ious.shape == (9,)
        full = predictor.decode(enc, **prompts, confidence=True, logits=True)
        assert full.confidence.shape == (H, W) and full.confidence.dtype == np.float32
        assert full.low_res_logits.shape == (9, 256, 256) and full.low_res_logits.dtype == torch.float32
        assert same(plain, full)


@pytest.mark.parametrize("order", [("plain", "confidence", "logits", "both"), ("both", "plain", "confidence"),
                                   ("logits", "confidence", "plain")])
def test_memo_serves_whatever_later_calls_ask(small_model, order):
    # Each call's answer equals a fresh predictor's, in whatever order the flags come; the
    # decoder runs once, the confidence map is added to the memo when first asked for.
    flags = {"plain": {}, "confidence": {"confidence": True}, "logits": {"logits": True},
             "both": {"confidence": True, "logits": True}}
    a = frame(0)
    p = SemanticPredictor(small_model)
    enc = p.encode(a)
    for name in order:
        got = p.decode(enc, **flags[name])
        fresh = SemanticPredictor(small_model, cache_bytes=0)
        want = fresh.decode(fresh.encode(a), **flags[name])
        assert same(got, want), name
        assert (got.confidence is None) == (want.confidence is None), name
        assert (got.low_res_logits is None) == (want.low_res_logits is None), name
        if want.confidence is not None:
            assert np.array_equal(got.confidence, want.confidence)
        if want.low_res_logits is not None:
            assert torch.equal(got.low_res_logits, want.low_res_logits)
            got.low_res_logits.zero_()  # a copy: the memo is not changed through it
    assert p.decoder_calls == 1
    assert torch.equal(p.decode(enc, logits=True).low_res_logits, want.low_res_logits if
                       want.low_res_logits is not None else fresh.decode(fresh.encode(a), logits=True).low_res_logits)


def test_confidence_is_the_softmax_probability_of_the_chosen_class(shared):
    predictor, enc = shared
    for prompts in ({}, {"box": (10, 10, 100, 60)}):
        pred = predictor.decode(enc, **prompts, confidence=True, logits=True)
        up = F.interpolate(pred.low_res_logits[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        probs = torch.softmax(up, dim=0)
        chosen = torch.from_numpy(pred.label_map.astype(np.int64))
        assert np.allclose(pred.confidence, probs.gather(0, chosen[None])[0].numpy(), atol=1e-6)
        assert np.allclose(pred.confidence, probs.max(0).values.numpy(), atol=1e-6)
        assert (pred.label_map == up.argmax(0).numpy()).mean() > 0.999


@pytest.mark.parametrize("mode", ["stretch", "pad-equalize"])
def test_label_map_class_by_class_equals_all_at_once(small_model, monkeypatch, mode):
    # Large frames are upsampled a few classes at a time; the running argmax and softmax sum
    # must give what one pass over all classes gives.
    p = SemanticPredictor(small_model, preprocess=mode, cache_bytes=0)
    enc = p.encode(frame(3))
    prompts = {"points": [[30.0, 40.0]], "labels": [1]}
    whole = p.decode(enc, **prompts, confidence=True)
    for classes_per_step in (1, 2, 4):
        monkeypatch.setattr(sam2oct.model.predictor, "_STEP_ELEMENTS", classes_per_step * H * W)
        stepped = p.decode(enc, **prompts, confidence=True)
        assert np.array_equal(stepped.label_map, whole.label_map), classes_per_step
        assert np.allclose(stepped.confidence, whole.confidence, atol=1e-6, rtol=0), classes_per_step


def test_prompted_decodes_are_recomputed(shared):
    predictor, enc = shared
    kw = dict(points=[[40.0, 30.0], [120.0, 70.0]], labels=[1, 0])
    calls = predictor.decoder_calls
    a = predictor.decode(enc, **kw, logits=True)
    b = predictor.decode(enc, **kw, logits=True)
    assert a is not b and same(a, b) and torch.equal(a.low_res_logits, b.low_res_logits)
    auto = predictor.decode(enc, logits=True)
    assert not torch.equal(auto.low_res_logits, a.low_res_logits)
    predictor.decode(enc, box=(10, 10, 100, 60))
    predictor.decode(enc, box=(10, 10, 100, 60))
    assert predictor.decoder_calls - calls >= 4


def test_points_are_given_in_image_pixels(tiny_model, shared):
    # The predictor maps image pixels to model pixels; compare with the model fed model pixels.
    predictor, enc = shared
    pred = predictor.decode(enc, points=[[80.0, 48.0]], labels=[1], logits=True)
    s = tiny_model.image_size
    coords = torch.tensor([[[80.0 * s / W, 48.0 * s / H]]])
    logits = model_logits(tiny_model, enc.features, coords, torch.tensor([[1]], dtype=torch.int32))
    assert torch.allclose(pred.low_res_logits, logits, atol=1e-5)


def test_label_map(shared, tiny_model):
    predictor, enc = shared
    pred = predictor.decode(enc, logits=True)
    k = tiny_model.num_classes
    assert pred.label_map.shape == (H, W) and pred.label_map.dtype == np.uint8
    assert pred.label_map.max() < k
    low = tiny_model.image_size // 4
    assert pred.low_res_logits.shape == (k, low, low) and pred.ious.shape == (k,)
    # Spec step 6: argmax of the logits resized (bilinear) to the image.
    assert (pred.label_map == upsampled_argmax(pred.low_res_logits)).mean() > 0.999


def test_label_map_pad_mode_uses_content_box(small_model):
    p = SemanticPredictor(small_model, preprocess="pad-equalize")
    pred = p.predict(frame(0), logits=True)
    s = small_model.image_size
    x0, y0, bw, bh = p.encode(frame(0)).geometry.content_box
    assert (x0, y0, bw, bh) == ((s - W) // 2, (s - H) // 2, W, H)  # no resize: frame fits
    # Logits brought to the canvas size, then the image's own pixels cut out.
    full = F.interpolate(pred.low_res_logits[None], size=(s, s), mode="bilinear", align_corners=False)
    ref = full[0, :, y0:y0 + bh, x0:x0 + bw].argmax(0).numpy()
    assert pred.label_map.shape == (H, W)
    assert (pred.label_map == ref).mean() > 0.999


def painted(h=H, w=W) -> np.ndarray:
    labels = np.full((h, w), -1, np.int64)
    labels[h // 5:h * 2 // 5, :] = 3
    labels[h * 5 // 8:h * 3 // 4, w // 5:w * 5 // 8] = 5
    labels[h * 3 // 4:, w // 3:w // 2] = 0  # background painted too
    labels[:4, :4] = 99  # out of range: unpainted
    return labels


@pytest.mark.parametrize("mode", ["stretch", "pad-equalize"])
def test_dense_labels_at_image_size(small_model, mode):
    p = SemanticPredictor(small_model, preprocess=mode)
    enc = p.encode(frame(0))
    labels = painted()
    pred = p.decode(enc, dense_labels=labels, logits=True)
    assert pred.label_map.shape == (H, W) and pred.label_map.max() < small_model.num_classes
    assert not torch.equal(pred.low_res_logits, p.decode(enc, logits=True).low_res_logits)  # the prompt counts
    with_points = p.decode(enc, dense_labels=labels, points=[[10, 10]], labels=[1], logits=True)
    assert not torch.equal(with_points.low_res_logits, pred.low_res_logits)


def test_dense_labels_reach_the_model_unchanged(small_model):
    # A frame of the mask-input size in stretch mode needs no resampling of its label map, so
    # the predictor must match the model fed class_label_logits directly.
    m = small_model.mask_input_size[0]
    p = SemanticPredictor(small_model)
    enc = p.encode(frame(7, m, m))
    labels = np.full((m, m), -1, np.int64)
    labels[m // 3:m // 2, 5:m - 5] = 2
    labels[2:6, 2:6] = 99  # out of range: unpainted
    pred = p.decode(enc, dense_labels=labels, logits=True)
    pe = small_model.sam_prompt_encoder
    with torch.inference_mode():
        logits, ious = small_model.decode(enc.features, None, None,
                                          pe.class_label_logits(torch.from_numpy(labels)[None]))
    assert torch.allclose(pred.low_res_logits, logits[0], atol=1e-6)
    assert np.allclose(pred.ious, ious[0].numpy(), atol=1e-6)


def full_resolution_prompt(model, geometry, labels) -> torch.Tensor:
    """The construction the predictor used to make: a [1,K,H,W] logit map, then resized."""
    logits = model.sam_prompt_encoder.class_label_logits(torch.from_numpy(labels)[None])
    return geometry.raster_to_model(logits, out_size=model.mask_input_size[0])


@pytest.mark.parametrize("mode", ["stretch", "pad-equalize"])
@pytest.mark.parametrize("h, w", [(H, W), (300, 700), (40, 52)])
def test_low_resolution_prompt_agrees_with_the_full_resolution_one(small_model, mode, h, w):
    # The resize is linear, so building the prompt from per-class coverage changes only the
    # order of float32 operations: the logits (magnitude <= 6.91) agree to 1e-5 (float32 has
    # ~7 digits), and so, to 1e-4, do the decoder's outputs computed from them.
    p = SemanticPredictor(small_model, preprocess=mode)
    enc = p.encode(frame(5, h, w))
    labels = painted(h, w)
    with torch.inference_mode():
        old = full_resolution_prompt(small_model, enc.geometry, labels)
        new = p.dense_prompt(enc.geometry, labels)
        assert new.shape == old.shape == (1, 9, *small_model.mask_input_size)
        assert (old.abs() > 1).any()
        assert torch.allclose(new, old, atol=1e-5, rtol=0)
        logits = model_logits(small_model, enc.features, dense=old)
    pred = p.decode(enc, dense_labels=labels, logits=True)
    assert torch.allclose(pred.low_res_logits, logits, atol=1e-4, rtol=0)


def test_unpainted_prompt_is_all_zero(small_model):
    p = SemanticPredictor(small_model)
    geo = p.encode(frame(0)).geometry
    assert not p.dense_prompt(geo, np.full((H, W), -1)).any()
    assert not p.dense_prompt(geo, np.full((H, W), 9)).any()  # K = 9: class 9 does not exist


def test_dense_labels_checked(small_model):
    p = SemanticPredictor(small_model)
    enc = p.encode(frame(0))
    with pytest.raises(ValueError, match="image"):
        p.decode(enc, dense_labels=np.zeros((H, W + 1), np.int64))
    with pytest.raises(ValueError, match="integer"):
        p.decode(enc, dense_labels=np.zeros((H, W), np.float32))


def extra_peak_bytes(fn, baseline) -> int:
    """Peak memory of fn() above that of baseline(): torch's CPU allocations (from the profiler's
    allocation and free events, in order) plus numpy's (tracemalloc)."""

    def peak(f):
        tracemalloc.start()
        try:
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                before = tracemalloc.get_traced_memory()[0]  # the profiler's own start-up is not fn's
                tracemalloc.reset_peak()
                f()
                numpy_peak = tracemalloc.get_traced_memory()[1] - before  # before the profiler's report
        finally:
            tracemalloc.stop()
        live = torch_peak = 0
        for event in sorted(prof.events(), key=lambda e: e.time_range.start):
            live += event.self_cpu_memory_usage
            torch_peak = max(torch_peak, live)
        return torch_peak + numpy_peak

    return peak(fn) - peak(baseline)


@pytest.mark.parametrize("scale", [1, 2])
def test_brush_prompt_memory_does_not_scale_with_classes(small_model, scale):
    # The old construction made an int64 one-hot [K,H,W] (K*H*W*8 bytes, ~1.5 GB at the pixel
    # limit) and float copies of it. The prompt must now cost about one float map of the frame,
    # at any size: measured against the same decode without the brush.
    h, w = 240 * scale, 320 * scale
    k = small_model.num_classes
    p = SemanticPredictor(small_model)
    enc = p.encode(frame(2, h, w))
    labels = painted(h, w)
    clicks = {"points": [[20.0, 20.0]], "labels": [1]}
    p.decode(enc, dense_labels=labels, **clicks)  # warm-up: one-off allocations
    extra = extra_peak_bytes(lambda: p.decode(enc, dense_labels=labels, **clicks),
                             lambda: p.decode(enc, **clicks))
    one_hot = k * h * w * 8
    print(f"brush prompt on {w}x{h}: {extra} bytes above the same decode without it (one-hot: {one_hot})")
    assert extra < 2 * h * w * 4 + (1 << 20), f"{extra} bytes more with the brush; the one-hot is {one_hot}"


# --- more than 255 classes ------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_k300(small_config):
    """A real SemanticSAM2 with 300 classes (random weights) whose most common class is 299."""
    torch.manual_seed(0)
    model = build_model(300, small_config).eval()
    p = SemanticPredictor(model)
    enc = p.encode(frame(4))
    common = int(np.bincount(upsampled_argmax(model_logits(model, enc.features)).ravel()).argmax())
    # Swap that class with class 299 in the decoder (token, hypernetwork, IoU row): the tokens
    # attend to each other without positions, so the logits of the two classes trade places.
    dec = model.sam_mask_decoder
    with torch.no_grad():
        for weight in (dec.mask_tokens.weight, dec.iou_prediction_head.layers[-1].weight,
                       dec.iou_prediction_head.layers[-1].bias):
            weight[[common, 299]] = weight[[299, common]].clone()
        mlps = dec.output_hypernetworks_mlps
        mlps[common], mlps[299] = mlps[299], mlps[common]
    return model


def test_class_indices_above_255_survive(model_k300):
    model = model_k300
    p = SemanticPredictor(model)
    a = frame(4)
    pred = p.predict(a)
    ref = upsampled_argmax(model_logits(model, p.encode(a).features))
    assert (ref == 299).mean() > 0.05 and ref.max() == 299  # the test can see a wrap-around
    assert pred.label_map.dtype == np.uint16
    assert (pred.label_map == ref).mean() > 0.999
    assert np.array_equal(pred.label_map == 299, ref == 299)


def test_brush_and_selection_with_300_classes(model_k300):
    model = model_k300
    p = SemanticPredictor(model)
    enc = p.encode(frame(4))
    labels = np.full((H, W), -1, np.int64)
    labels[:, :20] = 290
    labels[:, -20:] = 3
    pred = p.decode(enc, dense_labels=labels, confidence=True, logits=True)
    assert pred.label_map.dtype == np.uint16 and pred.label_map.max() < 300
    assert pred.low_res_logits.shape[0] == 300 and pred.ious.shape == (300,)
    with torch.inference_mode():
        old = full_resolution_prompt(model, enc.geometry, labels)
    assert torch.allclose(p.dense_prompt(enc.geometry, labels), old, atol=1e-5, rtol=0)
    # A click on a pixel of class 299 picks class 299, not 299 - 256.
    rows, cols = np.nonzero(pred.label_map == 299)
    sel = select(pred.label_map, [[cols[0], rows[0]]], [])
    assert sel.picked == [299] and sel.label_map.dtype == np.uint16 and sel.mask[rows[0], cols[0]]


def test_class_label_logits_values(tiny_model):
    pe = tiny_model.sam_prompt_encoder
    lab = torch.tensor([[[0, 2, -1, 99]]])
    out = pe.class_label_logits(lab)[0, :, 0]  # [K, 4]
    big = np.log(0.999 / 0.001)  # e = 1e-3
    assert torch.allclose(out[:, 0], torch.tensor([big] + [-big] * 8, dtype=out.dtype), atol=1e-4)
    assert out[2, 1] == pytest.approx(big, abs=1e-4) and out[0, 1] == pytest.approx(-big, abs=1e-4)
    assert torch.all(out[:, 2:] == 0)  # unpainted and out of range: no opinion


def test_no_hard_coded_1024(tmp_path):
    # The same weights at image size 512: features, logits and maps all follow the model size.
    cfg = tmp_path / "tiny_512.yaml"
    cfg.write_text(TINY_CONFIG.read_text().replace("image_size: 1024", "image_size: 512"))
    model = load_model(TINY_CKPT, cfg)
    assert model.image_size == 512
    for mode in ("stretch", "pad-equalize"):
        p = SemanticPredictor(model, preprocess=mode)
        enc = p.encode(frame(0))
        assert enc.features.image_embed.shape[-2:] == (32, 32)
        pred = p.decode(enc, points=[[80, 40]], labels=[1], dense_labels=np.zeros((H, W), np.int64), logits=True)
        assert pred.low_res_logits.shape[-2:] == (128, 128) and pred.label_map.shape == (H, W)


# --- precision ----------------------------------------------------------------------------------

def test_cpu_defaults_to_fp32(shared):
    predictor, enc = shared
    assert predictor.bf16 is False
    assert predictor.decode(enc, logits=True).low_res_logits.dtype == torch.float32


@pytest.mark.parametrize("capability, expected", [((7, 5), False), ((7, 0), False), ((6, 1), False),
                                                  ((8, 0), True), ((8, 6), True), ((9, 0), True)])
def test_auto_bf16_only_from_compute_capability_8(monkeypatch, capability, expected):
    # T4 (7.5), V100 (7.0) and older run bf16 slower than fp32; A100 (8.0) and newer natively.
    asked = []

    def capability_of(device=None):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    gpu = torch.device("cuda", 1)
    assert use_bf16(None, gpu) is expected
    assert asked == [gpu]  # the predictor's own GPU, not the default one
    assert use_bf16(True, gpu) is True and use_bf16(False, gpu) is False  # asked for: as asked
    assert use_bf16(None, torch.device("cpu")) is False and use_bf16(True, torch.device("cpu")) is True


class ReportsCuda(torch.nn.Module):
    """A model whose parameters claim to live on a GPU: all the predictor reads to pick precision."""

    def parameters(self, recurse=True):
        yield SimpleNamespace(device=torch.device("cuda", 0))


@pytest.mark.parametrize("capability, expected", [((7, 5), False), ((8, 0), True)])
def test_predictor_auto_precision_follows_the_gpu(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert SemanticPredictor(ReportsCuda()).bf16 is expected
    assert SemanticPredictor(ReportsCuda(), bf16=True).bf16 is True


# --- threads ----------------------------------------------------------------------------------------

def test_concurrent_use_matches_single_threaded(small_model):
    frames = [frame(10), frame(11)]
    prompts = [{}, {"points": [[30.0, 20.0]], "labels": [1]}, {"box": (5, 5, 90, 60)}]
    single = SemanticPredictor(small_model)
    expected = {(f, j): single.predict(frames[f], **prompts[j]) for f in range(2) for j in range(3)}

    common = SemanticPredictor(small_model)
    results, errors = [], []
    start = threading.Barrier(4)

    def worker(t):
        try:
            start.wait()
            for r in range(3):
                # Round 0: all four ask for frame 0 at once; then mixed frames and prompts.
                f, j = (0 if r == 0 else (t + r) % 2), (t + 2 * r) % 3
                results.append(((f, j), common.predict(frames[f], **prompts[j])))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 12
    for key, pred in results:
        assert same(pred, expected[key]), key
    # Threads that asked for a frame while it was being encoded waited and reused it.
    assert common.encoder_calls == 2 and len(common.cache) == 2
