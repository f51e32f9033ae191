"""The command line: `python -m sam2oct segment | convert | download`, with the tiny K=9 fixture.

segment and a failing segment run through the real entry point in a subprocess; the rest calls
sam2oct.cli.main in-process (same parser, no interpreter start-up)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sam2oct.hub
from conftest import ROOT, TINY_CKPT, TINY_CONFIG
from sam2oct import cli
from sam2oct.checkpoint import load_model
from sam2oct.predictor import SemanticPredictor

NR206 = ["background", "NFL", "GCL+IPL", "INL", "OPL", "ONL", "ELM+IS", "OS", "RPE"]
SYNTH = ROOT / "tests" / "data" / "bscan_768x496_s1.png"
SPECTRALIS = ROOT / "tests" / "data" / "spectralis" / "Willis_B_716_0_bscan_u8.png"


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sam2oct", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for src, size in ((SYNTH, (160, 100)), (SPECTRALIS, (128, 82))):
        path = folder / f"{src.stem}_small.png"
        Image.open(src).resize(size, Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def test_segment_writes_json_and_overlay(small_scans, tmp_path):
    image = small_scans[0]
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    proc = run_cli("segment", image, "--checkpoint", TINY_CKPT, "--config", TINY_CONFIG,
                   "--json", out_json, "--overlay", out_png)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out_json.read_text())
    assert (doc["width"], doc["height"]) == (160, 100)
    assert doc["image"] == str(image) and doc["profile"] == "nr206" and doc["classes"] == NR206
    assert set(doc["ious"]) == set(NR206) and all(isinstance(v, float) for v in doc["ious"].values())
    shapes = doc["shapes"]
    assert shapes and all(s["type"] == "polygon" for s in shapes)
    assert {s["label"] for s in shapes} <= set(NR206[1:])
    xy = np.array([p for s in shapes for p in s["points"]])
    assert xy.min() >= 0 and xy[:, 0].max() <= 160 and xy[:, 1].max() <= 100
    assert f"{len(shapes)} polygons" in proc.stderr

    overlay = Image.open(out_png)
    assert overlay.size == (160, 100) and overlay.mode == "RGB"
    rgb = np.asarray(overlay).astype(int)
    grey = np.asarray(Image.open(image).convert("L")).astype(int)
    # tinted layers: colour where the scan is grey; the scan still shows through
    assert (np.ptp(rgb, axis=2) > 20).mean() > 0.5
    assert np.corrcoef(rgb.mean(axis=2).ravel(), grey.ravel())[0, 1] > 0.5


def test_segment_bad_checkpoint_exits_2_with_a_message(small_scans, tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    proc = run_cli("segment", small_scans[0], "--checkpoint", missing, "--config", TINY_CONFIG)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and str(missing) in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_segment_several_images_to_stdout_and_a_folder(small_scans, tmp_path, capsys):
    folder = tmp_path / "overlays"
    code = cli.main(["segment", *map(str, small_scans), "--checkpoint", str(TINY_CKPT),
                     "--config", str(TINY_CONFIG), "--overlay", str(folder), "--simplify", "0"])
    assert code == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["image"] for d in docs] == [str(p) for p in small_scans]
    assert [(d["width"], d["height"]) for d in docs] == [(160, 100), (128, 82)]
    for path, doc in zip(small_scans, docs):
        overlay = Image.open(folder / f"{path.stem}.png")
        assert overlay.size == (doc["width"], doc["height"])
        # --simplify 0: every vertex on a pixel corner
        xy = np.array([p for s in doc["shapes"] for p in s["points"]])
        assert np.array_equal(xy, np.round(xy))


def test_segment_class_names_and_profile_options(small_scans, tmp_path, capsys):
    names = "bg,a,b,c,d,e,f,g,h"
    assert cli.main(["segment", str(small_scans[1]), "--checkpoint", str(TINY_CKPT), "--config",
                     str(TINY_CONFIG), "--class-names", names, "--json", str(tmp_path / "o.json")]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["classes"] == names.split(",")
    assert {s["label"] for s in doc["shapes"]} <= set("abcdefgh")
    # a profile that contradicts the checkpoint: exit 2, said plainly
    code = cli.main(["segment", str(small_scans[1]), "--checkpoint", str(TINY_CKPT), "--config",
                     str(TINY_CONFIG), "--profile", "mgu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "mgu" in err and "9 classes" in err


def test_segment_refuses_a_file_that_is_no_image(tmp_path, capsys):
    junk = tmp_path / "scan.png"
    junk.write_bytes(b"not a png")
    code = cli.main(["segment", str(junk), "--checkpoint", str(TINY_CKPT), "--config", str(TINY_CONFIG)])
    assert code == 2 and "not a decodable image" in capsys.readouterr().err


def test_convert_writes_a_slim_copy_that_loads_the_same(tmp_path, capsys):
    # a training checkpoint as trainers write it: weights plus Adam moments and bookkeeping
    original = torch.load(TINY_CKPT, weights_only=True)
    weights = original["model_state"]
    params = [t for t in weights.values() if t.is_floating_point()]
    optimizer = {"state": {i: {"step": torch.tensor(7.0), "exp_avg": torch.randn_like(t),
                               "exp_avg_sq": torch.rand_like(t)} for i, t in enumerate(params)},
                 "param_groups": [{"lr": 1e-4, "params": list(range(len(params)))}]}
    training = tmp_path / "training.pt"
    torch.save({"epoch": 41, "model_state": weights, "optimizer_state": optimizer, "best_metric": 0.5}, training)

    out = tmp_path / "slim" / "tiny_slim.pt"
    code = cli.main(["convert", str(training), str(out), "--config", str(TINY_CONFIG)])
    assert code == 0
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "K=9" in said
    assert out.stat().st_size < 0.5 * training.stat().st_size
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"model_state"}  # no optimizer state, no epoch
    assert set(saved["model_state"]) == set(weights)
    assert all(torch.equal(saved["model_state"][k], weights[k]) for k in weights)

    gray = np.asarray(Image.open(SYNTH).resize((96, 62)), dtype=np.float32) / 255
    a = SemanticPredictor(load_model(TINY_CKPT, TINY_CONFIG)).predict(gray)
    b = SemanticPredictor(load_model(out, TINY_CONFIG)).predict(gray)
    assert torch.equal(a.low_res_logits, b.low_res_logits) and np.array_equal(a.label_map, b.label_map)


def test_convert_refuses_a_bad_source(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"model_state": {"just.one": torch.zeros(2)}}, bad)
    code = cli.main(["convert", str(bad), str(tmp_path / "out.pt"), "--config", str(TINY_CONFIG)])
    assert code == 2 and str(bad) in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_download_arguments_reach_the_hub_module(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_download(profile, models_dir, revision=None):
        calls.append((profile, models_dir, revision))
        return Path(models_dir) / profile / "weights.pt"

    monkeypatch.setattr(sam2oct.hub, "download", fake_download)
    assert cli.main(["download", "nr206", "--models-dir", str(tmp_path)]) == 0
    assert cli.main(["download", "mgu_prompted", "--revision", "abc123"]) == 0
    assert calls == [("nr206", str(tmp_path), None), ("mgu_prompted", "models", "abc123")]
    out = capsys.readouterr().out
    assert f"export SAM2_CHECKPOINT={(tmp_path / 'nr206' / 'weights.pt').resolve()}" in out


@pytest.mark.parametrize("argv, words", [
    (["download", "nr207"], ["invalid choice", "nr207"]),
    (["download"], ["profile"]),
    (["segment", "scan.png"], ["--checkpoint"]),
    (["segment", "--checkpoint", "x.pt"], ["IMAGE"]),
    (["segment", "scan.png", "--checkpoint", "x.pt", "--preprocess", "sharpen"], ["invalid choice"]),
    (["convert", "in.pt"], ["dst"]),
    (["frobnicate"], ["invalid choice"]),
    ([], ["command"]),
])
def test_bad_arguments_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m sam2oct")
    for word in words:
        assert word in err
