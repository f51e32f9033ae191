"""Strict checkpoint loading: every wrong file fails at load time, naming the file and the keys."""

import collections
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DATA, TINY_CKPT, TINY_CONFIG

from importlib import resources

from omegaconf import OmegaConf

from sam2oct.model.checkpoint import DEFAULT_CONFIG, build_model, load_config, load_model, packaged_configs, read_state_dict
from sam2oct.errors import CheckpointError, ConfigError
from sam2oct.model.profiles import resolve_profile

CLASS_EMBED = "sam_prompt_encoder.class_embeddings.weight"
MASK_TOKENS = "sam_mask_decoder.mask_tokens.weight"


@pytest.fixture(scope="module")
def tiny_ckpt():
    # Read the fixture with torch directly, not through the code under test.
    return torch.load(TINY_CKPT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_sd(tiny_ckpt):
    return dict(tiny_ckpt["model_state"])


@pytest.fixture(scope="module")
def reference(tiny_model):
    # One input, its outputs from the model loaded from the untouched fixture.
    torch.manual_seed(0)
    x = torch.randn(1, 3, tiny_model.image_size, tiny_model.image_size)
    return x, run(tiny_model, x)


def run(model, x):
    with torch.inference_mode():
        feats = model.encode_image(x)
        pts = torch.tensor([[[300.0, 400.0], [700.0, 200.0]]])
        logits, ious = model.decode(feats, pts, torch.tensor([[1, 0]], dtype=torch.int32))
    return logits, ious


def save(tmp_path, obj, name="ckpt.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def expect_error(path, *fragments, config=TINY_CONFIG, option="checkpoint") -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path, config)
    assert info.value.option == option
    msg = str(info.value)
    for fragment in (str(path), *fragments):
        assert fragment in msg, f"{fragment!r} not in error message: {msg}"
    return msg


# --- files that are not checkpoints ---------------------------------------------------------

def test_missing_file(tmp_path):
    expect_error(tmp_path / "nowhere" / "sam2oct.pt", "not found")


def test_truncated_file(tmp_path):
    data = TINY_CKPT.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "not a readable PyTorch checkpoint")


@pytest.mark.parametrize("kind", ["png", "text", "empty"])
def test_not_a_checkpoint(tmp_path, kind):
    path = tmp_path / f"weights.{kind}"
    if kind == "png":
        shutil.copy(DATA / "bscan_768x496_s1_labels.png", path)
    elif kind == "text":
        path.write_text("<html>404 Not Found</html>\n")
    else:
        path.write_bytes(b"")
    expect_error(path)


def test_read_state_dict_missing_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")


@pytest.mark.parametrize("obj", [torch.zeros(3), [torch.zeros(3)], {"epoch": 3, "note": "no weights"}],
                         ids=["tensor", "list", "dict-without-tensors"])
def test_no_weights_in_file(tmp_path, obj):
    expect_error(save(tmp_path, obj))


# --- pickled code is never run ----------------------------------------------------------------

class _RunsShell:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CreatesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _SneakyDict(collections.OrderedDict):
    pass


@pytest.mark.parametrize("variant", ["os.system", "open", "function", "dict-subclass"])
def test_pickled_callable_refused_and_not_run(tmp_path, tiny_sd, variant):
    marker = tmp_path / "marker_created_by_unpickling"
    payload = {
        "os.system": lambda: {"model_state": tiny_sd, "hook": _RunsShell(marker)},
        "open": lambda: {"model_state": tiny_sd, "hook": _CreatesFile(marker)},
        "function": lambda: {"model_state": tiny_sd, "hook": shutil.rmtree},
        "dict-subclass": lambda: {"model_state": _SneakyDict(tiny_sd)},
    }[variant]()
    path = save(tmp_path, payload)
    global_name = {"os.system": "system", "open": "open", "function": "rmtree",
                   "dict-subclass": "_SneakyDict"}[variant]
    msg = expect_error(path, "refused", global_name)
    assert "weights_only" in msg
    assert not marker.exists(), "the pickled callable was executed"
    # Control: the payload really is live (plain pickle would run it).
    if variant == "os.system":
        torch.load(path, weights_only=False)
        assert marker.exists()


# --- the wrong model ----------------------------------------------------------------------------

def test_plain_sam2_checkpoint(tmp_path, tiny_sd):
    # SAM 2 proper: 4 mask tokens (1 + 3 multimask), no semantic prompt head.
    sd = {k: v for k, v in tiny_sd.items()
          if not k.startswith(("sam_prompt_encoder.class_embeddings", "sam_prompt_encoder.semantic_mask"))}
    sd[MASK_TOKENS] = sd[MASK_TOKENS][:4].clone()
    for i in range(4, 9):
        sd = {k: v for k, v in sd.items() if not k.startswith(f"sam_mask_decoder.output_hypernetworks_mlps.{i}.")}
    msg = expect_error(save(tmp_path, {"model": sd}), CLASS_EMBED)
    assert "plain SAM 2" in msg


def test_dce_variant(tmp_path, tiny_sd):
    sd = dict(tiny_sd, **{"sam_mask_decoder.class_queries.weight": torch.zeros(9, 256)})
    msg = expect_error(save(tmp_path, {"model_state": sd}), "sam_mask_decoder.class_queries.weight")
    assert "DCE" in msg


def test_multi_decoder_variant(tmp_path, tiny_sd):
    sd = {k.replace("sam_mask_decoder.", "sam_mask_decoders.3.", 1): v for k, v in tiny_sd.items()}
    sd[MASK_TOKENS] = tiny_sd[MASK_TOKENS]
    msg = expect_error(save(tmp_path, {"model_state": sd}), "sam_mask_decoders.3.")
    assert "multi-decoder" in msg


def test_no_mask_tokens(tmp_path, tiny_sd):
    sd = {k: v for k, v in tiny_sd.items() if k != MASK_TOKENS}
    expect_error(save(tmp_path, sd), MASK_TOKENS)


@pytest.mark.parametrize("key", ["no_mem_embed", "sam_mask_decoder.iou_token.weight",
                                 "image_encoder.trunk.patch_embed.proj.weight",
                                 "sam_prompt_encoder.semantic_mask_downscaling.6.bias"])
def test_missing_used_weight(tmp_path, tiny_sd, key):
    sd = {k: v for k, v in tiny_sd.items() if k != key}
    msg = expect_error(save(tmp_path, {"model_state": sd}), key)
    assert "missing 1 " in msg


def test_wrong_shape(tmp_path, tiny_sd):
    # Class embeddings for 11 classes beside mask tokens for 9.
    k, dim = tiny_sd[CLASS_EMBED].shape
    sd = dict(tiny_sd, **{CLASS_EMBED: torch.zeros(k + 2, dim)})
    msg = expect_error(save(tmp_path, {"model_state": sd}), CLASS_EMBED, f"({k + 2}, {dim})", f"({k}, {dim})",
                       option="config")  # the likely cure: the config of the checkpoint's size
    assert "model config" in msg


def test_foreign_weight(tmp_path, tiny_sd):
    sd = dict(tiny_sd, **{"sam_mask_decoder.extra_head.weight": torch.zeros(3)})
    expect_error(save(tmp_path, {"model_state": sd}), "sam_mask_decoder.extra_head.weight")


def test_profile_contradicting_class_count(tiny_model):
    assert tiny_model.num_classes == 9
    with pytest.raises(ConfigError, match="mgu"):
        resolve_profile(tiny_model.num_classes, "mgu")


def test_missing_config_path(tmp_path):
    cfg = tmp_path / "configs" / "sam2.1_hiera_x.yaml"
    for load in (lambda: load_model(TINY_CKPT, cfg), lambda: build_model(9, cfg)):
        with pytest.raises(CheckpointError) as info:
            load()
        assert str(info.value).startswith(f"model config file not found: {cfg}")
        assert info.value.option == "config"


def test_unknown_config_name_lists_the_packaged_ones():
    with pytest.raises(CheckpointError) as info:
        load_config("configs/sam2.1/sam2.1_hiera_xl.yaml")
    msg = str(info.value)
    assert msg.startswith("model config file not found: configs/sam2.1/sam2.1_hiera_xl.yaml")
    assert "configs/sam2.1/sam2.1_hiera_l.yaml" in msg and "configs/sam2.1/sam2.1_hiera_t.yaml" in msg
    assert "file path" in msg and info.value.option == "config"
    assert "SAM2_CONFIG" not in msg


def test_config_without_model_section(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trainer:\n  lr: 0.1\n")
    with pytest.raises(CheckpointError, match="bad.yaml") as info:
        load_model(TINY_CKPT, cfg)
    assert info.value.option == "config"


# --- model configs packaged with sam2 ---------------------------------------------------------------

SAM2_CONFIGS = resources.files("sam2").joinpath("configs")


def packaged_model(name):
    """The model section of a packaged config, read here with OmegaConf from the package files."""
    return OmegaConf.load(str(SAM2_CONFIGS.joinpath(name.removeprefix("configs/")))).model


def test_packaged_config_names():
    names = packaged_configs()
    # Every model config the installed sam2 ships (its training configs hold no model section).
    on_disk = [f"configs/{d.name}/{f.name}" for d in SAM2_CONFIGS.iterdir() if d.is_dir()
               for f in d.iterdir() if f.name.endswith(".yaml") and "model" in OmegaConf.load(str(f))]
    assert sorted(on_disk) == names and DEFAULT_CONFIG in names
    assert {f"configs/sam2.1/sam2.1_hiera_{s}.yaml" for s in ("t", "s", "b+", "l")} <= set(names)


@pytest.mark.parametrize("name", ["configs/sam2.1/sam2.1_hiera_l.yaml", "configs/sam2.1/sam2.1_hiera_t.yaml",
                                  "configs/sam2/sam2_hiera_s.yaml", DEFAULT_CONFIG])
def test_packaged_config_by_name(name):
    cfg = load_config(name)
    want = packaged_model(name)
    assert cfg.image_encoder.trunk == want.image_encoder.trunk
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(want)


def test_default_config_is_hiera_base_plus():
    assert OmegaConf.to_container(load_config()) == OmegaConf.to_container(packaged_model(DEFAULT_CONFIG))
    assert load_config().image_encoder.trunk.embed_dim == 112  # Hiera B+


def test_model_builds_from_another_packaged_size():
    model = build_model(9, "configs/sam2.1/sam2.1_hiera_t.yaml")
    trunk = packaged_model("configs/sam2.1/sam2.1_hiera_t.yaml").image_encoder.trunk
    assert model.image_encoder.trunk.patch_embed.proj.out_channels == trunk.embed_dim == 96
    assert len(model.image_encoder.trunk.blocks) == sum(trunk.stages)
    assert model.num_classes == 9


def test_a_file_path_still_works(tmp_path):
    cfg = tmp_path / "my_model.yaml"
    cfg.write_text(TINY_CONFIG.read_text())
    assert load_config(cfg).image_encoder.trunk.embed_dim == 8
    assert load_config(str(cfg)) == load_config(TINY_CONFIG)


# --- accepted layouts all give the same model -----------------------------------------------------

@pytest.mark.parametrize("layout", ["model_state", "model", "model_state_dict", "bare", "module.",
                                    "module.+model_state"])
def test_container_variants_load_identically(tmp_path, tiny_ckpt, tiny_sd, tiny_model, reference, layout):
    prefixed = {f"module.{k}": v for k, v in tiny_sd.items()}
    obj = {
        "model_state": {"model_state": tiny_sd, "optimizer_state": tiny_ckpt["optimizer_state"], "epoch": 1},
        "model": {"model": tiny_sd, "epoch": 1},
        "model_state_dict": {"model_state_dict": tiny_sd, "best_metric": 0.5},
        "bare": tiny_sd,
        "module.": prefixed,
        "module.+model_state": {"model_state": prefixed, "epoch": 2},
    }[layout]
    model = load_model(save(tmp_path, obj), TINY_CONFIG)
    assert not model.training
    ref_sd = tiny_model.state_dict()
    got_sd = model.state_dict()
    assert got_sd.keys() == ref_sd.keys()
    assert all(torch.equal(got_sd[k], ref_sd[k]) for k in ref_sd)
    x, (ref_logits, ref_ious) = reference
    logits, ious = run(model, x)
    assert torch.equal(logits, ref_logits) and torch.equal(ious, ref_ious)


def test_loaded_weights_are_the_files(tiny_sd, tiny_model):
    # Not random init: every weight in the file is what the model holds.
    sd = tiny_model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in tiny_sd.items())


def test_training_only_extras_may_be_missing(tmp_path, tiny_sd, tiny_model, reference):
    dropped_prefixes = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc",
                        "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial",
                        "sam_mask_decoder.upscale_residual_proj.", "sam_mask_decoder.upscale_post_add_proj.")
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith(dropped_prefixes)}
    assert len(sd) < len(tiny_sd) - 50  # really dropped a lot
    model = load_model(save(tmp_path, {"model_state": sd}), TINY_CONFIG)  # no optimizer state either
    x, (ref_logits, ref_ious) = reference
    logits, ious = run(model, x)
    assert torch.equal(logits, ref_logits) and torch.equal(ious, ref_ious)


def test_weights_come_from_the_checkpoint_not_from_initialisation(tmp_path, tiny_sd):
    """Loading skips drawing random weights: every tensor equals the file's, what an inference-only
    checkpoint leaves out (memory modules) is zeros, not leftover memory, and a network built
    afterwards is random again (the initialisers are back)."""
    dropped = {k: v for k, v in tiny_sd.items() if not k.startswith(("memory_encoder.", "maskmem_tpos_enc"))}
    assert len(dropped) < len(tiny_sd)
    model = load_model(save(tmp_path, {"model_state": dropped}), TINY_CONFIG)
    state = model.state_dict()
    for k, v in dropped.items():
        assert torch.equal(state[k], v), k
    left_out = [k for k in state if k not in dropped]
    assert left_out and all(not state[k].any() for k in left_out)
    fresh = build_model(9, TINY_CONFIG).state_dict()
    linear = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
    assert fresh[linear].std() > 0 and not torch.equal(fresh[linear], state[linear])
