"""Checkpoint supply chain: nothing but tensors is unpickled (also through the function's start),
downloads are pinned to a hub commit and verified (published sha256, then a load check) before
they are moved into place and recorded, and a recorded file that changed is refused. No network:
the hub API and hf_hub_download are fakes."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from conftest import TINY_CKPT, TINY_CONFIG
from harness import start_failure, write_summary

import sam2oct.model.hub as hub
from sam2oct.model import checkpoint
from sam2oct.model.checkpoint import load_model, verify_recorded_checksum
from sam2oct.errors import CheckpointError
from sam2oct.model.profiles import HF_REPO, PROFILES

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
REFUSED = []  # (what, message) for the summary line


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Evil:
    """Unpickling this runs os.mkdir(marker): proof of execution if the marker appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def evil_checkpoint(tmp_path) -> tuple[Path, Path]:
    sd = torch.load(TINY_CKPT, map_location="cpu", weights_only=True)["model_state"]
    marker = tmp_path / "marker_made_by_unpickling"
    path = tmp_path / "evil.pt"
    torch.save({"model_state": sd, "hook": _Evil(marker)}, path)
    return path, marker


# --- weights_only: no pickled callable ever runs ----------------------------------------------

def test_pickled_callable_refused_by_loader_and_never_runs(tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, TINY_CONFIG)
    msg = str(info.value)
    assert str(path) in msg and "refused to load" in msg and "weights_only=True" in msg and "mkdir" in msg
    assert not marker.exists()
    # Control: the file is live; an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    REFUSED.append(("pickled callable (loader)", msg))


def test_pickled_callable_stops_the_function_start(tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    exc, log = start_failure(SAM2_CHECKPOINT=str(path))
    assert isinstance(exc, CheckpointError)
    errors = log.lines("error")
    assert len(errors) == 1 and "cannot start" in errors[0] and "refused to load" in errors[0], errors
    assert "SAM2_CHECKPOINT" in errors[0] and str(path) in errors[0]
    assert not marker.exists()
    REFUSED.append(("pickled callable (init_context)", errors[0]))


# --- recorded checksums -----------------------------------------------------------------------

def recorded_copy(tmp_path) -> Path:
    """models/nr206/tiny.pt with its digest recorded in models/checksums.json, as a download leaves it."""
    folder = tmp_path / "models" / "nr206"
    folder.mkdir(parents=True)
    path = folder / "tiny.pt"
    shutil.copy(TINY_CKPT, path)
    record = {"nr206/tiny.pt": {"sha256": sha256(path), "repo": HF_REPO, "revision": COMMIT_A}}
    (tmp_path / "models" / "checksums.json").write_text(json.dumps(record))
    return path


def flip_one_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_recorded_checksum_matches_then_a_flipped_byte_is_refused(tmp_path):
    path = recorded_copy(tmp_path)
    assert verify_recorded_checksum(path) is True
    load_model(path, TINY_CONFIG)  # untouched: loads
    flip_one_byte(path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, TINY_CONFIG)
    msg = str(info.value)
    assert str(path.resolve()) in msg and "does not match" in msg and "checksums.json" in msg
    REFUSED.append(("flipped byte (loader)", msg))


def test_flipped_byte_stops_the_function_start(tmp_path):
    path = recorded_copy(tmp_path)
    flip_one_byte(path, offset=len(path.read_bytes()) - 100)  # in the zip's central directory
    exc, log = start_failure(SAM2_CHECKPOINT=str(path))
    assert isinstance(exc, CheckpointError)
    (error,) = log.lines("error")
    assert "does not match" in error and str(path.resolve()) in error, error
    REFUSED.append(("flipped byte (init_context)", error))


def test_unrecorded_file_is_not_checked(tmp_path):
    path = tmp_path / "tiny.pt"
    shutil.copy(TINY_CKPT, path)
    assert verify_recorded_checksum(path) is False


# --- the checkpoint must match the chosen profile ---------------------------------------------

def test_profile_mismatch_stops_the_start_without_fallback():
    exc, log = start_failure(SAM2OCT_PROFILE="mgu")
    msg = str(exc)
    assert "9 classes" in msg and "'mgu'" in msg and "11" in msg, msg
    (error,) = log.lines("error")
    assert "cannot start" in error and "9 classes" in error
    # No fallback: a retry fails the same way (nothing was half-built).
    exc2, _ = start_failure(SAM2OCT_PROFILE="mgu")
    assert str(exc2) == msg
    REFUSED.append(("wrong profile (init_context)", error))


def test_load_check_refuses_a_file_of_another_profile():
    # K=9 tiny file checked as mgu (K=11): refused on the class count, before building anything.
    with pytest.raises(CheckpointError, match="has 9 classes, but profile mgu has 11"):
        hub.check_profile_file(TINY_CKPT, "mgu")


def test_load_check_builds_the_real_model():
    # With the real Hiera Base+ builder, the tiny K=9 file is not an nr206 checkpoint.
    with pytest.raises(CheckpointError, match="wrong shape|missing"):
        hub.check_profile_file(TINY_CKPT, "nr206")


# --- downloads --------------------------------------------------------------------------------

class FakeHub:
    """model_info resolves refs to commits; get_paths_info publishes the LFS sha256; a fake
    hf_hub_download writes `payload` where the real one would and records its arguments."""

    def __init__(self, payload: Path, published_sha=None, branch_commit=COMMIT_A):
        self.payload = payload
        self.published = sha256(payload) if published_sha is None else published_sha
        self.branch_commit = branch_commit
        self.info_calls, self.paths_calls, self.downloads = [], [], []

    def model_info(self, repo_id, revision=None):
        self.info_calls.append((repo_id, revision))
        commit = self.branch_commit if revision == "main" else revision
        return SimpleNamespace(sha=commit)

    def get_paths_info(self, repo_id, paths, revision=None, expand=False):
        self.paths_calls.append((repo_id, list(paths), revision, expand))
        lfs = SimpleNamespace(sha256=self.published) if self.published else None
        return [SimpleNamespace(path=p, lfs=lfs) for p in paths]

    def hf_hub_download(self, repo_id, filename, revision=None, local_dir=None, **kw):
        self.downloads.append({"repo_id": repo_id, "filename": filename, "revision": revision,
                               "local_dir": local_dir, **kw})
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.payload, dest)
        return str(dest)


@pytest.fixture
def tiny_builder(monkeypatch):
    """The load check builds the tiny config's model (a real nr206 file is 880 MB)."""
    monkeypatch.setattr(hub, "build_model", lambda k, config=None, **kw: checkpoint.build_model(k, TINY_CONFIG, **kw))


def fake_hub(monkeypatch, payload, **kw) -> FakeHub:
    fake = FakeHub(payload, **kw)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    return fake


def leftovers(models_dir: Path, profile="nr206"):
    folder = models_dir / profile
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_is_pinned_verified_moved_and_recorded(tmp_path, monkeypatch, tiny_builder):
    fake = fake_hub(monkeypatch, TINY_CKPT)
    models = tmp_path / "models"
    target = hub.download("nr206", models, api=fake)
    filename = PROFILES["nr206"].hf_filename
    # pinned: the branch was resolved once, everything after used the commit
    assert fake.info_calls == [(HF_REPO, "main")]
    assert fake.paths_calls == [(HF_REPO, [filename], COMMIT_A, True)]
    (dl,) = fake.downloads
    assert (dl["repo_id"], dl["filename"], dl["revision"]) == (HF_REPO, filename, COMMIT_A)
    assert Path(dl["local_dir"]).parent == models / "nr206" and Path(dl["local_dir"]).name.startswith(".partial-")
    # moved into place, nothing else left
    assert target == models / "nr206" / "final_runs_NR206_last.pt"
    assert target.read_bytes() == TINY_CKPT.read_bytes()
    assert leftovers(models) == ["final_runs_NR206_last.pt"]
    record = json.loads((models / "checksums.json").read_text())
    assert record == {"nr206/final_runs_NR206_last.pt": {
        "sha256": sha256(TINY_CKPT), "repo": HF_REPO, "filename": filename, "revision": COMMIT_A}}
    # and the loader checks the file against that record from now on
    assert verify_recorded_checksum(target) is True
    flip_one_byte(target)
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(target, TINY_CONFIG)


def test_second_download_reuses_the_recorded_commit(tmp_path, monkeypatch, tiny_builder):
    models = tmp_path / "models"
    hub.download("nr206", models, api=fake_hub(monkeypatch, TINY_CKPT, branch_commit=COMMIT_A))
    # The branch has moved on since; a new download still fetches the recorded commit.
    fake = fake_hub(monkeypatch, TINY_CKPT, branch_commit=COMMIT_B)
    hub.download("nr206", models, api=fake)
    assert fake.info_calls == [(HF_REPO, COMMIT_A)]
    assert [d["revision"] for d in fake.downloads] == [COMMIT_A]
    # An explicit revision wins over the record.
    fake = fake_hub(monkeypatch, TINY_CKPT, branch_commit=COMMIT_B)
    hub.download("nr206", models, revision="main", api=fake)
    assert [d["revision"] for d in fake.downloads] == [COMMIT_B]
    assert json.loads((models / "checksums.json").read_text())["nr206/final_runs_NR206_last.pt"]["revision"] == COMMIT_B


def _assert_refused_and_clean(tmp_path, call, *words):
    models = tmp_path / "models"
    with pytest.raises(CheckpointError) as info:
        call(models)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg
    assert leftovers(models) == [], leftovers(models)  # no file and no .partial-* folder
    assert not (models / "checksums.json").exists()
    return msg


def test_hash_mismatch_deletes_the_partial_file(tmp_path, monkeypatch, tiny_builder):
    fake = fake_hub(monkeypatch, TINY_CKPT, published_sha="0" * 64)
    msg = _assert_refused_and_clean(tmp_path, lambda m: hub.download("nr206", m, api=fake),
                                    "sha256", "0" * 64, sha256(TINY_CKPT), "deleted")
    assert len(fake.downloads) == 1
    REFUSED.append(("hub sha256 mismatch (download)", msg))


def test_no_published_hash_is_refused_before_downloading(tmp_path, monkeypatch, tiny_builder):
    fake = fake_hub(monkeypatch, TINY_CKPT, published_sha="")
    _assert_refused_and_clean(tmp_path, lambda m: hub.download("nr206", m, api=fake), "no sha256")
    assert fake.downloads == []


def test_wrong_profile_download_fails_the_load_check_and_is_deleted(tmp_path, monkeypatch, tiny_builder):
    fake = fake_hub(monkeypatch, TINY_CKPT)  # hub hash matches: the file is what the hub serves
    msg = _assert_refused_and_clean(tmp_path, lambda m: hub.download("mgu", m, api=fake) and None,
                                    "load check", "deleted", "has 9 classes, but profile mgu has 11")
    assert leftovers(tmp_path / "models", "mgu") == []
    REFUSED.append(("wrong profile (download load check)", msg))


def test_incomplete_download_fails_the_load_check(tmp_path, monkeypatch, tiny_builder):
    sd = torch.load(TINY_CKPT, map_location="cpu", weights_only=True)["model_state"]
    missing = dict(sd)
    missing.pop("sam_mask_decoder.iou_prediction_head.layers.0.weight")
    payload = tmp_path / "missing.pt"
    torch.save({"model_state": missing}, payload)
    fake = fake_hub(monkeypatch, payload)
    _assert_refused_and_clean(tmp_path, lambda m: hub.download("nr206", m, api=fake),
                              "load check", "missing 1 weights", "iou_prediction_head")


def test_pickled_callable_in_a_download_never_runs(tmp_path, monkeypatch, tiny_builder):
    payload, marker = evil_checkpoint(tmp_path)
    fake = fake_hub(monkeypatch, payload)  # even with a matching published hash
    _assert_refused_and_clean(tmp_path, lambda m: hub.download("nr206", m, api=fake),
                              "load check", "refused to load", "weights_only")
    assert not marker.exists()


def test_failed_update_keeps_the_good_file_and_its_record(tmp_path, monkeypatch, tiny_builder):
    models = tmp_path / "models"
    target = hub.download("nr206", models, api=fake_hub(monkeypatch, TINY_CKPT))
    record = (models / "checksums.json").read_text()
    fake = fake_hub(monkeypatch, TINY_CKPT, published_sha="f" * 64, branch_commit=COMMIT_B)
    with pytest.raises(CheckpointError, match="deleted"):
        hub.download("nr206", models, revision="main", api=fake)
    assert target.read_bytes() == TINY_CKPT.read_bytes()
    assert (models / "checksums.json").read_text() == record
    assert leftovers(models) == ["final_runs_NR206_last.pt"]


@pytest.fixture(scope="module", autouse=True)
def summary():
    """After the file's tests, whichever ran: their summary line."""
    yield

    def short(msg):  # drop pytest's temporary folders from the quoted messages
        return re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/]+/", "<tmp>/", msg.splitlines()[0])[:120]

    if REFUSED:
        write_summary("supply_chain", f"SUPPLY CHAIN SUMMARY: {len(REFUSED)} bad checkpoints refused with a "
                      "message: " + "; ".join(f"{what}: {short(msg)}" for what, msg in REFUSED))
