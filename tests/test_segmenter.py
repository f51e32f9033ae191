"""The Python API (sam2oct.Segmenter), checkpoint discovery and the library's logging.

The Hugging Face cache is a real one in layout (blobs/<sha256>, snapshots/<commit>/<file> links,
refs/main), under a temporary HF_HUB_CACHE; huggingface_hub's own lookup must find what is put
there. The hub itself is faked as in test_supply_chain.py; the model is the tiny K=9 fixture.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from PIL import Image

import sam2oct.model.hub as hub
from conftest import ROOT, TINY_CKPT, TINY_CONFIG
from harness import Worker, b64, encode
from sam2oct import cli
from sam2oct.errors import CheckpointError, ConfigError, RequestError
from sam2oct.geometry.polygons import label_map_to_shapes
from sam2oct.model import checkpoint
from sam2oct.model.checkpoint import build_model, load_model
from sam2oct.model.discovery import cached_checkpoint, find_checkpoint
from sam2oct.model.predictor import SemanticPredictor
from sam2oct.model.profiles import HF_REPO, NR206_CLASSES, PROFILES

SPECTRALIS = ROOT / "tests" / "data" / "spectralis" / "Willis_B_716_0_bscan_u8.png"
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def put_in_cache(cache: Path, profile: str, payload=TINY_CKPT, commit=COMMIT_A, ref=True) -> Path:
    """The file as huggingface_hub caches it: content under blobs/<sha256>, a relative link to it at
    snapshots/<commit>/<path in the repo>, and refs/main naming the commit (a pinned download has no ref)."""
    repo = cache / repo_folder_name(repo_id=HF_REPO, repo_type="model")
    digest = sha256(payload)
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(payload, blob)
    link = repo / "snapshots" / commit / PROFILES[profile].hf_filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return link


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))  # for a subprocess
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))  # read at import
    return folder


@pytest.fixture
def offline(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("went to the hub")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "HfApi", refuse)


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scan") / "scan.png"
    Image.open(SPECTRALIS).resize((96, 62), Image.BILINEAR).save(path)
    return path


def test_the_fake_cache_is_what_huggingface_hub_reads(cache):
    link = put_in_cache(cache, "nr206")
    assert try_to_load_from_cache(HF_REPO, PROFILES["nr206"].hf_filename, cache_dir=cache) == str(link)
    assert cached_checkpoint("nr206") == link and cached_checkpoint("mgu") is None
    # without a ref (a download pinned to a commit), the snapshot is still found
    shutil.rmtree(cache / repo_folder_name(repo_id=HF_REPO, repo_type="model") / "refs")
    assert cached_checkpoint("nr206") == link


# --- discovery -----------------------------------------------------------------------------------

def store(models: Path, profile: str) -> Path:
    path = models / hub.stored_key(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_CKPT, path)
    return path


def test_discovery_order(tmp_path, cache, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.delenv("SAM2_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointError) as none:
        find_checkpoint(models_dir=models)
    assert none.value.option == "checkpoint" and str(cache) in str(none.value)
    assert f"python -m sam2oct download nr206 --models-dir {models}" in str(none.value)

    in_cache = put_in_cache(cache, "mgu_prompted")
    found = find_checkpoint(models_dir=models)
    assert (found.path, found.source, found.profile) == (str(in_cache), "hub cache", "mgu_prompted")
    with pytest.raises(CheckpointError) as other:  # another profile's is cached: fetch this one
        find_checkpoint(profile="nr206", models_dir=models)
    assert "python -m sam2oct download nr206" in str(other.value) and str(in_cache) in str(other.value)

    stored = store(models, "nr206")  # the download store comes before the cache
    assert find_checkpoint(models_dir=models).path == str(stored)
    assert find_checkpoint(profile="mgu_prompted", models_dir=models).path == str(in_cache)
    assert find_checkpoint(models_dir=None).path == str(in_cache)  # a front door without a store

    monkeypatch.setenv("SAM2_CHECKPOINT", "/from/env.pt")
    assert find_checkpoint(models_dir=models, env_var="SAM2_CHECKPOINT") == \
        type(found)("/from/env.pt", "env", env_var="SAM2_CHECKPOINT")
    assert find_checkpoint(models_dir=models).path == str(stored)  # no variable named: not read
    assert find_checkpoint("given.pt", models_dir=models).source == "given"

    monkeypatch.delenv("SAM2_CHECKPOINT")
    store(models, "mgu")
    with pytest.raises(CheckpointError) as several:
        find_checkpoint(models_dir=models)
    assert several.value.option == "profile" and "nr206" in str(several.value) and "mgu" in str(several.value)
    with pytest.raises(ConfigError) as unknown:
        find_checkpoint(profile="nr207", models_dir=models)
    assert unknown.value.option == "profile"


def test_segment_finds_a_checkpoint_in_the_hub_cache(scan, tmp_path, cache, capsys, monkeypatch, offline):
    monkeypatch.delenv("SAM2_CHECKPOINT", raising=False)
    link = put_in_cache(cache, "nr206")
    assert cli.main(["segment", str(scan), "--config", str(TINY_CONFIG), "--models-dir", str(tmp_path / "none")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["profile"] == "nr206" and f"using checkpoint {link} (Hugging Face cache" in err


def test_the_cvat_function_and_nuclio_find_the_cached_checkpoint(scan, cache, monkeypatch, offline):
    from sam2oct import cvat_function

    monkeypatch.delenv("SAM2_CHECKPOINT", raising=False)
    put_in_cache(cache, "nr206")
    fn = cvat_function.create(config=str(TINY_CONFIG))
    assert fn.pipeline.profile.name == "nr206"
    worker = Worker(SAM2_CHECKPOINT=None)
    assert worker.model.profile.name == "nr206"


# --- Segmenter -----------------------------------------------------------------------------------

def reference(gray):
    """The tiny model run without the pipeline: label map, confidence, IoU estimates."""
    return SemanticPredictor(load_model(TINY_CKPT, TINY_CONFIG), "stretch").predict(gray, confidence=True)


def test_from_pretrained_reads_the_cache_offline(scan, cache, offline):
    from sam2oct import Segmenter

    put_in_cache(cache, "nr206")
    # torch, as the reference (precision auto may run bf16 through OpenVINO on this CPU)
    segmenter = Segmenter.from_pretrained("nr206", config=str(TINY_CONFIG), runtime="torch")
    assert segmenter.classes == NR206_CLASSES
    result = segmenter.segment(scan)

    gray = np.asarray(Image.open(scan), dtype=np.float32) / 255
    ref = reference(gray)
    assert np.array_equal(result.label_map, ref.label_map)
    assert result.shapes == label_map_to_shapes(ref.label_map, list(NR206_CLASSES), tolerance=1.0, min_area=16)
    for k, name in enumerate(NR206_CLASSES):
        pixels = ref.label_map == k
        expected = float(ref.confidence[pixels].mean()) if pixels.any() else None
        assert result.scores[name] == pytest.approx(expected) if expected is not None else result.scores[name] is None
        assert result.ious[name] == pytest.approx(float(ref.ious[k]))
        assert np.array_equal(result.mask(name), pixels)


def test_every_image_kind_gives_the_same_answer(scan, cache, offline):
    from sam2oct import Segmenter

    put_in_cache(cache, "nr206")
    segmenter = Segmenter.from_pretrained("nr206", config=str(TINY_CONFIG))
    pil = Image.open(scan)
    u8 = np.asarray(pil)
    expected = segmenter.segment(scan).label_map
    for image in (pil, u8, u8.astype(np.float32) / 255, np.stack([u8] * 3, axis=-1)):
        assert np.array_equal(segmenter.segment(image).label_map, expected)
    for bad, words in ((np.zeros((4, 4, 4, 4), np.uint8), "shape"), (u8.astype(np.float32), "[0, 1]"),
                       (np.full((8, 8), np.nan, np.float32), "finite"), (-u8.astype(np.int16) - 1, "negative"),
                       (u8.astype(bool), "dtype")):
        with pytest.raises(RequestError, match=words if words != "[0, 1]" else r"\[0, 1\]"):
            segmenter.segment(bad)


class FakeHub:
    """model_info and get_paths_info as test_supply_chain's; hf_hub_download writes the cache layout."""

    def __init__(self, payload, published_sha=None):
        self.payload = payload
        self.published = published_sha or sha256(payload)
        self.downloads = []

    def __call__(self, *a, **kw):  # stands for huggingface_hub.HfApi()
        return self

    def model_info(self, repo_id, revision=None):
        return SimpleNamespace(sha=COMMIT_B if revision == "main" else revision)

    def get_paths_info(self, repo_id, paths, revision=None, expand=False):
        return [SimpleNamespace(path=p, lfs=SimpleNamespace(sha256=self.published)) for p in paths]

    def hf_hub_download(self, repo_id, filename, revision=None, cache_dir=None, **kw):
        assert repo_id == HF_REPO and "local_dir" not in kw
        self.downloads.append((filename, revision))
        profile = next(name for name, p in PROFILES.items() if p.hf_filename == filename)
        return str(put_in_cache(Path(cache_dir or huggingface_hub.constants.HF_HUB_CACHE), profile, self.payload, revision,
                                ref=False))


@pytest.fixture
def fake_hub(monkeypatch):
    monkeypatch.setattr(hub, "build_model", lambda k, config=None, **kw: checkpoint.build_model(k, TINY_CONFIG, **kw))

    def install(payload=TINY_CKPT, **kw):
        fake = FakeHub(payload, **kw)
        monkeypatch.setattr(huggingface_hub, "HfApi", fake)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
        return fake
    return install


def test_first_use_downloads_pinned_and_verified_then_reuses_the_cache(scan, cache, fake_hub):
    from sam2oct import Segmenter

    fake = fake_hub()
    first = Segmenter.from_pretrained("nr206", config=str(TINY_CONFIG))
    assert fake.downloads == [(PROFILES["nr206"].hf_filename, COMMIT_B)]  # pinned to the commit main was
    again = Segmenter.from_pretrained("nr206", config=str(TINY_CONFIG))
    assert len(fake.downloads) == 1  # the cache served it
    assert np.array_equal(first.segment(scan).label_map, again.segment(scan).label_map)


def test_a_download_with_the_wrong_digest_is_refused_and_deleted(cache, fake_hub):
    from sam2oct import Segmenter

    fake_hub(published_sha="0" * 64)
    with pytest.raises(CheckpointError, match="sha256") as err:
        Segmenter.from_pretrained("nr206", config=str(TINY_CONFIG))
    assert not [p for p in cache.rglob("*") if p.is_file() or p.is_symlink()]  # neither link nor blob is left
    with pytest.raises(CheckpointError, match="download=False"):
        Segmenter.from_pretrained("nr206", download=False)


def test_a_download_of_another_profile_fails_the_load_check(cache, fake_hub):
    from sam2oct import Segmenter

    fake_hub()  # the tiny file has 9 classes: not an mgu checkpoint
    with pytest.raises(CheckpointError, match="load check"):
        Segmenter.from_pretrained("mgu", config=str(TINY_CONFIG))
    assert cached_checkpoint("mgu") is None


def test_a_cached_file_changed_later_is_refused_at_load(cache, offline):
    from sam2oct import Segmenter

    link = put_in_cache(cache, "nr206")
    blob = link.resolve()
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match") as err:
        Segmenter.from_pretrained("nr206", config=str(TINY_CONFIG))
    assert str(err.value).startswith("checkpoint: ")  # errors name the keyword


def test_a_path_and_keyword_errors(tmp_path, offline):
    from sam2oct import Segmenter

    assert Segmenter.from_pretrained(TINY_CKPT, config=str(TINY_CONFIG)).pipeline.profile.name == "nr206"
    with pytest.raises(CheckpointError, match="neither a released model"):
        Segmenter.from_pretrained(tmp_path / "missing.pt")
    with pytest.raises(ConfigError) as err:
        Segmenter.from_pretrained(TINY_CKPT, config=str(TINY_CONFIG), simplify=-1)
    assert str(err.value).startswith("simplify: ")


def test_import_sam2oct_stays_light():
    code = ("import sys, sam2oct; assert 'torch' not in sys.modules, 'torch imported'; "
            "from sam2oct import Segmenter; assert 'torch' in sys.modules; print(Segmenter.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "Segmenter", proc.stderr


# --- logging -------------------------------------------------------------------------------------

def k11_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "k11.pt"
    torch.save({"model_state": build_model(11, TINY_CONFIG).state_dict()}, path)
    return path


def test_warnings_are_log_records_named_per_front_door(tmp_path, caplog):
    from sam2oct import Segmenter, cvat_function

    path = k11_checkpoint(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sam2oct"):
        Segmenter.from_pretrained(path, config=str(TINY_CONFIG))
        cvat_function.create(checkpoint=str(path), config=str(TINY_CONFIG))
    records = [r for r in caplog.records if r.name == "sam2oct.pipeline.pipeline"]
    assert [r.option for r in records] == ["profile", "profile"]
    assert records[0].getMessage().startswith("profile: the checkpoint has 11 classes")
    assert records[1].getMessage().startswith("-p profile: the checkpoint has 11 classes")


def request_lines(worker):
    return [line for line in worker.log.lines("debug") if line.startswith("sam2-oct: request: ")]


def test_nuclio_logs_each_request_s_stage_timings_at_debug_level(scan):
    gray = np.asarray(Image.open(scan), dtype=np.float32) / 255
    ys, xs = np.nonzero(reference(gray).label_map > 0)  # a click on a layer
    image = b64(encode(Image.open(scan)))

    interactor = Worker()
    body = {"image": image, "pos_points": [[int(xs[0]), int(ys[0])]], "neg_points": []}
    replies = [interactor.call(body) for _ in range(2)]
    assert [status for status, _ in replies] == [200, 200]
    first, second = request_lines(interactor)
    assert "decode " in first and "encode " in first and "cache hit" not in first
    assert "decode kept" in second and "encode cache hit" in second  # CVAT resends the frame per click
    for line, (_, reply) in zip((first, second), replies):
        assert line.endswith(f"reply {len(json.dumps(reply))} bytes")

    detector = Worker(SAM2OCT_MODE="detector")
    for _ in range(2):
        assert detector.call({"image": image}).status == 200
    first, second = request_lines(detector)
    assert "trace " in first and "trace cached" in second and "encode cache hit" in second


@pytest.mark.docs
def test_the_readme_python_example_runs(scan, cache, offline, monkeypatch):
    """The README's example as written, on the tiny model in the cache (its config, not Hiera B+'s)."""
    from sam2oct import Segmenter

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Segment from Python"):]
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", section, re.S)][:1]
    put_in_cache(cache, "nr206")
    pretrained = Segmenter.from_pretrained.__func__
    monkeypatch.setattr(Segmenter, "from_pretrained",
                        classmethod(lambda cls, name, **kw: pretrained(cls, name, config=str(TINY_CONFIG), **kw)))
    monkeypatch.chdir(scan.parent)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["result"].classes == NR206_CLASSES
