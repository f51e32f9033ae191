"""The OpenVINO image encoder: its features against PyTorch's (fp32 within 1e-4 relative, bf16
close), batches, the on-disk conversion cache (reused without converting, corrupt entries
rebuilt, concurrent builders), and bf16 refused on a CPU without bf16 instructions.

Conversions are what cost time here (~10 s each for the tiny fixture), so the cache tests use
the tiny config at image size 256 and count conversions instead of timing them."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, ROOT, TINY_CKPT, TINY_CONFIG
from PIL import Image

from sam2oct.model.checkpoint import load_model
from sam2oct.errors import ConfigError
from sam2oct.model import cpu_features
from sam2oct.model import openvino_encoder as ove
from sam2oct.model.encoder_cache import MANIFEST, EntryCache
from sam2oct.model.openvino_encoder import OpenVINOEncoder, default_cache_dir, encoder_key
from sam2oct.model.preprocessing import FrameGeometry, model_input

SPECTRALIS = sorted((DATA / "spectralis").glob("*_bscan_u8.png"))


def outputs(features) -> list:
    return [features.image_embed, *features.high_res_feats]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def real_inputs(size: int, n: int = 2) -> torch.Tensor:
    """[n,3,S,S] model inputs from real Spectralis B-scans (and a flipped copy when short)."""
    grays = [np.asarray(Image.open(p).convert("L"), np.float32) / 255.0 for p in SPECTRALIS]
    grays = (grays + [g[:, ::-1] for g in grays])[:n]
    return torch.cat([model_input(g, FrameGeometry.for_image(*g.shape, size=size, mode="stretch")) for g in grays])


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("cfg") / "tiny_256.yaml"
    cfg.write_text(TINY_CONFIG.read_text().replace("image_size: 1024", "image_size: 256"))
    model = load_model(TINY_CKPT, cfg)
    assert model.image_size == 256
    return model, cfg


@pytest.fixture(scope="module")
def built(small_model, tmp_path_factory):
    """One conversion into a fresh cache, shared by the cache tests: (model, cache dir, encoder)."""
    model, _ = small_model
    cache = tmp_path_factory.mktemp("ov-cache")
    enc = OpenVINOEncoder(model, "fp32", cache_dir=cache)
    assert enc.source == "converted"
    return model, cache, enc


def copy_cache(src: Path, dst: Path) -> EntryCache:
    """A copy of a cache folder, to damage without touching the shared one."""
    for f in src.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(src)).write_bytes(f.read_bytes())
    return EntryCache(dst)


@pytest.fixture
def no_convert(monkeypatch):
    def refuse(self, model):
        raise AssertionError("converted although the cache held the model")

    monkeypatch.setattr(OpenVINOEncoder, "_convert", refuse)


# --- features -----------------------------------------------------------------------------------

def test_fp32_features_match_pytorch_on_real_bscans(tiny_model, tmp_path):
    x = real_inputs(tiny_model.image_size, 2)
    enc = OpenVINOEncoder(tiny_model, "fp32", cache_dir=tmp_path)
    with torch.inference_mode():
        ref = tiny_model.encode_image(x)
    got = enc(x)
    assert [t.shape for t in outputs(got)] == [t.shape for t in outputs(ref)]
    for g, r in zip(outputs(got), outputs(ref)):
        assert g.dtype == torch.float32
        assert rel_err(g, r) < 1e-4
    # Each image of a batch gets the features it gets alone.
    alone = enc(x[1:2])
    for g, a in zip(outputs(got), outputs(alone)):
        assert rel_err(g[1:2], a) < 1e-5


@pytest.mark.skipif(not cpu_features.has_bf16(), reason="this CPU has no avx512_bf16/amx_bf16")
def test_bf16_runs_in_bf16_and_stays_close(built):
    model, cache, fp32 = built
    x = real_inputs(model.image_size, 1)
    enc = OpenVINOEncoder(model, "bf16", cache_dir=cache)
    assert enc.source == "ir"  # the converted model is shared between precisions
    ref = fp32(x)
    errors = [rel_err(g, r) for g, r in zip(outputs(enc(x)), outputs(ref))]
    # bf16 keeps 8 bits of mantissa: visibly not fp32, yet close.
    assert max(errors) > 1e-4
    assert max(errors) < 5e-2


def test_wrong_input_shape_is_refused(built):
    _, _, enc = built
    with pytest.raises(ValueError, match=r"\[B,3,256,256\]"):
        enc(torch.zeros(1, 3, 128, 128))


# --- the conversion cache --------------------------------------------------------------------------

def test_second_load_reuses_the_cache(built, no_convert):
    model, cache, first = built
    files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    again = OpenVINOEncoder(model, "fp32", cache_dir=cache)
    assert again.source == "compiled"
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files
    x = real_inputs(model.image_size, 1)
    for g, r in zip(outputs(again(x)), outputs(first(x))):
        assert torch.equal(g, r)


def test_threads_and_precision_reach_the_compiled_model(built, no_convert):
    model, cache, _ = built
    enc = OpenVINOEncoder(model, "fp32", cache_dir=cache, threads=1)
    assert enc.source == "compiled"
    assert enc._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(enc._compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_compiled_entry_missing_compiles_from_the_cached_conversion(built, no_convert):
    model, cache, _ = built
    root = EntryCache(cache)
    enc0 = OpenVINOEncoder(model, "fp32", cache_dir=cache)
    root.remove(enc0.compiled_key)
    enc = OpenVINOEncoder(model, "fp32", cache_dir=cache)
    assert enc.source == "ir"
    assert root.load(enc.compiled_key) is not None  # and the compiled model is cached again


def test_key_follows_weights_and_structure(small_model, tiny_model):
    model, _ = small_model
    key = encoder_key(model)
    assert encoder_key(model) == key
    assert encoder_key(tiny_model) != key  # same weights, another input size
    for param, in_graph in ((model.sam_mask_decoder.iou_token.weight, False),  # the decoder
                            (model.no_mem_embed, True),
                            (model.sam_mask_decoder.conv_s1.weight, True)):
        saved = param.detach().clone()
        with torch.no_grad():
            param.add_(1.0)
        try:
            assert (encoder_key(model) != key) == in_graph
        finally:
            with torch.no_grad():
                param.copy_(saved)
    assert encoder_key(model) == key


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_converted_model_is_rebuilt(built, tmp_path, damage):
    model, cache, first = built
    root = copy_cache(cache, tmp_path)
    root.remove(first.compiled_key)
    weights = root.path(first.ir_key) / "encoder.bin"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    else:  # same size, one byte changed: only the checksum can tell
        data[len(data) // 3] ^= 0xFF
        weights.write_bytes(data)
    assert root.load(first.ir_key) is None
    rebuilt = OpenVINOEncoder(model, "fp32", cache_dir=tmp_path)
    assert rebuilt.source == "converted"
    assert root.load(first.ir_key) is not None
    x = real_inputs(model.image_size, 1)
    for g, r in zip(outputs(rebuilt(x)), outputs(first(x))):
        assert rel_err(g, r) < 1e-6


def test_corrupt_compiled_model_is_rebuilt(built, tmp_path, no_convert):
    model, cache, first = built
    root = copy_cache(cache, tmp_path)
    blob = root.path(first.compiled_key) / "encoder.blob"
    blob.write_bytes(blob.read_bytes()[:1000])
    enc = OpenVINOEncoder(model, "fp32", cache_dir=tmp_path)
    assert enc.source == "ir"
    assert root.load(first.compiled_key) is not None
    x = real_inputs(model.image_size, 1)
    for g, r in zip(outputs(enc(x)), outputs(first(x))):
        assert torch.equal(g, r)


_BUILDER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from sam2oct.model.checkpoint import load_model
    from sam2oct.model.openvino_encoder import OpenVINOEncoder
    ckpt, cfg, cache, go = sys.argv[1:5]
    model = load_model(ckpt, cfg)
    while not Path(go).exists():  # start converting together
        time.sleep(0.01)
    enc = OpenVINOEncoder(model, "fp32", cache_dir=cache)
    print(json.dumps({"source": enc.source}))
""")


def run_builders(n, small_model, cache, tmp_path):
    _, cfg = small_model
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(TINY_CKPT), str(cfg), str(cache), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(n)]
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_concurrent_builders_leave_one_valid_entry(small_model, tmp_path):
    model, _ = small_model
    cache = tmp_path / "cache"
    results = run_builders(2, small_model, cache, tmp_path)
    assert {r["source"] for r in results} <= {"converted", "ir"}
    entries = sorted(p.name for p in cache.iterdir())
    key = encoder_key(model)
    assert [e for e in entries if not e.startswith(".")] == sorted(
        [f"ir-{key}", f"cpu-{key}-fp32-{cpu_features.cpu_signature()}"])
    assert not [e for e in entries if e.startswith(".")]  # no temporary folder left behind
    root = EntryCache(cache)
    assert all(root.load(e) is not None for e in entries)
    # A later start (another process) neither converts nor compiles.
    assert run_builders(1, small_model, cache, tmp_path) == [{"source": "compiled"}]


_WRITER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from sam2oct.model.encoder_cache import EntryCache
    root, tag, go = sys.argv[1:4]
    while not Path(go).exists():
        time.sleep(0.001)

    def write(d):
        # Two files, written slowly, whose content names the writer: a mixed entry would show.
        for name in ("a.bin", "b.bin"):
            with open(d / name, "wb") as f:
                for _ in range(20):
                    f.write(tag.encode() * 50000)
                    f.flush()
                    time.sleep(0.002)

    EntryCache(root).store("k", write)
""")


def test_entry_cache_concurrent_writers_and_readers(tmp_path):
    root = tmp_path / "cache"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), tag, str(go)], cwd=ROOT, env=env,
                                stderr=subprocess.PIPE, text=True) for tag in "WXYZ"]
    go.touch()
    cache = EntryCache(root)
    seen = 0
    while any(w.poll() is None for w in writers):
        folder = cache.load("k")
        if folder is not None:  # whatever a reader sees is one writer's complete entry
            try:
                a, b = (folder / "a.bin").read_bytes(), (folder / "b.bin").read_bytes()
            except FileNotFoundError:
                continue
            assert len(set(a + b)) == 1 and len(a) == len(b) == 20 * 50000
            seen += 1
    for w in writers:
        assert w.wait() == 0, w.stderr.read()
    folder = cache.load("k")
    assert folder is not None
    assert sorted(p.name for p in root.iterdir()) == ["k"]
    assert sorted(json.loads((folder / MANIFEST).read_text())["files"]) == ["a.bin", "b.bin"]


def test_entry_cache_replaces_an_incomplete_entry(tmp_path):
    cache = EntryCache(tmp_path)
    cache.store("k", lambda d: (d / "f").write_bytes(b"old" * 100))
    (cache.path("k") / "f").write_bytes(b"old")  # truncated
    assert cache.load("k") is None
    folder = cache.store("k", lambda d: (d / "f").write_bytes(b"new" * 100))
    assert cache.load("k") == folder
    assert (folder / "f").read_bytes() == b"new" * 100


def test_unwritable_cache_still_encodes(small_model, tmp_path, monkeypatch):
    model, _ = small_model

    def fail(self, key, write, meta=None):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(EntryCache, "store", fail)
    enc = OpenVINOEncoder(model, "fp32", cache_dir=tmp_path / "ro")
    assert enc.source == "converted"
    x = real_inputs(model.image_size, 1)
    with torch.inference_mode():
        ref = model.encode_image(x)
    assert rel_err(enc(x).image_embed, ref.image_embed) < 1e-4


def test_default_cache_dir_is_beside_the_hub_cache():
    from huggingface_hub import constants

    assert default_cache_dir() == Path(constants.HF_HOME) / "sam2oct-openvino"
    assert default_cache_dir().parent == Path(constants.HF_HOME)


# --- bf16 and the CPU's flags -----------------------------------------------------------------------

CPUINFO_NO_BF16 = "processor\t: 0\nmodel name\t: Old CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
CPUINFO_AMX = "processor\t: 0\nmodel name\t: New CPU\nflags\t\t: fpu avx512f amx_tile amx_bf16\n"


def test_bf16_refused_without_the_cpu_flags(monkeypatch, small_model, tmp_path, no_convert):
    model, _ = small_model
    monkeypatch.setattr(cpu_features, "read_cpuinfo", lambda path=cpu_features.CPUINFO: CPUINFO_NO_BF16)
    with pytest.raises(ConfigError) as err:
        OpenVINOEncoder(model, "bf16", cache_dir=tmp_path)
    assert err.value.option == "precision"
    assert "avx512_bf16" in str(err.value) and "amx_bf16" in str(err.value) and "fp32" in str(err.value)
    assert not any(tmp_path.iterdir())  # refused before anything was built


def test_bf16_flags_are_read_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(cpu_features, "read_cpuinfo", lambda path=cpu_features.CPUINFO: CPUINFO_AMX)
    assert cpu_features.bf16_flags() == ("amx_bf16",)
    assert cpu_features.require_bf16() == ("amx_bf16",)
    monkeypatch.setattr(cpu_features, "read_cpuinfo", lambda path=cpu_features.CPUINFO: "")  # no /proc
    assert not cpu_features.has_bf16()
    assert cpu_features.read_cpuinfo(str(Path("/nonexistent/cpuinfo"))) == ""


def test_unknown_precision_refused(small_model, tmp_path):
    model, _ = small_model
    with pytest.raises(ConfigError, match="fp16"):
        OpenVINOEncoder(model, "fp16", cache_dir=tmp_path)


def test_missing_openvino_is_a_clear_error(monkeypatch, small_model, tmp_path):
    model, _ = small_model
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    assert not ove.openvino_available()
    with pytest.raises(ConfigError) as err:
        OpenVINOEncoder(model, "fp32", cache_dir=tmp_path)
    assert err.value.option == "runtime" and "requirements-cpu.txt" in str(err.value)


def test_malloc_arena_cap_respects_the_environment(monkeypatch):
    import platform

    from sam2oct.model import malloc_arenas

    monkeypatch.setattr(malloc_arenas, "_applied", False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert malloc_arenas.cap_malloc_arenas() is False  # the admin's setting wins; nothing changed
    assert malloc_arenas._applied is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert malloc_arenas.cap_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
