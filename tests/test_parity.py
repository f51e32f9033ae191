"""Numerical parity with the reference implementation, on every parity fixture found.

Each NAME.pt is loaded through the real loader with NAME.yaml as config; each case of NAME.npz
must come out within 1e-4 (the reference reproduces itself to 3e-7 across thread counts).
The fixtures that ran are listed in pytest's terminal summary ("parity fixtures ran").
"""

import os

import numpy as np
import pytest
import torch
from parity_fixtures import ENV_VAR, discover

from sam2oct.model.checkpoint import load_model
from sam2oct.model.predictor import SemanticPredictor
from sam2oct.model.preprocessing import IMAGENET_MEAN, IMAGENET_STD, FrameGeometry, model_input

ATOL = 1e-4
FIXTURES, INCOMPLETE = discover()
CASES = [(fx, case) for fx in FIXTURES for case in fx.cases()]


def _sparse_cases():
    """Cases the predictor can express: clicks (labels 0/1) or one box (labels 2, 3), no dense map."""
    out = []
    for fx in FIXTURES:
        with np.load(fx.npz) as z:
            for case in fx.cases():
                if f"{case}/dense" in z.files:
                    continue
                labels = z[f"{case}/point_labels"].tolist() if f"{case}/point_labels" in z.files else []
                if not labels or set(labels) <= {0, 1} or labels == [2, 3]:
                    out.append((fx, case))
    return out


# --- reporting which fixtures ran ---------------------------------------------------------------

class _Report:
    """A plugin registered at run time so the summary names the fixtures, even under -q."""

    def __init__(self):
        self.ran = {}

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_sep("-", "parity fixtures ran")
        for fid, (folder, cases) in self.ran.items():
            terminalreporter.write_line(f"{fid}: {folder} cases: {', '.join(sorted(cases))}")


@pytest.fixture(scope="session")
def report(request):
    plugin = _Report()
    request.config.pluginmanager.register(plugin, "sam2oct-parity-report")
    return plugin


# --- per-fixture state, computed once -----------------------------------------------------------

_STATE = {}


def state(fx, report, case=None):
    if fx.id not in _STATE:
        model = load_model(fx.pt, fx.yaml)
        z = np.load(fx.npz)
        bscan = z["bscan_u8"]
        gray = (bscan / 255.0).astype(np.float32)
        geo = FrameGeometry.for_image(*bscan.shape, size=model.image_size, mode="stretch")
        with torch.inference_mode():
            features = model.encode_image(model_input(gray, geo))
        _STATE[fx.id] = dict(model=model, z=z, gray=gray, geo=geo, features=features)
        print(f"parity fixture {fx.id}: {fx.pt}")
    report.ran.setdefault(fx.id, (fx.folder, set()))
    if case:
        report.ran[fx.id][1].add(case)
    return _STATE[fx.id]


def optional(z, key, convert=torch.from_numpy):
    return convert(z[key])[None] if key in z.files else None


def assert_close(got, want, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    diff = float(np.abs(got - want).max())
    assert diff <= ATOL, f"{what}: max abs difference {diff:.3g} > {ATOL}"


# --- tests ------------------------------------------------------------------------------------------

def test_fixtures_found():
    ids = [fx.id for fx in FIXTURES]
    assert "tiny_k9" in ids, f"bundled fixture missing; found {ids}"
    assert not INCOMPLETE, f"parity fixtures missing one of .pt/.yaml/.npz: {INCOMPLETE}"
    extra = os.environ.get(ENV_VAR, "").strip()
    if extra:
        assert any(fx.folder != FIXTURES[0].folder for fx in FIXTURES), f"{ENV_VAR}={extra} holds no fixture"
    for fx in FIXTURES:
        assert {"auto", "points"} <= set(fx.cases()), f"{fx.id}: cases {fx.cases()}"


@pytest.mark.parametrize("fx", FIXTURES, ids=[fx.id for fx in FIXTURES])
def test_preprocessing(fx, report):
    s = state(fx, report)
    z, model, geo = s["z"], s["model"], s["geo"]
    assert model.num_classes == int(z["num_classes"])
    gray1024 = z["gray1024"]
    assert gray1024.shape == (model.image_size, model.image_size)
    raster = geo.raster_to_model(torch.from_numpy(z["bscan_u8"] / 255.0)[None, None])[0, 0].numpy()
    assert np.abs(raster - gray1024).max() < 1e-6
    # The full model input: grey copied to 3 channels, ImageNet-normalised.
    x = model_input(s["gray"], geo)[0].numpy()
    for c in range(3):
        assert np.abs(x[c] - (gray1024 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]).max() < 1e-5


@pytest.mark.parametrize("fx, case", CASES, ids=[f"{fx.id}-{case}" for fx, case in CASES])
def test_case(fx, case, report):
    s = state(fx, report, case)
    z, model = s["z"], s["model"]
    coords = optional(z, f"{case}/point_coords")
    labels = optional(z, f"{case}/point_labels")
    with torch.inference_mode():
        dense = optional(z, f"{case}/dense")
        dense_logits = None if dense is None else model.sam_prompt_encoder.class_label_logits(dense)
        logits, ious = model.decode(s["features"], coords, labels, dense_logits)
    assert_close(logits[0], z[f"{case}/low_res_logits"], f"{fx.id} {case} low_res_logits")
    assert_close(ious[0], z[f"{case}/ious"], f"{fx.id} {case} ious")


@pytest.mark.parametrize("fx", FIXTURES, ids=[fx.id for fx in FIXTURES])
def test_tolerance_catches_known_mistakes(fx, report):
    # The check above would fail for the mistakes the spec quotes (missing no_mem_embed).
    s = state(fx, report)
    z, model, feats = s["z"], s["model"], s["features"]
    no_mem = model.no_mem_embed.detach().reshape(1, -1, 1, 1)
    wrong = type(feats)(feats.image_embed - no_mem, feats.high_res_feats)
    with torch.inference_mode():
        logits, _ = model.decode(wrong)
    assert np.abs(logits[0].numpy() - z["auto/low_res_logits"]).max() > 100 * ATOL


@pytest.mark.parametrize("fx, case", _sparse_cases(), ids=[f"{fx.id}-{c}" for fx, c in _sparse_cases()])
def test_predictor_end_to_end(fx, case, report):
    """Decoding, preprocessing, normalisation and coordinate maps together, prompts in image pixels."""
    s = state(fx, report, f"predictor:{case}")
    z, model, geo = s["z"], s["model"], s["geo"]
    predictor = SemanticPredictor(model, preprocess="stretch", cache_bytes=0)
    prompts = {}
    if f"{case}/point_coords" in z.files:
        xy = geo.to_image(z[f"{case}/point_coords"])  # 1024 space -> image pixels
        labels = z[f"{case}/point_labels"]
        if labels.tolist() == [2, 3]:
            prompts["box"] = xy.reshape(-1).tolist()
        else:
            prompts.update(points=xy, labels=labels)
    bscan = z["bscan_u8"]
    pred = predictor.predict(bscan / 255.0, **prompts, logits=True)
    assert_close(pred.low_res_logits, z[f"{case}/low_res_logits"], f"{fx.id} predictor {case} logits")
    assert_close(pred.ious, z[f"{case}/ious"], f"{fx.id} predictor {case} ious")
    # Label map: argmax of the reference logits brought to the image size (spec step 6).
    ref = torch.nn.functional.interpolate(torch.from_numpy(z[f"{case}/low_res_logits"])[None],
                                          size=bscan.shape, mode="bilinear", align_corners=False)
    agree = (pred.label_map == ref[0].argmax(0).numpy()).mean()
    assert pred.label_map.shape == bscan.shape and agree > 0.999
