"""Which checkpoint to use: the one place every front door asks.

In order: a path given (--checkpoint, ``-p checkpoint``, the Nuclio variable, a Python argument);
else the environment variable the front door names (the options table's, for the checkpoint); else the checkpoint ``python -m sam2oct download`` stored under the
models folder; else a released checkpoint in the Hugging Face hub cache (where
``Segmenter.from_pretrained`` and ``hf_hub_download`` put it). A stored one also names its profile.
Errors name the option neutrally (``checkpoint``, or ``profile`` when several are there); each
front door says it in its own names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sam2oct.errors import CheckpointError, ConfigError
from sam2oct.model.profiles import HF_REPO, PROFILES

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Found:
    """A checkpoint and where it was found: "given", "env", "store" (models folder) or "hub cache"."""

    path: str
    source: str
    profile: str | None = None  # the released profile it was stored as (store and hub cache)
    env_var: str | None = None  # the variable it came from (source "env")

    def describe(self) -> str:
        where = {"given": "given", "env": f"${self.env_var}", "store": "downloaded",
                 "hub cache": "Hugging Face cache"}[self.source]
        return f"{self.path} ({where}" + (f", profile {self.profile})" if self.profile else ")")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: huggingface_hub's (HF_HUB_CACHE or HF_HOME, read when it is imported)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_checkpoint(profile_name: str, cache_dir=None) -> Path | None:
    """The released checkpoint of a profile in the hub cache: the one of the ``main`` ref, else
    the newest of any cached commit (a pinned download records no ref). None when absent."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.errors import CacheNotFound

    cache_dir = Path(cache_dir) if cache_dir else hub_cache_dir()
    filename = PROFILES[profile_name].hf_filename
    found = try_to_load_from_cache(HF_REPO, filename, cache_dir=cache_dir)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    try:
        repos = scan_cache_dir(cache_dir).repos
    except CacheNotFound:
        return None
    files = [f for repo in repos if repo.repo_id == HF_REPO and repo.repo_type == "model"
             for rev in repo.revisions for f in rev.files if f.file_name == Path(filename).name
             and f.file_path.as_posix().endswith("/" + filename) and f.file_path.is_file()]
    if not files:
        return None
    return max(files, key=lambda f: f.blob_last_modified).file_path


def cached_checkpoints(cache_dir=None) -> dict:
    """{profile: path} of the released checkpoints in the hub cache."""
    found = {name: cached_checkpoint(name, cache_dir) for name in PROFILES}
    return {name: path for name, path in found.items() if path is not None}


def find_checkpoint(given=None, *, profile: str | None = None, env_var: str | None = None,
                    models_dir="models", cache_dir=None) -> Found:
    """The checkpoint to use. ``env_var``: the environment variable to read when none is given
    (None: a front door that read it already); ``models_dir`` None skips the download store. Raises a CheckpointError that says
    what is there and the command that fetches the missing one."""
    from sam2oct.model.hub import download_command, stored_checkpoints

    if given:
        return Found(str(given), "given")
    from_env = os.environ.get(env_var, "").strip() if env_var else ""
    if from_env:
        return Found(from_env, "env", env_var=env_var)
    profile = str(profile or "").strip().lower() or None
    if profile and profile not in PROFILES:
        raise ConfigError(f"profile {profile!r} is not one of {', '.join(PROFILES)}", option="profile")
    places = []
    if models_dir is not None:
        places.append(("store", f"{Path(models_dir)}/", stored_checkpoints(models_dir)))
    places.append(("hub cache", f"the Hugging Face cache ({cache_dir or hub_cache_dir()})",
                   cached_checkpoints(cache_dir)))
    for source, folder, there in places:
        if profile in there or (not profile and len(there) == 1):
            name = profile or next(iter(there))
            log.debug("checkpoint of %s found in %s: %s", name, folder, there[name])
            return Found(str(there[name]), source, name)
        if not profile and there:
            # Several: the profile decides (option "profile", so the front door names its own setting).
            listed = ", ".join(f"{name} ({path})" for name, path in there.items())
            raise CheckpointError(f"no checkpoint given and {len(there)} in {folder}: {listed}; "
                                  f"choose one: {' or '.join(there)}", option="profile")
    searched = " or ".join(folder for _, folder, _ in places)
    also = "; ".join(f"in {folder}: {', '.join(f'{n} ({p})' for n, p in there.items())}"
                     for _, folder, there in places if there)
    store = models_dir if models_dir is not None else "models"
    if profile:
        raise CheckpointError(f"no checkpoint given and no {profile} checkpoint in {searched}"
                              + (f" (there are: {also})" if also else "")
                              + f"; download it with: {download_command(profile, store)}", option="checkpoint")
    raise CheckpointError(f"no checkpoint given and none in {searched}; download one with: "
                          f"{download_command('nr206', store)}   (or mgu, mgu_prompted)", option="checkpoint")
