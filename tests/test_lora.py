"""LoRA adapters: zero-initialised they change nothing; folded they give the adapted outputs and the
base checkpoint's exact key set (the released K=9 and K=11 manifests, SAM 2.1 Hiera Base+)."""

import json

import pytest
import torch
from conftest import ROOT, TINY_CKPT, TINY_CONFIG
from torch import nn

from sam2oct.model.checkpoint import build_model, load_model
from sam2oct.training.finetune import DECODER_LORA, ENCODER_LORA
from sam2oct.training.lora import LoRALinear, add_lora, lora_parameters, merge_lora

FIXTURES = ROOT / "tests" / "fixtures"


def forward(model, x):
    with torch.no_grad():
        feats = model.encode_image(x)
        pts = torch.tensor([[[300.0, 400.0]]])
        return model.decode(feats, pts, torch.tensor([[1]], dtype=torch.int32))


def randomise_adapters(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture()
def model():
    return load_model(TINY_CKPT, TINY_CONFIG)


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))


def test_zero_initialised_adapters_change_nothing(model, image):
    ref_logits, ref_ious = forward(model, image)
    enc = add_lora(model, ENCODER_LORA, rank=4)
    dec = add_lora(model, DECODER_LORA, rank=4)
    assert enc and dec
    assert all(float(m.lora_b.detach().abs().sum()) == 0 for m in model.modules() if isinstance(m, LoRALinear))
    assert any(float(m.lora_a.detach().abs().sum()) > 0 for m in model.modules() if isinstance(m, LoRALinear))
    logits, ious = forward(model, image)
    assert torch.equal(logits, ref_logits) and torch.equal(ious, ref_ious)


def test_layer_fold_error_is_below_1e5():
    torch.manual_seed(0)
    base = nn.Linear(112, 336)
    layer = LoRALinear(base, rank=8, alpha=16)
    with torch.no_grad():
        layer.lora_b.normal_(0, 0.1)
    x = torch.randn(64, 112)
    adapted = layer(x)
    merged = layer.merged()
    assert type(merged) is nn.Linear
    expected_w = base.weight + 2.0 * layer.lora_b @ layer.lora_a
    assert torch.max(torch.abs(merged.weight - expected_w)) <= 1e-5
    assert torch.max(torch.abs(merged(x) - adapted)) <= 1e-5
    assert torch.max(torch.abs(adapted - base(x))) > 1e-2  # the adapter really changed the layer


def test_folded_model_matches_adapted_model(model, image):
    base_logits, _ = forward(model, image)
    add_lora(model, ENCODER_LORA, rank=4)
    add_lora(model, DECODER_LORA, rank=4)
    randomise_adapters(model)
    logits, ious = forward(model, image)
    assert torch.max(torch.abs(logits - base_logits)) > 1e-3  # the adapters do something
    assert merge_lora(model) > 0
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    merged_logits, merged_ious = forward(model, image)
    assert torch.max(torch.abs(merged_logits - logits)) <= 1e-4 * max(1.0, float(logits.abs().max()))
    assert torch.max(torch.abs(merged_ious - ious)) <= 1e-5


def test_patterns_match_the_attention_layers_only(model):
    enc = add_lora(model, ENCODER_LORA, rank=2)
    dec = add_lora(model, DECODER_LORA, rank=2)
    assert enc and all(n.startswith("image_encoder.trunk.blocks.") and n.endswith((".attn.qkv", ".attn.proj"))
                       for n in enc)
    # The dimension-changing block projections (blocks.N.proj) are not attention: left alone.
    assert isinstance(model.image_encoder.trunk.blocks[1].proj, nn.Linear)
    assert dec and all(n.startswith("sam_mask_decoder.transformer.") and n.endswith(
        ("q_proj", "k_proj", "v_proj", "out_proj")) for n in dec)
    assert not any(n.startswith("memory_attention.") for n in enc + dec)


def test_no_match_is_an_error(model):
    with pytest.raises(ValueError, match="no nn.Linear"):
        add_lora(model, r"image_encoder\.no_such_layer", rank=2)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0)


@pytest.mark.parametrize("k", [9, 11])
def test_merged_hiera_b_plus_has_the_manifest_keys(k):
    manifest = json.loads((FIXTURES / f"checkpoint-keys-hiera-b+-K{k}.json").read_text())["keys"]
    model = build_model(k)
    enc = add_lora(model, ENCODER_LORA, rank=8)
    dec = add_lora(model, DECODER_LORA, rank=8)
    # Hiera B+ has 24 blocks (qkv + proj each); the decoder 2 two-way layers x 3 attentions + 1, x 4.
    assert (len(enc), len(dec)) == (48, 28)
    wrapped = model.state_dict()
    assert wrapped.keys() != manifest.keys()  # guard: while wrapped, the keys differ
    randomise_adapters(model)
    merge_lora(model)
    sd = model.state_dict()
    assert sd.keys() == manifest.keys()
    assert {key: list(v.shape) for key, v in sd.items()} == manifest
