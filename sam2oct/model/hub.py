"""Fetching the released checkpoints from the Hugging Face hub, verified before use.

A download is pinned to a commit, checked against the hub's published sha256, load-checked
as the expected profile, and only then moved into place; its digest is recorded in
models/checksums.json so that a file changed later is refused at load time.
"""

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from sam2oct.model.checkpoint import (
    CHECKSUMS_NAME, DEFAULT_CONFIG, build_model, check_state_dict, num_classes_of, read_checksums, read_state_dict, sha256_of,
)
from sam2oct.errors import CheckpointError
from sam2oct.model.profiles import HF_REPO, PROFILES

# The hub revision downloads use unless told otherwise. The first download records the
# commit this resolved to in models/checksums.json, and later downloads reuse that commit.
HF_REVISION = "main"


def check_profile_file(path, profile_name: str) -> None:
    """The load check: the file must be a complete checkpoint of the profile's class count."""
    profile = PROFILES[profile_name]
    sd = read_state_dict(path)
    k = num_classes_of(sd, path)
    if k != profile.num_classes:
        raise CheckpointError(f"{path}: has {k} classes, but profile {profile_name} has {profile.num_classes}")
    check_state_dict(build_model(k, init=False), sd, path)


def stored_key(profile_name: str) -> str:
    """Where download() keeps a profile's checkpoint under models_dir (and its checksums.json key)."""
    return f"{profile_name}/{Path(PROFILES[profile_name].hf_filename).name}"


def download_command(profile_name: str = "nr206", models_dir="models") -> str:
    where = "" if Path(models_dir) == Path("models") else f" --models-dir {models_dir}"
    return f"python -m sam2oct download {profile_name}{where}"


def stored_checkpoints(models_dir="models") -> dict:
    """{profile: path} of the checkpoints download() stored under models_dir that are there now."""
    found = {name: Path(models_dir) / stored_key(name) for name in PROFILES}
    return {name: path for name, path in found.items() if path.is_file()}


def published_sha256(profile_name: str, revision: str, api) -> tuple:
    """(commit, sha256) the hub publishes for a profile's file at a revision: the commit pins the
    download (a branch name moves, a commit does not), the sha256 checks it."""
    filename = PROFILES[profile_name].hf_filename
    with _hub_errors(filename):
        commit = api.model_info(HF_REPO, revision=revision).sha
        (info,) = api.get_paths_info(HF_REPO, [filename], revision=commit, expand=True)
    expected = info.lfs.sha256 if info.lfs else None
    if not expected:
        raise CheckpointError(f"the hub publishes no sha256 for {HF_REPO}/{filename}@{commit}")
    return commit, expected


def download(profile_name: str, models_dir="models", revision: str | None = None, api=None) -> Path:
    """Download one profile's checkpoint into models_dir/<profile>/ and record its digest."""
    from huggingface_hub import HfApi, hf_hub_download

    profile = PROFILES[profile_name]
    models_dir = Path(models_dir)
    record_file = models_dir / CHECKSUMS_NAME
    records = read_checksums(record_file)
    key = stored_key(profile_name)
    revision = revision or records.get(key, {}).get("revision") or HF_REVISION
    commit, expected = published_sha256(profile_name, revision, api or HfApi())

    target = models_dir / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".partial-") as tmp:
        with _hub_errors(profile.hf_filename):
            fetched = Path(hf_hub_download(HF_REPO, profile.hf_filename, revision=commit, local_dir=tmp))
        actual = sha256_of(fetched)
        if actual != expected:
            raise CheckpointError(
                f"{profile.hf_filename}: sha256 {actual} != {expected} published by the hub; the partial "
                f"file was deleted"
            )
        try:
            check_profile_file(fetched, profile_name)
        except CheckpointError as exc:
            raise CheckpointError(f"downloaded file failed the load check and was deleted: {exc}") from exc
        shutil.move(fetched, target)
    records[key] = {"sha256": actual, "repo": HF_REPO, "filename": profile.hf_filename, "revision": commit}
    record_file.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    return target


def fetch_to_cache(profile_name: str, revision: str | None = None, cache_dir=None, api=None) -> Path:
    """Download one profile's checkpoint into the Hugging Face cache (huggingface_hub's own
    progress bar), pinned to a commit and verified as download() verifies; a file that fails is
    deleted from the cache."""
    from huggingface_hub import HfApi, hf_hub_download

    profile = PROFILES[profile_name]
    commit, expected = published_sha256(profile_name, revision or HF_REVISION, api or HfApi())
    with _hub_errors(profile.hf_filename):
        fetched = Path(hf_hub_download(HF_REPO, profile.hf_filename, revision=commit, cache_dir=cache_dir))
    try:
        actual = sha256_of(fetched)
        if actual != expected:
            raise CheckpointError(f"{profile.hf_filename}: sha256 {actual} != {expected} published by the hub; "
                                  f"the downloaded file was deleted")
        try:
            check_profile_file(fetched, profile_name)
        except CheckpointError as exc:
            raise CheckpointError(f"downloaded file failed the load check and was deleted: {exc}") from exc
    except CheckpointError:
        blob = fetched.resolve()
        fetched.unlink(missing_ok=True)  # the snapshot's link, then the blob it pointed to
        if blob != fetched:
            blob.unlink(missing_ok=True)
        raise
    return fetched


class HubUnreachable(CheckpointError):
    """The hub could not be reached, or is switched off; ``filename`` is the file that was asked
    for, so that a front door can say how to go on without the hub in its own words."""

    def __init__(self, message: str, filename: str):
        super().__init__(message)
        self.filename = filename


@contextmanager
def _hub_errors(filename: str):
    """The hub unreachable (HubUnreachable) or answering with an error (CheckpointError): one
    error that says so, instead of huggingface_hub's and httpx's exceptions."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise HubUnreachable("the Hugging Face hub is switched off here (HF_HUB_OFFLINE is set)", filename) from None
    except HfHubHTTPError as exc:  # the hub answered, with an error status
        status = getattr(exc.response, "status_code", None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the Hugging Face hub ({constants.ENDPOINT}) refused the download"
                              f"{f' (HTTP {status})' if status else ''}: {first}") from None
    except (HTTPError, LocalEntryNotFoundError, ConnectionError, TimeoutError) as exc:
        # HTTPError without a response: a transport failure (DNS, refused, timeout, proxy);
        # LocalEntryNotFoundError: hf_hub_download's word for the same after its retries.
        cause = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise HubUnreachable(f"the Hugging Face hub ({constants.ENDPOINT}) could not be reached ({cause})",
                             filename) from None


def convert(src, dst, config=None) -> dict:
    """Write a slim, weights-only copy (no optimizer state) that loads faster."""
    sd = read_state_dict(src)
    k = num_classes_of(sd, src)
    check_state_dict(build_model(k, config, init=False), sd, src, config or DEFAULT_CONFIG)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    torch.save({"model_state": {name: t.contiguous().clone() for name, t in sd.items()}}, tmp)
    tmp.replace(dst)
    return {"num_classes": k, "tensors": len(sd), "bytes": dst.stat().st_size}
