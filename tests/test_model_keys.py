"""The network we build has exactly the released checkpoints' keys and shapes (SAM 2.1 Hiera Base+).

The manifests in tests/fixtures/ were dumped from the reference training code. Building Base+
with random weights takes about a second; no forward pass is run here.
"""

import json
from pathlib import Path

import pytest

from sam2oct.model.checkpoint import _UNUSED_PREFIXES, CLASS_EMBED_KEY, MASK_TOKENS_KEY, build_model

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def manifest(k: int) -> dict:
    data = json.loads((FIXTURES / f"checkpoint-keys-hiera-b+-K{k}.json").read_text())
    assert data["num_classes"] == k
    assert data["num_keys"] == len(data["keys"])
    return data["keys"]


@pytest.fixture(scope="module", params=[9, 11], ids=lambda k: f"K{k}")
def built(request):
    k = request.param
    return k, build_model(k).state_dict()


def test_key_set_matches_manifest(built):
    k, sd = built
    expected = manifest(k)
    missing, extra = expected.keys() - sd.keys(), sd.keys() - expected.keys()
    assert not missing, f"keys the checkpoint has but our model lacks: {sorted(missing)[:10]}"
    assert not extra, f"keys our model has but the checkpoint lacks: {sorted(extra)[:10]}"


def test_every_shape_matches_manifest(built):
    k, sd = built
    expected = manifest(k)
    wrong = {key: (list(sd[key].shape), shape) for key, shape in expected.items() if list(sd[key].shape) != shape}
    assert not wrong, f"shape mismatches (ours, manifest): {dict(list(wrong.items())[:10])}"


def test_class_dependent_shapes(built):
    # Spot checks written from the spec text, independently of the manifests.
    k, sd = built
    assert sd[MASK_TOKENS_KEY].shape == (k, 256)
    assert sd[CLASS_EMBED_KEY].shape == (k, 256)
    assert sd["sam_prompt_encoder.semantic_mask_downscaling.0.weight"].shape == (4, k, 2, 2)
    assert sd["sam_prompt_encoder.semantic_mask_downscaling.6.weight"].shape == (256, 16, 1, 1)
    assert sd["sam_mask_decoder.iou_prediction_head.layers.2.weight"].shape == (k, 256)
    assert sd[f"sam_mask_decoder.output_hypernetworks_mlps.{k - 1}.layers.2.weight"].shape == (32, 256)
    assert f"sam_mask_decoder.output_hypernetworks_mlps.{k}.layers.0.weight" not in sd
    assert sd["maskmem_tpos_enc"].shape == (0, 1, 1, 64)
    assert sd["sam_mask_decoder.upscale_residual_proj.weight"].shape == (32, 32, 1, 1)
    # No object-score token or head.
    assert not any("obj_score" in key for key in sd)


def test_manifests_differ_between_k():
    # Guards the test itself: the K=9 model could not pass against the K=11 manifest.
    m9, m11 = manifest(9), manifest(11)
    assert m9.keys() != m11.keys()
    assert m9[MASK_TOKENS_KEY] != m11[MASK_TOKENS_KEY]


def test_unused_prefixes_cover_only_inference_free_modules():
    # The loader may let these be absent; none of the weights the forward pass needs may match.
    keys = manifest(11)
    unused = {key for key in keys if key.startswith(_UNUSED_PREFIXES)}
    for needed in ("no_mem_embed", MASK_TOKENS_KEY, CLASS_EMBED_KEY, "image_encoder.trunk.pos_embed",
                   "sam_mask_decoder.conv_s0.weight", "sam_prompt_encoder.no_mask_embed.weight"):
        assert needed in keys and needed not in unused
    assert any(key.startswith("memory_attention.") for key in unused)
