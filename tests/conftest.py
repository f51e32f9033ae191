"""Shared test fixtures: the small parity checkpoint and the sample B-scans."""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = ROOT / "tests" / "fixtures" / "parity"
TINY_CKPT = PARITY_DIR / "tiny_k9.pt"
TINY_CONFIG = PARITY_DIR / "tiny_k9.yaml"
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def tiny_model():
    from sam2oct.checkpoint import load_model

    return load_model(TINY_CKPT, TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_npz():
    return np.load(PARITY_DIR / "tiny_k9.npz")


# List the parity fixtures in pytest's header (test_parity.py also prints a "parity fixtures
# ran" section in the summary, which -q shows).
from parity_fixtures import pytest_report_header  # noqa: E402,F401
