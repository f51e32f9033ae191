"""The runtime option end to end: which runtime and precision each setting resolves to, the
predictor's batch encoding in both runtimes, the front doors (flags, -p, Nuclio environment,
a second Nuclio start that does not convert), and the batched evaluate and decoder-mode
finetune. Uses the tiny fixture weights (image size 256 where only the code path matters)."""

import numpy as np
import pytest
import torch
from conftest import DATA, TINY_CKPT, TINY_CONFIG
from harness import Worker, b64
from PIL import Image

import sam2oct.model.runtime as rt
from sam2oct import cli
from sam2oct.data.samples import Dataset, Sample
from sam2oct.errors import ConfigError
from sam2oct.evaluation.evaluate import score
from sam2oct.model import cpu_features
from sam2oct.model.checkpoint import load_model
from sam2oct.model.openvino_encoder import OpenVINOEncoder
from sam2oct.model.predictor import SemanticPredictor
from sam2oct.pipeline.options import OPTION_ENV, OPTION_FLAGS, PipelineOptions
from sam2oct.pipeline.pipeline import Pipeline
from sam2oct.training.finetune import FinetuneOptions, _encode_views, _Examples

CPU = torch.device("cpu")
NO_BF16 = "processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse2 avx2 avx512f\n"
SPECTRALIS = sorted((DATA / "spectralis").glob("*_bscan_u8.png"))


def grays(n=3, size=(96, 160)):
    out = []
    for p in SPECTRALIS[:n]:
        im = Image.open(p).convert("L").resize(size[::-1], Image.BILINEAR)
        out.append(np.asarray(im, np.float32) / 255.0)
    return out


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "tiny_256.yaml"
    cfg.write_text(TINY_CONFIG.read_text().replace("image_size: 1024", "image_size: 256"))
    return load_model(TINY_CKPT, cfg), cfg


@pytest.fixture(scope="module")
def ov_encoder(small_model, tmp_path_factory):
    return OpenVINOEncoder(small_model[0], "fp32", cache_dir=tmp_path_factory.mktemp("ov"))


@pytest.fixture
def old_cpu(monkeypatch):
    monkeypatch.setattr(cpu_features, "read_cpuinfo", lambda path=cpu_features.CPUINFO: NO_BF16)


# --- resolution ---------------------------------------------------------------------------------

def test_auto_takes_openvino_on_a_cpu_when_installed(monkeypatch):
    assert rt.resolve_runtime("auto", CPU) == "openvino"
    monkeypatch.setattr(rt, "openvino_installed", lambda: False)
    assert rt.resolve_runtime("auto", CPU) == "torch"
    with pytest.raises(ConfigError) as err:
        rt.resolve_runtime("openvino", CPU)
    assert err.value.option == "runtime" and "not installed" in str(err.value)


def test_gpu_device_keeps_torch():
    cuda = torch.device("cuda")
    assert rt.resolve_runtime("auto", cuda) == "torch"
    assert rt.resolve_runtime("torch", cuda) == "torch"
    with pytest.raises(ConfigError) as err:
        rt.resolve_runtime("openvino", cuda)
    assert err.value.option == "runtime" and "CPU only" in str(err.value)


def test_precision_under_openvino(monkeypatch, old_cpu):
    assert rt.openvino_precision("fp32") == "fp32"
    assert rt.openvino_precision("auto") == "fp32"  # no bf16 instructions: never bf16
    with pytest.raises(ConfigError) as err:
        rt.openvino_precision("bf16")
    assert err.value.option == "precision" and "avx512_bf16" in str(err.value)
    monkeypatch.setattr(rt, "AUTO_BF16", True)
    assert rt.openvino_precision("auto") == "fp32"  # still none on this CPU
    monkeypatch.setattr(cpu_features, "read_cpuinfo", lambda path=None: "flags\t: avx512f avx512_bf16\n")
    assert rt.openvino_precision("auto") == "bf16"
    monkeypatch.setattr(rt, "AUTO_BF16", False)
    assert rt.openvino_precision("auto") == "fp32"
    assert rt.openvino_precision("bf16") == "bf16"


def test_torch_runtime_keeps_its_precision_rules(old_cpu):
    # bf16 under torch is autocast, as before this option: no CPU-flag check.
    assert rt.check_runtime("torch", "bf16", CPU) == ("torch", "bf16")


def test_options_table_has_the_runtime_settings():
    assert OPTION_ENV["runtime"] == "SAM2OCT_RUNTIME" and OPTION_FLAGS["runtime"] == "--runtime"
    assert OPTION_ENV["ov_cache_dir"] == "SAM2OCT_OV_CACHE_DIR" and OPTION_FLAGS["ov_cache_dir"] == "--ov-cache-dir"
    assert PipelineOptions().runtime == "auto"
    assert PipelineOptions(runtime=" OpenVINO ").runtime == "openvino"
    for bad in ({"runtime": "onnx"}, {"precision": "fp16"}):
        with pytest.raises(ConfigError) as err:
            PipelineOptions(**bad)
        assert err.value.option == next(iter(bad))


# --- the pipeline and the predictor -----------------------------------------------------------------

def test_pipeline_encodes_through_openvino_and_decodes_in_torch(small_model, tmp_path):
    model, cfg = small_model
    ov = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(cfg), runtime="openvino", precision="fp32",
                                  ov_cache_dir=str(tmp_path)), model=model)
    pt = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(cfg), runtime="torch"), model=model)
    assert isinstance(ov.predictor.encoder, OpenVINOEncoder) and ov.predictor.encoder.precision == "fp32"
    assert pt.predictor.encoder is None and pt.runtime_note == "runtime torch"
    assert ov.runtime_note.startswith("runtime openvino (fp32, converted now in ")
    assert not ov.predictor.bf16  # the decoder stays fp32
    g = grays(1)[0]
    a, b = ov.encode(g), pt.encode(g)
    for x, y in zip([a.features.image_embed, *a.features.high_res_feats],
                    [b.features.image_embed, *b.features.high_res_feats]):
        assert float((x - y).norm() / y.norm()) < 1e-4
    # the same labels from either runtime on this fixture (trained-ish weights)
    la, lb = ov.predict(a).label_map, pt.predict(b).label_map
    assert (la == lb).mean() > 0.999
    # a second pipeline on the same cache: no conversion
    again = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(cfg), runtime="auto", precision="fp32",
                                     ov_cache_dir=str(tmp_path)), model=model)
    assert again.predictor.encoder.source == "compiled"
    # precision auto: bf16 where the CPU has the instructions (AUTO_BF16), from the same conversion
    auto = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(cfg), ov_cache_dir=str(tmp_path)),
                    model=model)
    expected = "bf16" if rt.AUTO_BF16 and cpu_features.has_bf16() else "fp32"
    assert auto.predictor.encoder.precision == expected
    assert auto.predictor.encoder.source == ("ir" if expected == "bf16" else "compiled")


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_encode_batch_matches_one_by_one(small_model, ov_encoder, runtime):
    model, _ = small_model
    encoder = ov_encoder if runtime == "openvino" else None
    calls = []

    def counting(x):
        calls.append(len(x))
        return encoder(x) if encoder is not None else model.encode_image(x)

    batched = SemanticPredictor(model, cache_bytes=1 << 30, encoder=counting)
    single = SemanticPredictor(model, cache_bytes=0, encoder=encoder)
    frames = grays(3)
    frames.append(frames[0].copy())  # the same frame twice: encoded once
    got = batched.encode_batch(frames, batch_size=2)
    assert calls == [2, 1] and batched.encoder_calls == 3
    assert got[3] is got[0]
    for g, e in zip(frames, got):
        alone = single.encode(g)
        assert e.geometry == alone.geometry
        for x, y in zip([e.features.image_embed, *e.features.high_res_feats],
                        [alone.features.image_embed, *alone.features.high_res_feats]):
            assert x.shape == y.shape and x.shape[0] == 1
            assert x.untyped_storage().nbytes() == x.nbytes  # each frame owns its features
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    # cached now: no encoder call, in any batch size
    assert batched.encode_batch(frames[:2], batch_size=1) == got[:2] and calls == [2, 1]
    with pytest.raises(ConfigError):
        batched.encode_batch(frames, batch_size=0)


def test_pipeline_shares_an_encoder(small_model, ov_encoder):
    model, cfg = small_model
    p = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(cfg), runtime="openvino"), model=model,
                 encoder=ov_encoder)
    assert p.predictor.encoder is ov_encoder


# --- front doors --------------------------------------------------------------------------------------

def test_cli_bf16_without_the_instructions_is_one_line_before_loading(old_cpu, capsys, no_model, tmp_path):
    image = tmp_path / "b.png"
    Image.fromarray((grays(1)[0] * 255).astype(np.uint8)).save(image)
    code = cli.main(["segment", str(image), "--checkpoint", str(TINY_CKPT), "--config", str(TINY_CONFIG),
                     "--runtime", "openvino", "--precision", "bf16"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --precision: bf16 needs a CPU with avx512_bf16 or amx_bf16"), err


@pytest.mark.parametrize("command", ["segment", "evaluate", "finetune"])
def test_commands_take_the_runtime_flags(command):
    parser = cli.build_parser()
    argv = {"segment": ["segment", "x.png"], "evaluate": ["evaluate", "d"], "finetune": ["finetune", "d", "--out", "o"]}
    args = parser.parse_args(argv[command] + ["--runtime", "torch", "--precision", "fp32", "--ov-cache-dir", "c",
                                              "--batch", "3"])
    assert (args.runtime, args.precision, args.ov_cache_dir, args.batch) == ("torch", "fp32", "c", 3)


def test_segment_batches_give_the_same_results(tmp_path, capsys):
    paths = []
    for i, g in enumerate(grays(3)):
        paths.append(tmp_path / f"b{i}.png")
        Image.fromarray((g * 255).astype(np.uint8)).save(paths[-1])
    outs = []
    for batch in ("1", "2"):
        out = tmp_path / f"out{batch}.json"
        assert cli.main(["segment", *map(str, paths), "--checkpoint", str(TINY_CKPT), "--config", str(TINY_CONFIG),
                         "--runtime", "torch", "--batch", batch, "--json", str(out)]) == 0
        outs.append(out.read_text())
    err = capsys.readouterr().err
    assert "runtime torch" in err
    assert outs[0] == outs[1]


def test_nuclio_second_start_does_not_convert(tmp_path, monkeypatch):
    env = {"SAM2OCT_RUNTIME": "openvino", "SAM2OCT_PRECISION": "fp32", "SAM2OCT_OV_CACHE_DIR": str(tmp_path / "ov"),
           "SAM2OCT_WARMUP": "1"}
    first = Worker(**env)
    assert first.model.pipeline.predictor.encoder.source == "converted"
    ready = [line for line in first.log.lines("info") if "ready" in line]
    assert ready and "runtime openvino (fp32, converted now" in ready[-1]
    image = b64(SPECTRALIS[0])
    reply = first.call({"image": image, "pos_points": [], "neg_points": []})
    assert reply.status == 200

    def refuse(self, model):
        raise AssertionError("converted at the second start")

    monkeypatch.setattr(OpenVINOEncoder, "_convert", refuse)
    second = Worker(**env)
    assert second.model.pipeline.predictor.encoder.source == "compiled"
    assert "loaded from the cache" in [line for line in second.log.lines("info") if "ready" in line][-1]
    assert second.call({"image": image, "pos_points": [], "neg_points": []}) == reply


def test_nuclio_refuses_bf16_without_the_instructions(old_cpu, tmp_path):
    with pytest.raises(Exception) as err:
        Worker(SAM2OCT_RUNTIME="openvino", SAM2OCT_PRECISION="bf16", SAM2OCT_OV_CACHE_DIR=str(tmp_path))
    assert "SAM2OCT_PRECISION" in str(err.value) and "avx512_bf16" in str(err.value)


# --- evaluate and finetune in batches ------------------------------------------------------------------

def test_score_in_batches_equals_one_by_one():
    rng = np.random.default_rng(0)
    samples = [Sample(f"s{i}", rng.random((20, 30), dtype=np.float32), rng.integers(0, 3, (20, 30)).astype(np.uint8),
                      None) for i in range(5)]
    data = Dataset(samples, ("background", "a", "b"))

    def predict(g):
        return (g * 3).astype(np.uint8).clip(0, 2)

    sizes = []

    def many(gs):
        sizes.append(len(gs))
        return [predict(g) for g in gs]

    assert score(data, predict_many=many, batch=2) == score(data, predict)
    assert sizes == [2, 2, 1]


@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_decoder_mode_feature_cache_in_batches(small_model, ov_encoder, runtime):
    model, _ = small_model
    rng = np.random.default_rng(1)
    samples = [Sample(f"s{i}", g, rng.integers(0, 9, g.shape).astype(np.uint8), None)
               for i, g in enumerate(grays(3))]
    o = FinetuneOptions(mode="decoder", views=2, preprocess="stretch").resolved()
    encode = ov_encoder if runtime == "openvino" else model.encode_image
    calls = []

    def counting(x):
        calls.append(len(x))
        return encode(x)

    one = _encode_views(encode, _Examples(samples, o, model.image_size, 9), 2, CPU, 1)
    many = _encode_views(counting, _Examples(samples, o, model.image_size, 9), 2, CPU, 4)
    assert calls == [4, 2]
    assert [len(v) for v in many] == [2, 2, 2]
    for a_views, b_views in zip(one, many):
        for (fa, la, ga), (fb, lb, gb) in zip(a_views, b_views):
            assert np.array_equal(la, lb) and ga == gb  # the same augmented views, in order
            torch.testing.assert_close(fa.image_embed, fb.image_embed, rtol=1e-4, atol=1e-5)
            for x, y in zip(fa.high_res_feats, fb.high_res_feats):
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
