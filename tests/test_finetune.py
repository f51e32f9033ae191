"""Fine-tuning: augmentations, synthetic B-scans, losses, the training loop, the atomic output, the
`finetune` command end to end (serving the result through the Nuclio handler and `segment`), and
the done-when: real Spectralis B-scans in a CVAT export raise held-out layer mIoU.

The tiny K=9 fixture runs at image_size 256 (a copy of its config), where a step takes well under
a second on one CPU core.
"""

import gc
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, ROOT, TINY_CKPT, TINY_CONFIG
from PIL import Image

from sam2oct import cli
from sam2oct.training.augment import AugmentOptions, augment
from sam2oct.model.checkpoint import load_model, read_state_dict, sha256_of
from sam2oct.data.datasets import load_dataset
from sam2oct.data.samples import Sample
from sam2oct.evaluation.evaluate import score
from sam2oct.training.finetune import FinetuneOptions, prepare_model, save_checkpoint, train
from sam2oct.training.losses import argmax_iou, total_loss
from sam2oct.model.profiles import NR206_CLASSES
from sam2oct.data.synthetic import SCANNER_A, SCANNER_B, synthetic_bscan, synthetic_set

SPECTRALIS_ZIP = DATA / "spectralis" / "spectralis_layers_cvat_for_images_1.1.zip"
SPECTRALIS_CLASSES = ("background", "NFL", "GCL-BM", "below-BM", "OPL", "ONL", "ELM+IS", "OS", "RPE")
# The tiny fixture's weights are random: it learns from scratch, which needs the card-like
# learning rates of full training rather than the fine-tuning defaults.
FROM_SCRATCH = {"mode": "full", "lr_encoder": 3e-3, "lr_decoder": 1e-2}


@pytest.fixture(scope="module")
def config256(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny_k9_256.yaml"
    path.write_text(TINY_CONFIG.read_text().replace("image_size: 1024", "image_size: 256"))
    return path


def samples(n, scanner, seed, prefix="vol"):
    return [Sample(f"{prefix}{i // 4}_{i:03d}.png", g, lab, f"{prefix}{i // 4}")
            for i, (g, lab) in enumerate(synthetic_set(n, 96, 128, scanner, seed))]


def tiny(config):
    return load_model(TINY_CKPT, config)


# --- augmentations ---------------------------------------------------------------------------

GEOMETRY_ONLY = AugmentOptions(gamma=(1, 1), contrast=(1, 1), brightness=0, p_speckle=0, p_blur=0)


@pytest.mark.parametrize("seed", range(6))
def test_augment_moves_labels_with_the_image_and_never_flips_vertically(seed):
    gray, labels = synthetic_bscan(120, 160, SCANNER_A, np.random.default_rng(seed))
    # An image whose grey value encodes the label: any mismatch of the two moves shows.
    coded = (labels.astype(np.float32) + 0.5) / 10
    g, lab = augment(coded, labels, np.random.default_rng(seed), AugmentOptions(p_flip=1.0, **{
        k: v for k, v in GEOMETRY_ONLY.__dict__.items() if k != "p_flip"}))
    assert g.shape == lab.shape == labels.shape and lab.dtype == labels.dtype
    agree = np.mean(np.floor(g * 10).astype(int) == lab)
    assert agree > 0.97, agree  # only pixels at layer edges (bilinear vs nearest) may differ
    # The horizontal flip really happened, and the layers still run in order top to bottom.
    assert not np.array_equal(lab, labels)
    for col in lab.T:
        inside = col[col > 0]
        assert np.all(np.diff(inside.astype(int)) >= 0), "layer order broken (vertical flip?)"


def test_augment_intensity_stays_in_range_and_varies():
    gray, labels = synthetic_bscan(96, 128, SCANNER_A, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    outs = [augment(gray, labels, rng) for _ in range(5)]
    for g, lab in outs:
        assert g.dtype == np.float32 and 0 <= g.min() and g.max() <= 1
        assert set(np.unique(lab)) <= set(np.unique(labels))
    assert len({round(float(g.mean()), 4) for g, _ in outs}) > 1


# --- synthetic B-scans ------------------------------------------------------------------------

def test_synthetic_labels_are_anatomical_and_scanners_differ():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    ga, la = synthetic_bscan(160, 200, SCANNER_A, rng_a)
    gb, lb = synthetic_bscan(160, 200, SCANNER_B, rng_b)
    assert np.array_equal(la, lb)  # same seed, same anatomy: only the imaging differs
    assert ga.dtype == np.float32 and 0 <= ga.min() and ga.max() <= 1
    for col in la.T:  # background, then classes 1..8 in order (some may be absent), then background
        inside = np.flatnonzero(col)
        assert len(inside) and np.all(np.diff(inside) == 1), "the retina is one run per A-scan"
        assert np.all(np.diff(col[inside].astype(int)) >= 0)
    assert set(np.unique(la)) == set(range(len(NR206_CLASSES)))
    # Scanner B: stronger speckle (rougher vitreous), brighter floor, less contrast between layers.
    vitreous = la == 0
    assert gb[vitreous].mean() > ga[vitreous].mean()
    means_a = [ga[la == k].mean() for k in range(1, 9)]
    means_b = [gb[lb == k].mean() for k in range(1, 9)]
    assert np.ptp(means_b) < np.ptp(means_a)


# --- losses -------------------------------------------------------------------------------------

def test_losses_vanish_for_a_perfect_prediction_and_not_otherwise():
    labels = torch.from_numpy(synthetic_bscan(32, 32, SCANNER_A, np.random.default_rng(0))[1]).long()
    target = torch.nn.functional.one_hot(labels, 9).permute(2, 0, 1).float()[None]
    valid = torch.ones(1, 1, 32, 32)
    present = target.sum((2, 3)) > 0
    perfect = target * 40 - 20
    ious = torch.ones(1, 9)
    loss, parts = total_loss(perfect, ious, target, valid)
    assert all(v < 1e-3 for v in parts.values()), parts
    assert torch.equal(argmax_iou(perfect, target, valid), torch.ones(1, 9))
    shifted = torch.roll(perfect, 3, dims=2)  # layers predicted 3 rows too low
    worse, parts2 = total_loss(shifted, ious, target, valid)
    assert worse > loss + 1 and parts2["dice"] > 0.05
    real_iou = argmax_iou(shifted, target, valid)
    assert torch.all(real_iou[present] < 1) and torch.all(real_iou[~present] == 1)
    assert parts2["iou_head"] == pytest.approx(float(((1 - real_iou) ** 2).mean()), rel=1e-5)


# --- the training loop --------------------------------------------------------------------------

def test_steps_are_exact_and_frozen_weights_stay(config256):
    model = tiny(config256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    stats = train(model, samples(4, SCANNER_A, 1), FinetuneOptions(steps=5, batch=2, rank=2),
                  callback=lambda step, loss, parts: seen.append(step))
    assert seen == [1, 2, 3, 4, 5] and stats["steps"] == 5
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # LoRA mode: only adapted attention weights (folded) and the class heads may change.
    assert changed, "nothing was trained"
    allowed = ("image_encoder.trunk.blocks.", "sam_mask_decoder.transformer.", "sam_mask_decoder.mask_tokens.",
               "sam_mask_decoder.output_hypernetworks_mlps.", "sam_mask_decoder.iou_token.",
               "sam_mask_decoder.iou_prediction_head.")
    assert all(k.startswith(allowed) for k in changed), sorted(changed)[:5]
    assert not any(k.endswith("bias") and ".attn." in k for k in changed)  # adapters fold into weights only
    assert any(k.startswith("image_encoder.") for k in changed) and any("mask_tokens" in k for k in changed)


@pytest.mark.parametrize("mode", ["decoder", "full"])
def test_modes_train_what_they_say(config256, mode):
    model = tiny(config256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, samples(4, SCANNER_A, 1), FinetuneOptions(mode=mode, steps=3, views=2, prompted=True))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("sam_mask_decoder.transformer.") for k in changed)
    assert not any(k.startswith(("sam_prompt_encoder.", "memory_", "obj_ptr")) for k in changed)  # prompted: frozen
    encoder_side = {k for k in changed if k.startswith(("image_encoder.", "sam_mask_decoder.conv_s"))}
    assert bool(encoder_side) == (mode == "full")


def test_same_seed_same_weights_other_seed_not(config256):
    data = samples(4, SCANNER_A, 2)
    runs = []
    for seed in (7, 7, 8):
        model = tiny(config256)
        train(model, data, FinetuneOptions(steps=3, batch=2, rank=2, seed=seed))
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_prepare_model_freezes_prompt_encoder_for_prompted_profiles(config256):
    groups = prepare_model(tiny(config256), FinetuneOptions(mode="full", prompted=False))
    n_free = sum(p.numel() for ps in groups.values() for p in ps)
    groups = prepare_model(tiny(config256), FinetuneOptions(mode="full", prompted=True))
    assert sum(p.numel() for ps in groups.values() for p in ps) < n_free


# --- the output file ----------------------------------------------------------------------------

def test_saved_checkpoint_has_the_base_keys_and_loads_strictly(config256, tmp_path):
    base_sd = read_state_dict(TINY_CKPT)
    model = tiny(config256)
    train(model, samples(2, SCANNER_A, 3), FinetuneOptions(steps=2, batch=1, rank=2))
    out = save_checkpoint(model, base_sd, tmp_path / "out.pt", {"mode": "lora"})
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["model_state"].keys() == base_sd.keys()
    assert all(saved["model_state"][k].shape == v.shape and saved["model_state"][k].dtype == v.dtype
               for k, v in base_sd.items())
    loaded = load_model(out, config256)
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in base_sd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]  # no temporary file left


def test_interrupt_leaves_no_output(config256, tmp_path):
    out = tmp_path / "out.pt"
    out_dir = tmp_path / "data"
    write_plain_dataset(out_dir, samples(4, SCANNER_A, 4))

    def stop(step, loss, parts):
        if step == 2:
            raise KeyboardInterrupt

    from sam2oct.training.finetune import run
    with pytest.raises(KeyboardInterrupt):
        run(load_dataset(out_dir, NR206_CLASSES), None, TINY_CKPT, out, config=config256,
            options=FinetuneOptions(steps=5, batch=1, rank=2), callback=stop)
    assert list(tmp_path.iterdir()) == [out_dir]


def test_interrupt_while_writing_leaves_no_partial_file(config256, tmp_path, monkeypatch):
    model = tiny(config256)
    real_save = torch.save

    def save_then_interrupt(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        raise KeyboardInterrupt  # after the bytes are written, before the rename

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    (tmp_path / "out.pt").write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, read_state_dict(TINY_CKPT), tmp_path / "out.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]
    assert (tmp_path / "out.pt").read_bytes() == b"previous"  # the old file is untouched


# --- the command, end to end --------------------------------------------------------------------

def write_plain_dataset(folder: Path, items) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for s in items:
        Image.fromarray(np.round(s.gray * 255).astype(np.uint8)).save(folder / "images" / s.name)
        Image.fromarray(s.labels).save(folder / "labels" / s.name)
    return folder


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "sam2oct", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, config256):
    """`python -m sam2oct finetune` (in-process) on synthetic B-scans, validated on others."""
    root = tmp_path_factory.mktemp("ft")
    train_dir = write_plain_dataset(root / "train", samples(12, SCANNER_A, 10, "tr"))
    val_dir = write_plain_dataset(root / "val", samples(4, SCANNER_A, 11, "va"))
    out, report = root / "models" / "tuned.pt", root / "report.json"
    code = cli.main(["finetune", str(train_dir), "--checkpoint", str(TINY_CKPT), "--config", str(config256),
                     "--out", str(out), "--val", str(val_dir), "--report", str(report), "--steps", "120",
                     "--mode", "full", "--lr-encoder", "3e-3", "--lr-decoder", "1e-2", "--seed", "1",
                     "--device", "cpu"])
    assert code == 0
    return out, json.loads(report.read_text()), val_dir


def test_cli_report_records_the_run(finetuned):
    out, report, val_dir = finetuned
    assert report["base_checkpoint"]["sha256"] == sha256_of(TINY_CKPT)
    assert report["output"]["sha256"] == sha256_of(out)
    assert report["steps"] == 120 and report["wall_s"] > 0
    hp = report["hyperparameters"]
    assert (hp["mode"], hp["steps"], hp["seed"], hp["lr_encoder"], hp["lr_decoder"]) == ("full", 120, 1, 3e-3, 1e-2)
    assert hp["weight_decay"] == 0.01 and hp["clip"] == 2.0 and hp["warmup"] == 6
    assert report["data"]["train"]["images"] == 12 and report["data"]["validation"]["images"] == 4
    assert report["class_names"] == list(NR206_CLASSES)
    v = report["validation"]
    assert v["after"]["mean_iou"] > v["before"]["mean_iou"] + 0.1, (v["before"]["mean_iou"], v["after"]["mean_iou"])


def test_cli_output_loads_strictly_with_the_base_keys(finetuned, config256):
    out, _, _ = finetuned
    assert read_state_dict(out).keys() == read_state_dict(TINY_CKPT).keys()
    model = load_model(out, config256)
    base = load_model(TINY_CKPT, config256)
    assert not torch.equal(model.sam_mask_decoder.mask_tokens.weight, base.sam_mask_decoder.mask_tokens.weight)


def test_cli_output_serves_through_the_nuclio_handler(finetuned, config256):
    from harness import Worker, b64, check_detector

    out, _, val_dir = finetuned
    image = sorted((val_dir / "images").iterdir())[0]
    fn = Worker(SAM2_CHECKPOINT=str(out), SAM2_CONFIG=str(config256), SAM2OCT_MODE="detector")
    reply = fn.call({"image": b64(image)})
    check_detector(reply, 128, 96)
    assert reply.json, "the fine-tuned model found no layer"


def test_cli_output_serves_through_segment(finetuned, config256, tmp_path):
    out, _, val_dir = finetuned
    image = sorted((val_dir / "images").iterdir())[0]
    proc = run_cli("segment", image, "--checkpoint", out, "--config", config256, "--json", tmp_path / "o.json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["shapes"] and {s["label"] for s in doc["shapes"]} <= set(NR206_CLASSES[1:])


def test_cli_val_fraction_holds_out_whole_volumes(tmp_path, config256):
    items = samples(12, SCANNER_A, 6)  # volumes vol0, vol1, vol2: four B-scans each
    data = write_plain_dataset(tmp_path / "d", items)
    report = tmp_path / "r.json"
    code = cli.main(["finetune", str(data), "--checkpoint", str(TINY_CKPT), "--config", str(config256),
                     "--out", str(tmp_path / "o.pt"), "--val-fraction", "0.3", "--steps", "1", "--batch", "1",
                     "--report", str(report)])
    assert code == 0
    d = json.loads(report.read_text())["data"]
    train_vols, val_vols = set(d["train"]["volume_names"]), set(d["validation"]["volume_names"])
    assert train_vols | val_vols == {"vol0", "vol1", "vol2"} and not train_vols & val_vols
    assert d["train"]["images"] + d["validation"]["images"] == 12 and d["validation"]["images"] % 4 == 0


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "--steps: must be at least 1"),
    (["--batch", "0"], "--batch: must be at least 1"),
    (["--rank", "0"], "--rank: must be at least 1"),
    (["--lr-decoder", "-1"], "--lr-decoder: must be"),
    (["--steps", "50", "--warmup", "99"], "--warmup: must be between 0 and the number of steps (50)"),
    (["--val-fraction", "1.5"], "--val-fraction: must be between 0 and 1"),
    (["--val", "/nowhere/val"], "--val: not found: /nowhere/val"),
    (["--class-names", "a,b,c"], "the checkpoint has 9 classes"),
    (["--profile", "mgu"], "expects 11"),
    (["--device", "cuda:0"], "CUDA is not available"),
    (["--config", "/nowhere/cfg.yaml"], "/nowhere/cfg.yaml"),
])
def test_cli_user_errors_exit_2_before_the_model_loads(tmp_path, capsys, no_model, args, fragment):
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the case needs a machine without it
    data = write_plain_dataset(tmp_path / "d", samples(4, SCANNER_A, 5))
    code = cli.main(["finetune", str(data), "--checkpoint", str(TINY_CKPT), "--out", str(tmp_path / "o.pt"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (tmp_path / "o.pt").exists()


def test_cli_errors_on_data_and_paths(tmp_path, capsys, no_model):
    data = write_plain_dataset(tmp_path / "d", samples(2, SCANNER_A, 5))
    cases = [
        ([str(tmp_path / "missing"), "--checkpoint", str(TINY_CKPT), "--out", str(tmp_path / "o.pt")], "missing"),
        ([str(data), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o.pt")], "none.pt"),
        ([str(data), "--checkpoint", str(TINY_CKPT), "--out", str(tmp_path)], "is a folder"),
        # a single volume cannot be split by volume
        ([str(data), "--checkpoint", str(TINY_CKPT), "--out", str(tmp_path / "o.pt"), "--val-fraction", "0.5"],
         "volume"),
        # labels the classes do not have
        ([str(SPECTRALIS_ZIP), "--checkpoint", str(TINY_CKPT), "--out", str(tmp_path / "o.pt")], "GCL-BM"),
    ]
    for argv, fragment in cases:
        code = cli.main(["finetune", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], (argv, err)
    assert not (tmp_path / "o.pt").exists()


# --- the done-when: real B-scans ---------------------------------------------------------------

def test_real_spectralis_export_raises_held_out_miou(config256):
    """Fine-tune on the Willis_B_716 volume (2 circle scans), score the other volume's B-scan."""
    data = load_dataset(SPECTRALIS_ZIP, SPECTRALIS_CLASSES)
    assert len(data.samples) == 3
    held = replace(data, samples=[s for s in data.samples if s.name == "valid.png"])
    training = [s for s in data.samples if s.name != "valid.png"]
    assert {s.volume for s in training} == {"Willis_B_716"} and held.samples[0].volume != "Willis_B_716"
    model = tiny(config256)
    from sam2oct.training.finetune import predictor_fn
    before = score(held, predictor_fn(model, "stretch"))["mean_iou"]
    train(model, training, FinetuneOptions(steps=60, seed=0, **FROM_SCRATCH))
    after = score(held, predictor_fn(model, "stretch"))["mean_iou"]
    assert after > before + 0.15, (before, after)


def _live_tensor_bytes(last_dims) -> int:
    """Bytes of the live tensors whose last two dimensions are ``last_dims`` (each storage once)."""
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.dim() >= 2 and tuple(obj.shape[-2:]) == last_dims:  # type(): isinstance warns on torch.distributed.reduce_op
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    return sum(storages.values())


def test_decoder_mode_holds_label_maps_not_float_targets_per_view(config256):
    """Issue 15, defect 5: a [K,S,S] float target per cached view is ~40 MB at S=1024 (18 GiB for a
    97-B-scan volume). While training, the S x S tensors alive are one step's, not every view's."""
    model = tiny(config256)
    k, size, batch, scans, views = model.num_classes, model.image_size, 1, 6, 3
    data = samples(scans, SCANNER_A, 3)
    gc.collect()
    before = _live_tensor_bytes((size, size))  # what earlier tests left alive
    seen = []
    train(model, data, FinetuneOptions(mode="decoder", steps=2, batch=batch, views=views),
          callback=lambda step, loss, parts: seen.append(_live_tensor_bytes((size, size)) - before))
    one_step = batch * (k + 1) * size * size * 4  # the step's target and valid weight
    every_view = scans * views * k * size * size * 4
    assert seen and max(seen) < 3 * one_step < every_view, (seen, one_step, every_view)


def test_resolved_checks_the_mode_first():
    """Issue 15, defect 6: an unknown mode is a ConfigError that names the option, not a KeyError."""
    from sam2oct.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        FinetuneOptions(mode="adapters").resolved()
    assert err.value.option == "mode" and "'adapters'" in str(err.value) and "lora" in str(err.value)
