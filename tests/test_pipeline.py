"""The pipeline's start-up: a device fault is named as one (not as a checkpoint problem, which
would send an admin off to download 880 MB again), and an 11-class checkpoint without a profile
says that it runs as the unprompted 'mgu'."""

import pytest
import torch
from conftest import TINY_CONFIG
from harness import start_failure, Worker

from sam2oct.model.checkpoint import build_model
from sam2oct.errors import CheckpointError, DeviceError
from sam2oct.model.modeling.semantic_sam2 import SemanticSAM2
from sam2oct.model.device import resolve_device
from sam2oct.pipeline.options import PipelineOptions


@pytest.fixture
def one_gpu(monkeypatch):
    """A host that reports one CUDA device (none is there: nothing may really use it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def _refused_as_device_fault(exc, log, *words):
    assert isinstance(exc, DeviceError) and not isinstance(exc, CheckpointError), repr(exc)
    (line,) = log.lines("error")
    assert "SAM2_DEVICE" in line and "download" not in line, line
    for word in words:
        assert word in line, line


def test_a_device_index_that_does_not_exist_is_a_device_error(one_gpu):
    exc, log = start_failure(SAM2_DEVICE="cuda:3")
    _refused_as_device_fault(exc, log, "cuda:3", "does not exist", "1 CUDA device")


def test_a_driver_fault_is_found_before_the_checkpoint_is_read(one_gpu, monkeypatch, tmp_path):
    zeros = torch.zeros

    def broken_driver(*args, device=None, **kw):
        if device is not None and torch.device(device).type == "cuda":
            raise RuntimeError("The NVIDIA driver on your system is too old (found version 11040).")
        return zeros(*args, device=device, **kw)

    monkeypatch.setattr(torch, "zeros", broken_driver)
    # the checkpoint is missing too: the device is what the admin must fix first
    exc, log = start_failure(SAM2_DEVICE="cuda", SAM2_CHECKPOINT=str(tmp_path / "missing.pt"))
    _refused_as_device_fault(exc, log, "driver", "too old")


def test_out_of_memory_while_placing_the_model_is_a_device_error(monkeypatch):
    def out_of_memory(self, *args, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(SemanticSAM2, "to", out_of_memory)
    exc, log = start_failure()
    _refused_as_device_fault(exc, log, "out of memory", "could not be placed")


def test_auto_probes_a_cuda_device_it_picks(one_gpu, monkeypatch):
    monkeypatch.setattr(torch, "zeros", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("no kernel image")))
    with pytest.raises(DeviceError) as err:
        resolve_device("auto")
    assert err.value.option == "device" and "no kernel image" in str(err.value)


def test_cpu_hosts_answer_auto_with_the_cpu():
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


def test_options_are_checked_without_a_model():
    with pytest.raises(Exception) as err:
        PipelineOptions(simplify=-1)
    assert getattr(err.value, "option", None) == "simplify"


def test_an_11_class_checkpoint_without_a_profile_warns_naming_the_variable(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "k11.pt"
    torch.save({"model_state": build_model(11, TINY_CONFIG).state_dict()}, path)
    quiet = Worker(SAM2_CHECKPOINT=str(path), SAM2OCT_PROFILE="mgu")
    assert not [w for w in quiet.log.lines("warn") if "SAM2OCT_PROFILE" in w]  # named: no warning
    fn = Worker(SAM2_CHECKPOINT=str(path))
    assert fn.model.profile.name == "mgu" and not fn.model.profile.prompted
    (warning,) = [w for w in fn.log.lines("warn") if "SAM2OCT_PROFILE" in w]
    assert "mgu_prompted" in warning and "11 classes" in warning
