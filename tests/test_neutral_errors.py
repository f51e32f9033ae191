"""Lower modules speak neutrally: they never name a front door's setting (an environment
variable, a CLI flag); an error about a setting says which option it concerns through `option`."""

import re
from pathlib import Path

import pytest

from sam2oct.model.checkpoint import load_config
from sam2oct.errors import CheckpointError, ConfigError
from sam2oct.model.preprocessing import check_mode
from sam2oct.model.profiles import parse_class_names, resolve_profile

SAM2OCT = Path(__file__).resolve().parents[1] / "sam2oct"
# Every module below the front doors (the serving/ and cli/ packages, cvat_function.py), except
# the options table, whose job is to hold each front door's name for each option.
LOWER = sorted(str(path.relative_to(SAM2OCT)) for package in ("model", "geometry", "pipeline", "data", "training", "evaluation")
               for path in (SAM2OCT / package).rglob("*.py") if path != SAM2OCT / "pipeline" / "options.py")
# The fields of the pipeline's options, which `option` names.
OPTIONS = {"checkpoint", "config", "device", "profile", "class_names", "preprocess", "label_style", "precision",
           "cache_mb", "simplify", "min_area", "max_pixels", "torch_threads"}
ENV_NAME = re.compile(r"\bSAM2(?:OCT)?_[A-Z_]+")


@pytest.mark.parametrize("module", LOWER)
def test_no_environment_variable_named(module):
    source = (SAM2OCT / module).read_text()
    assert ENV_NAME.findall(source) == []


@pytest.mark.parametrize("raise_it, option", [
    (lambda: load_config("configs/nowhere.yaml"), "config"),
    (lambda: check_mode("stretchy"), "preprocess"),
    (lambda: resolve_profile(9, "mgu2"), "profile"),
    (lambda: resolve_profile(9, "mgu"), "profile"),
    (lambda: resolve_profile(7), "class_names"),
    (lambda: resolve_profile(9, None, "a,b"), "class_names"),
    (lambda: parse_class_names("a,,b"), "class_names"),
])
def test_setting_errors_name_their_option(raise_it, option):
    with pytest.raises((ConfigError, CheckpointError)) as info:
        raise_it()
    assert info.value.option == option and option in OPTIONS
    assert not ENV_NAME.search(str(info.value))
