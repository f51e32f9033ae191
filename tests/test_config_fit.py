"""A checkpoint of another SAM 2 size loaded under the wrong config (issue 19, trip 3): the error
names the packaged config that fits it, as a config error each front door names its own way
(--config, SAM2_CONFIG, -p config), instead of a long line about missing weights that blames the
checkpoint. Hiera-T is the smallest packaged size: its K=9 model is built once per session."""

import pytest
import torch
from conftest import TINY_CKPT, TINY_CONFIG
from harness import start_failure

from sam2oct import cli
from sam2oct.errors import CheckpointError
from sam2oct.model.checkpoint import build_model, fitting_config, hiera_size, load_model, packaged_configs

HIERA_T = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.fixture(scope="session")
def hiera_t_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hiera_t") / "sam2oct_hiera_t_k9.pt"
    torch.save({"model_state": build_model(9, HIERA_T).state_dict()}, path)
    return path


def test_each_packaged_size_is_recognised_from_its_weights():
    """The size read from a model's weights is the one its config declares (T and tiny built here;
    the larger ones by their block counts, which the configs state)."""
    tiny = build_model(9, TINY_CONFIG).state_dict()
    assert hiera_size(tiny) == (8, (1, 1, 2, 1)) and fitting_config(tiny) is None
    sizes = {name.split("_")[-1]: name for name in packaged_configs() if name.startswith("configs/sam2.1/")}
    assert set(sizes) == {"t.yaml", "s.yaml", "b+.yaml", "l.yaml"}


def test_hiera_t_weights_under_the_default_config_name_the_t_config(hiera_t_checkpoint):
    sd = torch.load(hiera_t_checkpoint, weights_only=True)["model_state"]
    assert hiera_size(sd) == (96, (1, 2, 7, 2)) and fitting_config(sd) == HIERA_T
    with pytest.raises(CheckpointError) as err:
        load_model(hiera_t_checkpoint)  # SAM 2.1 Hiera B+, the default
    message = str(err.value)
    assert err.value.option == "config"
    assert f"set the model config to {HIERA_T}" in message and "b+" in message
    assert "missing" not in message and len(message) < 400, message
    # and that config really loads it, strictly
    model = load_model(hiera_t_checkpoint, HIERA_T)
    assert model.num_classes == 9


def test_a_checkpoint_no_packaged_config_fits_still_says_what_is_missing():
    with pytest.raises(CheckpointError, match="missing .* weights") as err:
        load_model(TINY_CKPT, HIERA_T)
    assert err.value.option == "checkpoint"


def test_segment_names_its_flag(hiera_t_checkpoint, tmp_path, capsys):
    from conftest import DATA

    code = cli.main(["segment", str(DATA / "bscan_768x496_s1.png"), "--checkpoint", str(hiera_t_checkpoint),
                     "--config", str(TINY_CONFIG)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --config: ") and f"set the model config to {HIERA_T}" in err


def test_the_nuclio_function_names_its_variable(hiera_t_checkpoint):
    exc, log = start_failure(SAM2_CHECKPOINT=str(hiera_t_checkpoint), SAM2_CONFIG=str(TINY_CONFIG))
    (line,) = log.lines("error")
    assert "SAM2_CONFIG: " in line and f"set the model config to {HIERA_T}" in line, line
    assert "missing" not in line


def test_the_cvat_cli_function_names_its_parameter(hiera_t_checkpoint):
    from test_cvat_function import load

    with pytest.raises(Exception) as err:
        load(f"checkpoint=str:{hiera_t_checkpoint}", f"config=str:{TINY_CONFIG}")
    assert "-p config" in str(err.value) and f"set the model config to {HIERA_T}" in str(err.value)
