"""Shared test fixtures: the small parity checkpoint and the sample B-scans."""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = ROOT / "tests" / "fixtures" / "parity"
TINY_CKPT = PARITY_DIR / "tiny_k9.pt"
TINY_CONFIG = PARITY_DIR / "tiny_k9.yaml"
TINY = ["--checkpoint", str(TINY_CKPT), "--config", str(TINY_CONFIG)]  # the CLI flags that load it
DATA = ROOT / "tests" / "data"


@pytest.fixture(autouse=True)
def empty_hub_cache(monkeypatch, tmp_path_factory):
    """Checkpoint discovery ends in the Hugging Face cache: the tests' is an empty folder of their
    own, never the machine's (a test that fills one points HF_HUB_CACHE elsewhere)."""
    import huggingface_hub.constants

    empty = str(tmp_path_factory.getbasetemp() / "hf-hub-cache-empty")
    monkeypatch.setenv("HF_HUB_CACHE", empty)  # a subprocess's huggingface_hub reads it at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", empty)  # this process's read it already
    # HF_HOME too: the OpenVINO encoder's default cache lives there, and the tests' conversions of
    # small models belong in the test run's folder (shared by its tests), not the machine's.
    home = str(tmp_path_factory.getbasetemp() / "hf-home")
    monkeypatch.setenv("HF_HOME", home)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", home)


@pytest.fixture(scope="session")
def tiny_model():
    from sam2oct.model.checkpoint import load_model

    return load_model(TINY_CKPT, TINY_CONFIG)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is built or loaded: a user error had to be found before that."""
    import sam2oct.model.checkpoint
    import sam2oct.model.loading
    import sam2oct.pipeline.pipeline
    import sam2oct.training.finetune

    def refuse(*args, **kw):
        raise AssertionError("the model was loaded before the error was found")

    for module in (sam2oct.model.checkpoint, sam2oct.model.loading, sam2oct.training.finetune):
        if hasattr(module, "load_model"):
            monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr(sam2oct.model.checkpoint, "build_model", refuse)
    monkeypatch.setattr(sam2oct.pipeline.pipeline.Pipeline, "__init__", refuse)


@pytest.fixture(scope="session")
def tiny_npz():
    return np.load(PARITY_DIR / "tiny_k9.npz")


# List the parity fixtures in pytest's header (test_parity.py also prints a "parity fixtures
# ran" section in the summary, which -q shows).
from parity_fixtures import pytest_report_header  # noqa: E402,F401
