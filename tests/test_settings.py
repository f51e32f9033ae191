"""Configuration comes only from the documented environment variables, and bad values fail clearly."""

import re

import pytest

from conftest import ROOT
from sam2oct.errors import ConfigError
from sam2oct.pipeline.options import PipelineOptions
from sam2oct.serving.settings import ENV_VARS, OPTION_ENV, Settings


def test_defaults_when_nothing_is_set():
    s = Settings.from_env({})
    o = s.options
    assert o.checkpoint is None
    assert (s.mode, o.label_style, o.precision, o.device) == ("interactor", "names", "auto", "auto")
    assert (o.cache_mb, s.max_points, o.min_area, o.simplify, s.warmup) == (2048, 64, 16, 1.0, True)
    assert o.preprocess == ""  # the profile's preprocessing
    assert o.cvat_ui == "current"  # the reply stock CVAT 2.60 and later draws
    assert o == PipelineOptions()  # one place for every default: the pipeline's


def test_values_are_read():
    s = Settings.from_env({
        "SAM2_CHECKPOINT": "/m/x.pt", "SAM2OCT_MODE": "Detector", "SAM2OCT_CACHE_MB": "3.5",
        "SAM2OCT_SIMPLIFY": "0", "SAM2OCT_PREPROCESS": "pad-equalize", "SAM2OCT_WARMUP": "0",
        "SAM2OCT_LABEL_STYLE": "index", "SAM2OCT_TORCH_THREADS": "1", "SAM2OCT_CVAT_UI": " Legacy",
    })
    o = s.options
    assert (o.checkpoint, s.mode, o.cache_mb, o.simplify) == ("/m/x.pt", "detector", 3.5, 0.0)
    assert (o.preprocess, s.warmup, o.label_style, o.torch_threads) == ("pad-equalize", False, "index", 1)
    assert o.cvat_ui == "legacy"


def test_every_pipeline_option_has_a_variable():
    assert set(OPTION_ENV) == set(PipelineOptions.names())


@pytest.mark.parametrize("name, value, words", [
    ("SAM2OCT_CACHE_MB", "many", "not a number"),
    ("SAM2OCT_CACHE_MB", "-1", "outside"),
    ("SAM2OCT_MIN_AREA", "2.5", "not an integer"),
    ("SAM2OCT_SIMPLIFY", "nan", "outside"),
    ("SAM2OCT_SIMPLIFY", "x", "not a number"),
    ("SAM2OCT_MODE", "tracker", "not one of"),
    ("SAM2OCT_LABEL_STYLE", "ids", "not one of"),
    ("SAM2OCT_PRECISION", "fp8", "not one of"),
    ("SAM2OCT_PREPROCESS", "crop", "not one of"),
    ("SAM2OCT_WARMUP", "yes", "not one of"),
    ("SAM2OCT_MAX_PIXELS", "0", "outside"),
    ("SAM2OCT_CVAT_UI", "2.64", "not one of"),
])
def test_bad_values_name_the_variable(name, value, words):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and words in str(err.value)


def test_every_variable_the_code_reads_is_a_documented_setting():
    sources = [ROOT / "main.py", ROOT / "model_handler.py", *sorted((ROOT / "sam2oct").rglob("*.py"))]
    read = set()
    for path in sources:
        text = path.read_text()
        read |= set(re.findall(r"""(?:environ(?:\.get)?[\[(]|getenv\()\s*["']([A-Z0-9_]+)["']""", text))
        read |= set(re.findall(r"""env(?:\.get)?[\[(]\s*["']([A-Z0-9_]+)["']""", text))
        read |= set(re.findall(r"""_(?:int|choice)\(env,\s*["']([A-Z0-9_]+)["']""", text))
    read |= set(OPTION_ENV.values())  # read through the option table (settings._parse)
    assert read, "the scan found no environment reads at all"
    assert read <= set(ENV_VARS), f"read but not in ENV_VARS: {sorted(read - set(ENV_VARS))}"
    # and each documented one is really read somewhere
    assert set(ENV_VARS) <= read, f"documented but never read: {sorted(set(ENV_VARS) - read)}"


@pytest.mark.docs
def test_readme_table_gives_each_variable_its_default_and_meaning():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| `([A-Z0-9_]+)` \| (.*?) \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    for name, (default, meaning) in ENV_VARS.items():
        assert name in rows, f"README.md has no row for {name}"
        shown = "(unset)" if default in (None, "") else f"`{default}`"
        assert rows[name] == (shown, meaning), f"README.md's row for {name} is out of date"
