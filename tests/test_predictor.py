"""SemanticPredictor: the feature cache (counted encoder calls, LRU bound), memoised unprompted
decode, label maps, dense prompts in both modes, and thread safety. Uses the tiny fixture weights
(at image size 1024, and at 256 where only counting matters)."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CKPT, TINY_CONFIG

from sam2oct.checkpoint import load_model
from sam2oct.predictor import SemanticPredictor, image_digest

H, W = 96, 160


def frame(seed: int, h=H, w=W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h)[:, None]
    return np.clip(0.5 + 0.3 * np.sin(12 * y + seed) + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    # The tiny weights at image size 256: same code paths, 16x cheaper encodes for counting tests.
    cfg = tmp_path_factory.mktemp("cfg") / "tiny_256.yaml"
    cfg.write_text(TINY_CONFIG.read_text().replace("image_size: 1024", "image_size: 256"))
    model = load_model(TINY_CKPT, cfg)
    assert model.image_size == 256
    return model


@pytest.fixture
def predictor(small_model):
    return SemanticPredictor(small_model, cache_size=4)


@pytest.fixture(scope="module")
def shared(tiny_model):
    # One predictor with frame 0 encoded, for the decode tests (full-size tiny model).
    p = SemanticPredictor(tiny_model, cache_size=4)
    return p, p.encode(frame(0))


def same(a, b) -> bool:
    return (torch.equal(a.low_res_logits, b.low_res_logits) and np.array_equal(a.ious, b.ious)
            and np.array_equal(a.label_map, b.label_map))


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


def test_lru_bound(small_model):
    n = 3
    p = SemanticPredictor(small_model, cache_size=n)
    frames = [frame(i) for i in range(n + 1)]
    for f in frames:
        p.encode(f)
    assert p.encoder_calls == n + 1 and len(p.cache) == n
    p.encode(frames[-1])  # newest still cached
    assert p.encoder_calls == n + 1
    p.encode(frames[0])  # oldest was evicted
    assert p.encoder_calls == n + 2


def test_lru_keeps_recently_used(small_model):
    p = SemanticPredictor(small_model, cache_size=2)
    a, b, c = frame(1), frame(2), frame(3)
    p.encode(a)
    p.encode(b)
    p.encode(a)  # a is now the most recent
    p.encode(c)  # evicts b, not a
    calls = p.encoder_calls
    p.encode(a)
    assert p.encoder_calls == calls
    p.encode(b)
    assert p.encoder_calls == calls + 1


def test_cache_size_zero_caches_nothing(small_model):
    p = SemanticPredictor(small_model, cache_size=0)
    a = frame(0)
    p.encode(a)
    p.encode(a)
    assert p.encoder_calls == 2 and len(p.cache) == 0


def test_negative_cache_size_refused(small_model):
    with pytest.raises(ValueError):
        SemanticPredictor(small_model, cache_size=-1)


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
    assert predictor.decode(enc) is first
    assert predictor.predict(frame(0)) is first  # through the cache, too
    assert predictor.encoder_calls == 1
    other = predictor.predict(frame(1))
    assert other is not first and not torch.equal(other.low_res_logits, first.low_res_logits)


def test_prompted_decodes_are_recomputed(shared):
    predictor, enc = shared
    kw = dict(points=[[40.0, 30.0], [120.0, 70.0]], labels=[1, 0])
    a = predictor.decode(enc, **kw)
    b = predictor.decode(enc, **kw)
    assert a is not b and same(a, b)
    auto = predictor.decode(enc)
    assert auto is not a and not torch.equal(auto.low_res_logits, a.low_res_logits)
    box = predictor.decode(enc, box=(10, 10, 100, 60))
    assert box is not predictor.decode(enc, box=(10, 10, 100, 60))


def test_points_are_given_in_image_pixels(tiny_model, shared):
    # The predictor maps image pixels to model pixels; compare with the model fed model pixels.
    predictor, enc = shared
    pred = predictor.decode(enc, points=[[80.0, 48.0]], labels=[1])
    s = tiny_model.image_size
    coords = torch.tensor([[[80.0 * s / W, 48.0 * s / H]]])
    with torch.inference_mode():
        logits, ious = tiny_model.decode(enc.features, coords, torch.tensor([[1]], dtype=torch.int32))
    assert torch.allclose(pred.low_res_logits, logits[0], atol=1e-5)


def test_label_map(shared, tiny_model):
    predictor, enc = shared
    pred = predictor.decode(enc)
    k = tiny_model.num_classes
    assert pred.label_map.shape == (H, W) and pred.label_map.dtype == np.uint8
    assert pred.label_map.max() < k
    low = tiny_model.image_size // 4
    assert pred.low_res_logits.shape == (k, low, low) and pred.ious.shape == (k,)
    # Spec step 6: argmax of the logits resized (bilinear) to the image.
    ref = F.interpolate(pred.low_res_logits[None], size=(H, W), mode="bilinear", align_corners=False)
    assert (pred.label_map == ref[0].argmax(0).numpy()).mean() > 0.999


def test_label_map_pad_mode_uses_content_box(small_model):
    p = SemanticPredictor(small_model, preprocess="pad-equalize")
    pred = p.predict(frame(0))
    s = small_model.image_size
    x0, y0, bw, bh = p.encode(frame(0)).geometry.content_box
    assert (x0, y0, bw, bh) == ((s - W) // 2, (s - H) // 2, W, H)  # no resize: frame fits
    # Logits brought to the canvas size, then the image's own pixels cut out.
    full = F.interpolate(pred.low_res_logits[None], size=(s, s), mode="bilinear", align_corners=False)
    ref = full[0, :, y0:y0 + bh, x0:x0 + bw].argmax(0).numpy()
    assert pred.label_map.shape == (H, W)
    assert (pred.label_map == ref).mean() > 0.999


@pytest.mark.parametrize("mode", ["stretch", "pad-equalize"])
def test_dense_labels_at_image_size(small_model, mode):
    p = SemanticPredictor(small_model, preprocess=mode)
    enc = p.encode(frame(0))
    labels = np.full((H, W), -1, np.int64)
    labels[20:40, :] = 3
    labels[60:70, 30:100] = 5
    pred = p.decode(enc, dense_labels=labels)
    assert pred.label_map.shape == (H, W) and pred.label_map.max() < small_model.num_classes
    assert not torch.equal(pred.low_res_logits, p.decode(enc).low_res_logits)  # the prompt counts
    with_points = p.decode(enc, dense_labels=labels, points=[[10, 10]], labels=[1])
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
    pred = p.decode(enc, dense_labels=labels)
    pe = small_model.sam_prompt_encoder
    with torch.inference_mode():
        logits, ious = small_model.decode(enc.features, None, None,
                                          pe.class_label_logits(torch.from_numpy(labels)[None]))
    assert torch.allclose(pred.low_res_logits, logits[0], atol=1e-6)
    assert np.allclose(pred.ious, ious[0].numpy(), atol=1e-6)


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
        pred = p.decode(enc, points=[[80, 40]], labels=[1], dense_labels=np.zeros((H, W), np.int64))
        assert pred.low_res_logits.shape[-2:] == (128, 128) and pred.label_map.shape == (H, W)


def test_cpu_defaults_to_fp32(shared):
    predictor, enc = shared
    assert predictor.bf16 is False
    assert predictor.decode(enc).low_res_logits.dtype == torch.float32


# --- threads ----------------------------------------------------------------------------------------

def test_concurrent_use_matches_single_threaded(small_model):
    frames = [frame(10), frame(11)]
    prompts = [{}, {"points": [[30.0, 20.0]], "labels": [1]}, {"box": (5, 5, 90, 60)}]
    single = SemanticPredictor(small_model, cache_size=4)
    expected = {(f, j): single.predict(frames[f], **prompts[j]) for f in range(2) for j in range(3)}

    common = SemanticPredictor(small_model, cache_size=4)
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
