"""The command line: `python -m sam2oct segment | convert | download`, with the tiny K=9 fixture.

segment and a failing segment run through the real entry point in a subprocess; the rest calls
sam2oct.cli.main in-process (same parser, no interpreter start-up). Every user error must end in
one line `error: ...`, exit status 2, found before the model loads (`no_model` fails the test if
it is loaded), in the command line's names (never a Nuclio environment variable's)."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sam2oct.model.checkpoint
import sam2oct.model.hub
import sam2oct.pipeline.pipeline
from conftest import ROOT, TINY, TINY_CKPT, TINY_CONFIG
from sam2oct import cli
from sam2oct.cli import flags
from sam2oct.model.checkpoint import build_model, load_model
from sam2oct.errors import CheckpointError
from sam2oct.model.discovery import find_checkpoint
from sam2oct.model.hub import stored_key
from sam2oct.pipeline.options import OPTION_HELP, PipelineOptions
from sam2oct.geometry.polygons import label_map_to_shapes
from sam2oct.model.predictor import SemanticPredictor

NR206 = ["background", "NFL", "GCL+IPL", "INL", "OPL", "ONL", "ELM+IS", "OS", "RPE"]
SYNTH = ROOT / "tests" / "data" / "bscan_768x496_s1.png"
SPECTRALIS = ROOT / "tests" / "data" / "spectralis" / "Willis_B_716_0_bscan_u8.png"


def run_cli(*args, **env):
    env = {**{k: v for k, v in os.environ.items() if k != "SAM2_CHECKPOINT"}, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "sam2oct", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(autouse=True)
def no_checkpoint_in_env(monkeypatch):
    monkeypatch.delenv("SAM2_CHECKPOINT", raising=False)


@pytest.fixture(scope="module")
def small_scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for src, size in ((SYNTH, (160, 100)), (SPECTRALIS, (128, 82))):
        path = folder / f"{src.stem}_small.png"
        Image.open(src).resize(size, Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def one_line_error(capsys, argv, *words, env_names_ok=False) -> str:
    """main(argv) must exit 2 with one line `error: ...` holding every word, and nothing on stdout."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for word in words:
        assert str(word) in err, err
    assert "Traceback" not in err and out == ""
    if not env_names_ok:
        assert "SAM2OCT_" not in err and "SAM2_" not in err, err
    return err


# --- segment: results ---------------------------------------------------------------------------

def test_segment_writes_json_and_overlay(small_scans, tmp_path):
    image = small_scans[0]
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    proc = run_cli("segment", image, *TINY, "--json", out_json, "--overlay", out_png)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out_json.read_text())
    assert list(doc) == ["image", "width", "height", "profile", "classes", "ious", "shapes"]
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


def test_segment_shapes_follow_the_pipeline_defaults(small_scans, capsys):
    """No --simplify/--min-area: the polygons are those of PipelineOptions' defaults (one place)."""
    image = small_scans[1]
    # torch, as the reference below (precision auto may run bf16 through OpenVINO on this CPU)
    assert cli.main(["segment", str(image), *TINY, "--runtime", "torch"]) == 0
    doc = json.loads(capsys.readouterr().out)
    gray = np.asarray(Image.open(image).convert("L"), dtype=np.float32) / 255
    label_map = SemanticPredictor(load_model(TINY_CKPT, TINY_CONFIG)).predict(gray).label_map
    defaults = PipelineOptions()
    expected = label_map_to_shapes(label_map, NR206, tolerance=defaults.simplify, min_area=defaults.min_area)
    assert doc["shapes"] == json.loads(json.dumps(expected))
    exact = label_map_to_shapes(label_map, NR206, tolerance=0, min_area=0)
    assert cli.main(["segment", str(image), *TINY, "--runtime", "torch", "--simplify", "0", "--min-area", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["shapes"] == json.loads(json.dumps(exact))


def test_segment_several_images_to_stdout_and_a_folder(small_scans, tmp_path, capsys):
    folder = tmp_path / "overlays"
    code = cli.main(["segment", *map(str, small_scans), *TINY, "--overlay", str(folder), "--simplify", "0"])
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


def test_one_image_overlay_into_an_existing_folder(small_scans, tmp_path, capsys):
    assert cli.main(["segment", str(small_scans[0]), *TINY, "--overlay", str(tmp_path)]) == 0
    assert Image.open(tmp_path / f"{small_scans[0].stem}.png").size == (160, 100)


def test_segment_class_names_label_style_and_threads(small_scans, tmp_path, capsys):
    names = "bg,a,b,c,d,e,f,g,h"
    assert cli.main(["segment", str(small_scans[1]), *TINY, "--class-names", names,
                     "--json", str(tmp_path / "o.json")]) == 0
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["classes"] == names.split(",")
    assert {s["label"] for s in doc["shapes"]} <= set("abcdefgh")

    threads = torch.get_num_threads()
    try:
        assert cli.main(["segment", str(small_scans[1]), *TINY, "--label-style", "index", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(capsys.readouterr().out)
    assert doc["classes"] == [f"OCT_Object_{k}" for k in range(9)]
    assert {s["label"] for s in doc["shapes"]} <= set(doc["classes"][1:]) and doc["shapes"]


def test_pipeline_warnings_name_the_flag(small_scans, tmp_path, capsys):
    # an 11-class checkpoint without --profile runs as mgu, and says how to make it mgu_prompted
    torch.manual_seed(0)
    k11 = tmp_path / "k11.pt"
    torch.save({"model_state": build_model(11, TINY_CONFIG).state_dict()}, k11)
    assert cli.main(["segment", str(small_scans[1]), "--checkpoint", str(k11), "--config", str(TINY_CONFIG)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["profile"] == "mgu"
    warning = next(line for line in err.splitlines() if line.startswith("warning: "))
    assert warning.startswith("warning: --profile: ") and "mgu_prompted" in warning and "SAM2OCT_" not in warning


# --- segment: every user error in one line, before the model loads --------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--device", "cuda"], ["--device: ", "CUDA is not available"]),
    (["--device", "cuda:3"], ["--device: ", "CUDA is not available"]),
    (["--device", "tpu"], ["--device: ", "'tpu'"]),
    (["--simplify", "-1"], ["--simplify: ", "-1", "outside"]),
    (["--simplify", "nan"], ["--simplify: ", "outside"]),
    (["--min-area", "-5"], ["--min-area: ", "outside"]),
    (["--max-pixels", "0"], ["--max-pixels: ", "outside"]),
    (["--threads", "-2"], ["--threads: ", "outside"]),
    (["--profile", "mgu"], ["--profile: ", "9 classes", "11"]),
    (["--profile", "mgu_prompted"], ["--profile: ", "mgu_prompted", "9 classes"]),
    (["--class-names", "a,,b"], ["--class-names: ", "empty"]),
    (["--class-names", "a,b,a,c,d,e,f,g,h"], ["--class-names: ", "repeats"]),
    (["--class-names", "a,b,c"], ["--class-names: ", "3 ", "names", "9 classes"]),
    (["--config", "{tmp}/missing.yaml"], ["--config: ", "{tmp}/missing.yaml", "not found"]),
    (["--checkpoint", "{tmp}/nowhere.pt"], ["--checkpoint: ", "{tmp}/nowhere.pt", "not found",
                                            "python -m sam2oct download"]),
    (["--checkpoint", "{tmp}/garbage.pt"], ["--checkpoint: ", "{tmp}/garbage.pt", "python -m sam2oct download"]),
    (["--json", "{tmp}/afile/out.json"], ["--json: ", "{tmp}/afile is a file"]),
    (["--json", "{tmp}"], ["--json: ", "is a folder"]),
    (["--overlay", "{tmp}/out.xyz"], ["--overlay: ", "'.xyz'", ".png"]),
    (["--overlay", "{tmp}/afile/sub/out.png"], ["--overlay: ", "{tmp}/afile is a file"]),
])
def test_bad_flags_fail_early_in_one_line(flags, words, small_scans, tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU host
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    (tmp_path / "afile").write_text("a file, not a folder")
    flags = [f.format(tmp=tmp_path) for f in flags]
    one_line_error(capsys, ["segment", small_scans[0], *TINY, *flags], *(w.format(tmp=tmp_path) for w in words))
    assert not (tmp_path / "out.json").exists()


def test_every_image_is_checked_before_the_model_loads(small_scans, tmp_path, capsys, no_model):
    good = small_scans[0]
    missing = tmp_path / "scan_missing.png"
    junk = tmp_path / "scan_junk.png"
    junk.write_bytes(b"not a png")
    one_line_error(capsys, ["segment", good, missing, *TINY], missing, "no such file")
    # an undecodable image names the file
    one_line_error(capsys, ["segment", good, junk, *TINY], junk, "not a decodable image")
    one_line_error(capsys, ["segment", tmp_path, *TINY], tmp_path, "folder")
    err = one_line_error(capsys, ["segment", junk, good, missing, tmp_path, *TINY], "3 of 4 images", junk, missing)
    assert str(good) not in err
    # too many pixels: the flag that allows more is named (images.py's own wording may change)
    one_line_error(capsys, ["segment", good, *TINY, "--max-pixels", "100"], "--max-pixels: ", good, "16000",
                   env_names_ok=True)


def test_overlay_destinations_for_several_images(small_scans, tmp_path, capsys, no_model):
    afile = tmp_path / "overlay.png"
    afile.write_bytes(b"")
    one_line_error(capsys, ["segment", *small_scans, *TINY, "--overlay", afile], "--overlay: ", "is a file",
                   "folder")
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(small_scans[0], twin / small_scans[1].name)
    one_line_error(capsys, ["segment", small_scans[1], twin / small_scans[1].name, *TINY, "--overlay", tmp_path / "o"],
                   "--overlay: ", repr(small_scans[1].stem), "overwrite")


def test_a_user_error_is_one_line_through_the_entry_point(small_scans, tmp_path):
    proc = run_cli("segment", small_scans[0], tmp_path / "nowhere.png", *TINY)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {tmp_path / 'nowhere.png'}: no such file\n"


# --- segment: the checkpoint when none is named ----------------------------------------------------

def store(models: Path, profile: str, source=TINY_CKPT) -> Path:
    path = models / stored_key(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    return path


def test_stored_checkpoint_lookup(tmp_path):
    models = tmp_path / "models"
    with pytest.raises(CheckpointError) as none:
        find_checkpoint(models_dir=models)
    assert none.value.option == "checkpoint"
    assert f"python -m sam2oct download nr206 --models-dir {models}" in str(none.value)

    def found(profile=None):
        f = find_checkpoint(profile=profile, models_dir=models)
        return Path(f.path), f.profile

    nr206 = store(models, "nr206")
    assert found() == (nr206, "nr206")
    assert found("nr206") == (nr206, "nr206")
    with pytest.raises(CheckpointError) as other:
        found("mgu")  # only another profile's is there: fetch this one
    assert f"python -m sam2oct download mgu --models-dir {models}" in str(other.value) and str(nr206) in str(other.value)

    mgu = store(models, "mgu")
    with pytest.raises(CheckpointError) as several:
        found()
    assert several.value.option == "profile"  # the front door names its profile setting
    assert str(nr206) in str(several.value) and str(mgu) in str(several.value)
    assert found("mgu") == (mgu, "mgu")
    nr206.unlink()  # recorded once, gone now: not offered
    assert found() == (mgu, "mgu")


def test_segment_finds_the_downloaded_checkpoint(small_scans, tmp_path, capsys):
    models = tmp_path / "models"
    path = store(models, "nr206")
    argv = ["segment", str(small_scans[1]), "--config", str(TINY_CONFIG), "--models-dir", str(models)]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["profile"] == "nr206" and f"using checkpoint {path}" in err

    store(models, "mgu_prompted")  # two now: --profile chooses
    assert cli.main(argv + ["--profile", "nr206"]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "nr206"


def test_segment_takes_the_checkpoint_from_the_environment(small_scans, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAM2_CHECKPOINT", str(TINY_CKPT))
    assert cli.main(["segment", str(small_scans[1]), "--config", str(TINY_CONFIG),
                     "--models-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "nr206"
    # a bad one is named by where it came from
    monkeypatch.setenv("SAM2_CHECKPOINT", str(tmp_path / "gone.pt"))
    code = cli.main(["segment", str(small_scans[1]), "--config", str(TINY_CONFIG)])
    err = capsys.readouterr().err.splitlines()[-1]
    assert code == 2 and err.startswith("error: SAM2_CHECKPOINT: ") and "gone.pt" in err


def test_segment_without_any_checkpoint_says_the_download_command(small_scans, tmp_path, capsys, no_model):
    one_line_error(capsys, ["segment", small_scans[0], "--models-dir", tmp_path / "models"],
                   "--checkpoint: ", f"python -m sam2oct download nr206 --models-dir {tmp_path / 'models'}")
    one_line_error(capsys, ["segment", small_scans[0], "--models-dir", tmp_path / "models", "--profile", "mgu"],
                   f"python -m sam2oct download mgu --models-dir {tmp_path / 'models'}")
    store(tmp_path / "models", "nr206")
    store(tmp_path / "models", "mgu")
    one_line_error(capsys, ["segment", small_scans[0], "--models-dir", tmp_path / "models"],
                   "--profile: ", "nr206", "mgu", "choose one")


# --- flags: one source of defaults and help ------------------------------------------------------

def test_flags_take_default_and_help_from_the_pipeline():
    parser = cli.build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]
    actions = {a.dest: a for a in segment._actions}
    defaults = {f.name: f.default for f in fields(PipelineOptions)}
    for option in flags.SEGMENT_OPTIONS:
        action = actions[option]
        assert action.option_strings == [flags.OPTION_FLAGS[option]]
        assert action.default == defaults[option], option
        assert action.help.startswith(OPTION_HELP[option]), option
    assert set(flags.OPTION_FLAGS) <= set(PipelineOptions.names())
    assert segment.parse_args(["x.png"]).min_area == PipelineOptions().min_area


def test_options_from_args_is_reusable(monkeypatch, tmp_path):
    """What other subcommands build on: the model flags and their checked options."""
    import argparse

    parser = argparse.ArgumentParser()
    flags.add_option_flags(parser, flags.MODEL_OPTIONS, preprocess={"choices": ["stretch", "pad-equalize", "both"]})
    args = parser.parse_args(["--checkpoint", "m.pt", "--profile", "NR206", "--preprocess", "both"])
    options = flags.options_from_args(args, preprocess="")
    assert (options.checkpoint, options.profile, options.preprocess, options.device) == ("m.pt", "nr206", "", "auto")
    args = parser.parse_args(["--models-dir", str(tmp_path)])
    store(tmp_path, "mgu_prompted")
    options = flags.options_from_args(args)  # the stored checkpoint brings its profile
    assert (options.checkpoint, options.profile) == (str(tmp_path / stored_key("mgu_prompted")), "mgu_prompted")


# --- download, convert, usage ------------------------------------------------------------------

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
    a = SemanticPredictor(load_model(TINY_CKPT, TINY_CONFIG)).predict(gray, logits=True)
    b = SemanticPredictor(load_model(out, TINY_CONFIG)).predict(gray, logits=True)
    assert torch.equal(a.low_res_logits, b.low_res_logits) and np.array_equal(a.label_map, b.label_map)


def test_convert_refuses_a_bad_source(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"model_state": {"just.one": torch.zeros(2)}}, bad)
    one_line_error(capsys, ["convert", bad, tmp_path / "out.pt", "--config", TINY_CONFIG], bad)
    assert not (tmp_path / "out.pt").exists()
    one_line_error(capsys, ["convert", TINY_CKPT, tmp_path / "out.pt", "--config", tmp_path / "no.yaml"],
                   "--config: ", "not found")


def test_download_arguments_reach_the_hub_module(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_download(profile, models_dir, revision=None):
        calls.append((profile, models_dir, revision))
        return Path(models_dir) / profile / "weights.pt"

    monkeypatch.setattr(sam2oct.model.hub, "download", fake_download)
    assert cli.main(["download", "nr206", "--models-dir", str(tmp_path)]) == 0
    assert cli.main(["download", "mgu_prompted", "--revision", "abc123"]) == 0
    assert calls == [("nr206", str(tmp_path), None), ("mgu_prompted", "models", "abc123")]
    out = capsys.readouterr().out
    assert f"export SAM2_CHECKPOINT={(tmp_path / 'nr206' / 'weights.pt').resolve()}" in out
    assert "python -m sam2oct segment IMAGE" in out


@pytest.mark.parametrize("argv, words", [
    (["download", "nr207"], ["invalid choice", "nr207"]),
    (["download"], ["profile"]),
    (["segment", "--checkpoint", "x.pt"], ["IMAGE"]),
    (["segment", "scan.png", "--checkpoint", "x.pt", "--preprocess", "sharpen"], ["--preprocess: invalid choice"]),
    (["segment", "scan.png", "--min-area", "2.5"], ["--min-area: ", "2.5"]),
    (["segment", "scan.png", "--profile", "nr207"], ["--profile: ", "nr207"]),
    (["convert", "in.pt"], ["dst"]),
    (["frobnicate"], ["invalid choice"]),
    ([], ["command"]),
])
def test_bad_arguments_exit_2_in_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--help" in err, err
    for word in words:
        assert word in err


# --- every command checks every output path before the model loads (issue 15, defect 3) ----------

EXPORT = ROOT / "tests" / "data" / "cvat-export" / "synthetic_cvat_for_images_1.1.zip"


@pytest.mark.parametrize("command", [
    ["evaluate", EXPORT, *TINY, "--json", "{tmp}/afile/report.json"],
    ["finetune", EXPORT, *TINY, "--out", "{tmp}/afile/out.pt"],
    ["finetune", EXPORT, *TINY, "--out", "{tmp}/out.pt", "--report", "{tmp}/afile/r.json"],
    ["convert", TINY_CKPT, "{tmp}/afile/out.pt", "--config", TINY_CONFIG],
    ["download", "nr206", "--models-dir", "{tmp}/afile/models"],
])
def test_every_output_path_is_checked_before_the_model_loads(command, tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.setattr(sam2oct.model.hub, "read_state_dict", lambda *a: pytest.fail("the checkpoint was read"))
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", lambda *a, **k: pytest.fail("the hub was asked"))
    (tmp_path / "afile").write_text("a file, not a folder")
    argv = [str(a).format(tmp=tmp_path) for a in command]
    one_line_error(capsys, argv, f"{tmp_path / 'afile'} is a file")


def test_evaluate_json_into_a_missing_folder_is_written(tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "report.json"
    assert cli.main(["evaluate", str(EXPORT), *TINY, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["images"] == 3
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]  # no partial file left behind


# --- download with the hub unreachable: one line and the way on (issue 15, defect 8) ---------------

def _transport_module():
    """The HTTP library huggingface_hub raises from (httpx, or its renamed fork), found through it."""
    import importlib

    from huggingface_hub.errors import HTTPError

    return importlib.import_module(HTTPError.__module__.split(".")[0])


def _hub_failures():
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    http = _transport_module()
    request = http.Request("GET", "https://huggingface.co/api/models/enslinr/sam2-oct/revision/main")
    return {
        "refused": (http.ConnectError("[Errno 111] Connection refused", request=request), "could not be reached"),
        "dns": (http.ConnectError("[Errno -3] Temporary failure in name resolution", request=request),
                "could not be reached"),
        "timeout": (http.ReadTimeout("timed out", request=request), "could not be reached"),
        "offline": (OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/models: offline mode is enabled."),
                    "HF_HUB_OFFLINE"),
        "after retries": (LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub"),
                          "could not be reached"),
        "503": (HfHubHTTPError("503 Server Error: Service Unavailable",
                               response=http.Response(503, request=request)), "HTTP 503"),
    }


@pytest.mark.parametrize("case", ["refused", "dns", "timeout", "offline", "after retries", "503"])
@pytest.mark.parametrize("where", ["model_info", "hf_hub_download"])
def test_download_with_the_hub_unreachable_is_one_line_with_the_way_on(case, where, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    exc, words = _hub_failures()[case]

    class Hub:  # answers until `where`, which raises what huggingface_hub raises there
        def model_info(self, repo, revision=None):
            if where == "model_info":
                raise exc
            return type("Info", (), {"sha": "a" * 40})()

        def get_paths_info(self, repo, paths, revision=None, expand=False):
            return [type("Path", (), {"lfs": type("Lfs", (), {"sha256": "b" * 64})()})()]

    def hf_hub_download(*a, **k):
        raise exc

    monkeypatch.setattr(huggingface_hub, "HfApi", Hub)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    err = one_line_error(capsys, ["download", "nr206", "--models-dir", tmp_path / "models"], words,
                         env_names_ok=True)
    if case != "503":  # the hub answered: no offline advice, it is not a network problem
        assert "--checkpoint" in err and "SAM2_CHECKPOINT" in err and "HF_ENDPOINT" in err, err
        assert "final_runs_NR206_last.pt" in err
    assert not list((tmp_path / "models").rglob("*.pt")) and not (tmp_path / "models" / "checksums.json").exists()


def test_download_from_an_unreachable_endpoint_through_the_entry_point(tmp_path):
    proc = run_cli("download", "nr206", "--models-dir", tmp_path / "models", HF_ENDPOINT="http://127.0.0.1:9",
                   HF_HUB_OFFLINE="0")
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.startswith("error: the Hugging Face hub (http://127.0.0.1:9) could not be reached (")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--checkpoint" in proc.stderr and "HF_ENDPOINT" in proc.stderr


# --- evaluate and finetune warn about 16-bit frames cut to 8 bits (issue 19, trip 2) -----------------

def test_evaluate_and_finetune_warn_about_an_export_cut_to_8_bits(tmp_path, capsys, monkeypatch):
    import sam2oct.cli.evaluate
    from test_datasets import _sixteen_bit, _smask_zip

    cut = ((_sixteen_bit() >> 4) % 256).astype(np.uint8)
    export = _smask_zip(tmp_path / "cut.zip", {"v_000": cut, "v_001": cut})
    names = ["--class-names", "background,A,B,Fluid,d,e,f,g,h"]
    monkeypatch.setattr(sam2oct.cli.evaluate, "_label_map_predictors",
                        lambda options, modes, **kw: {m: (lambda grays: [np.zeros(g.shape, np.uint8) for g in grays])
                                                      for m in modes})
    assert cli.main(["evaluate", str(export), *TINY, *names]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "2 of 2 images" in warnings[0] and "CVAT for images 1.1" in warnings[0]
    # finetune reads the data the same way (here it then stops: one volume cannot be split)
    code = cli.main(["finetune", str(export), *TINY, *names, "--out", str(tmp_path / "o.pt"), "--val-fraction", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and [line for line in err.splitlines() if line.startswith("warning: ")] == warnings
