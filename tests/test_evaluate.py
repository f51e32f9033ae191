"""evaluate: pooled IoU/Dice and boundary error on hand-made maps, the CLI, and agreement with an
independent scoring of `segment`'s exact polygons."""

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, ROOT, TINY
import sam2oct.cli.evaluate
from sam2oct import cli
from sam2oct.data.samples import Dataset, Sample, rasterize
from sam2oct.evaluation.evaluate import compare, format_table, score
from sam2oct.geometry.polygons import label_map_to_shapes
from sam2oct.model.profiles import NR206_CLASSES
from test_datasets import cvat_xml, polygon_xml, write_zip

EXPORT = DATA / "cvat-export" / "synthetic_cvat_for_images_1.1.zip"
NAMES = ("background", "A", "B", "C")  # C appears in neither truth nor prediction

TRUTH_1 = [[0, 0, 0, 0],
           [1, 1, 1, 1],
           [2, 2, 2, 2],
           [2, 2, 2, 2]]
PRED_1 = [[0, 0, 0, 0],
          [0, 1, 1, 1],
          [1, 2, 2, 2],
          [2, 2, 2, 0]]
TRUTH_2 = [[1, 1, 0],
           [2, 2, 2]]
PRED_2 = [[0, 0, 0],
          [2, 2, 2]]


def hand_dataset():
    samples = [Sample(f"v_{i}.png", np.zeros(np.shape(t), np.float32), np.array(t, np.uint8), "v")
               for i, t in enumerate((TRUTH_1, TRUTH_2))]
    return Dataset(samples, NAMES, {}, "hand-made")


def hand_predict():
    preds = iter([np.array(PRED_1, np.uint8), np.array(PRED_2, np.uint8)])
    return lambda gray: next(preds)


def test_pooled_figures_on_hand_made_maps():
    report = score(hand_dataset(), hand_predict())
    assert report["images"] == 2 and report["classes"] == list(NAMES)
    # pixel counts worked out by hand: (intersection, truth, prediction) summed over both images
    # background (4+1, 4+1, 6+3), A (3+0, 4+2, 4+0), B (6+3, 8+3, 6+3)
    expected = {"background": (5 / 9, 10 / 14), "A": (3 / 7, 6 / 10), "B": (9 / 11, 18 / 20)}
    for name, (iou, dice) in expected.items():
        assert report["per_class"][name]["iou"] == pytest.approx(iou)
        assert report["per_class"][name]["dice"] == pytest.approx(dice)
    assert report["per_class"]["C"] == {"iou": None, "dice": None}
    assert report["mean_iou"] == pytest.approx((3 / 7 + 9 / 11) / 2)
    assert report["mean_dice"] == pytest.approx((0.6 + 0.9) / 2)
    b = report["boundary_mae_px"]
    # A begins one row low in column 0 of image 1 and is missing in columns 0 and 1 of image 2;
    # B begins one row low in column 0 of image 1 and right everywhere else (4 + 3 columns)
    assert b["per_boundary"]["A"] == {"mae": 0.25, "columns": 4, "missing": 2}
    assert b["per_boundary"]["B"] == {"mae": pytest.approx(1 / 7), "columns": 7, "missing": 0}
    assert b["per_boundary"]["C"] == {"mae": None, "columns": 0, "missing": 0}
    assert b["overall"] == pytest.approx(2 / 11) and b["columns"] == 11 and b["missing"] == 2


def test_per_image_figures_on_hand_made_maps():
    first, second = score(hand_dataset(), hand_predict())["per_image"]
    assert first["name"] == "v_0.png" and first["volume"] == "v"
    assert first["per_class"]["A"] == {"iou": 0.6, "dice": 0.75}
    assert first["per_class"]["B"]["iou"] == 0.75 and first["per_class"]["B"]["dice"] == pytest.approx(12 / 14)
    assert first["mean_iou"] == pytest.approx(0.675)
    assert first["boundary_mae_px"]["overall"] == 0.25
    assert second["per_class"]["A"] == {"iou": 0.0, "dice": 0.0}
    assert second["per_class"]["background"]["iou"] == pytest.approx(1 / 3)
    assert second["per_class"]["B"] == {"iou": 1.0, "dice": 1.0}
    assert second["mean_iou"] == 0.5
    assert second["boundary_mae_px"]["per_boundary"]["A"] == {"mae": None, "columns": 0, "missing": 2}


def test_a_perfect_prediction_scores_one_and_zero_error():
    ds = hand_dataset()
    report = score(ds, lambda gray: next(s.labels for s in ds.samples if s.gray is gray))
    assert report["mean_iou"] == 1.0 and report["mean_dice"] == 1.0
    assert report["boundary_mae_px"]["overall"] == 0.0 and report["boundary_mae_px"]["missing"] == 0


def test_bad_predictions_are_refused():
    with pytest.raises(ValueError, match="prediction is \\(3, 3\\)"):
        score(hand_dataset(), lambda gray: np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="class indices 0..3"):
        score(hand_dataset(), lambda gray: np.full(gray.shape, 7, np.uint8))


def test_compare_and_table():
    good = score(hand_dataset(), hand_predict())
    ds = hand_dataset()
    perfect = score(ds, lambda gray: next(s.labels for s in ds.samples if s.gray is gray))
    both = compare({"stretch": good, "pad-equalize": perfect})
    assert both["better"] == "pad-equalize" and set(both["by_preprocess"]) == {"stretch", "pad-equalize"}
    assert compare({"stretch": good, "pad-equalize": good})["better"] == "tie"
    table = format_table(both)
    assert "stretch" in table and "pad-equalize" in table and "better: pad-equalize" in table
    line = next(ln for ln in format_table(good).splitlines() if ln.startswith("A "))
    assert line.split()[1:] == ["0.4286", "0.6000"]
    assert next(ln for ln in format_table(good).splitlines() if ln.startswith("C ")).split()[1:] == ["-", "-"]


# --- the command line ---------------------------------------------------------------------------------


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sam2oct", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)




def test_user_errors_end_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    proc = run_cli("evaluate", tmp_path / "nope.zip", *TINY)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: dataset not found: {tmp_path / 'nope.zip'}"]
    monkeypatch.setattr(sam2oct.cli.evaluate, "_label_map_predictors", lambda *a: pytest.fail("the model was loaded"))
    code = cli.main(["evaluate", str(EXPORT), *TINY, "--class-names", "background,a,b,c,d,e,f,g,h"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --class-names: unknown label 'NFL'") and "background, a, b, c, d, e, f, g, h" in err[0]


@pytest.fixture(scope="module")
def cropped_export(tmp_path_factory):
    """A CVAT export of 200x120 crops of the three B-scans in the sample export (the tiny model's
    noisy label maps trace into tens of thousands of polygons at full size), their label maps
    written as exact polygons; returns (zip, [image paths], [truth label maps])."""
    folder = tmp_path_factory.mktemp("cropped")
    images, truths, entries, members = [], [], [], {}
    with zipfile.ZipFile(EXPORT) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("images/"))
        for name in names:
            full = np.asarray(Image.open(DATA / "synthetic" / name[7:].replace(".png", "_labels.png")))
            top = int(np.flatnonzero(full.any(axis=1))[0]) - 10
            box = (0, top, 200, top + 120)
            truth = full[box[1]:box[3], box[0]:box[2]]
            path = folder / name[7:]
            Image.open(io.BytesIO(zf.read(name))).crop(box).save(path)
            members[name] = path.read_bytes()
            shapes = [polygon_xml(s["label"], s["points"])
                      for s in label_map_to_shapes(truth, NR206_CLASSES, tolerance=0, min_area=0)]
            entries.append((name[7:], 200, 120, shapes, ""))
            images.append(path)
            truths.append(truth)
    members["annotations.xml"] = cvat_xml(entries)
    return write_zip(folder / "cropped.zip", members), images, truths


def test_evaluate_agrees_with_an_independent_scoring_of_segment_polygons(cropped_export, tmp_path, capsys):
    """segment's exact polygons, rasterised and scored with plain numpy, give evaluate's figures."""
    export, images, truths = cropped_export
    seg_json, report_json = tmp_path / "seg.json", tmp_path / "report.json"
    # both at the default min area: evaluate scores the cleaned map, which segment's polygons trace
    assert cli.main(["segment", *map(str, images), *TINY, "--simplify", "0",
                     "--json", str(seg_json)]) == 0
    assert cli.main(["evaluate", str(export), *TINY, "--json", str(report_json)]) == 0
    table = capsys.readouterr().out
    report = json.loads(report_json.read_text())
    k = len(NR206_CLASSES)
    inter, truth_n, pred_n = np.zeros(k), np.zeros(k), np.zeros(k)
    errors, missing = {n: [] for n in NR206_CLASSES[1:]}, 0
    for result, truth in zip(json.loads(seg_json.read_text()), truths):
        pred = rasterize(result["shapes"], result["height"], result["width"], NR206_CLASSES)
        for c in range(k):
            inter[c] += np.sum((truth == c) & (pred == c))
            truth_n[c] += np.sum(truth == c)
            pred_n[c] += np.sum(pred == c)
        for c, name in enumerate(NR206_CLASSES[1:], 1):
            for x in range(truth.shape[1]):
                t_rows, p_rows = np.flatnonzero(truth[:, x] == c), np.flatnonzero(pred[:, x] == c)
                if len(t_rows) and len(p_rows):
                    errors[name].append(abs(int(t_rows[0]) - int(p_rows[0])))
                elif len(t_rows):
                    missing += 1
    assert report["images"] == 3 and report["preprocess"] == "stretch"
    for c, name in enumerate(NR206_CLASSES):
        union = truth_n[c] + pred_n[c] - inter[c]
        assert report["per_class"][name]["iou"] == pytest.approx(inter[c] / union, abs=1e-12)
        assert report["per_class"][name]["dice"] == pytest.approx(2 * inter[c] / (truth_n[c] + pred_n[c]), abs=1e-12)
    ious = [inter[c] / (truth_n[c] + pred_n[c] - inter[c]) for c in range(1, k)]
    assert report["mean_iou"] == pytest.approx(np.mean(ious), abs=1e-12)
    b = report["boundary_mae_px"]
    for name, errs in errors.items():
        assert b["per_boundary"][name]["columns"] == len(errs)
        if errs:
            assert b["per_boundary"][name]["mae"] == pytest.approx(np.mean(errs), abs=1e-12)
    every = [e for errs in errors.values() for e in errs]
    assert b["overall"] == pytest.approx(np.mean(every), abs=1e-12) and b["missing"] == missing
    assert f"{report['mean_iou']:.4f}" in table


def test_preprocess_both_reports_each_and_the_better(tmp_path, capsys):
    out = tmp_path / "both.json"
    assert cli.main(["evaluate", str(EXPORT), *TINY, "--preprocess", "both", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["by_preprocess"]) == {"stretch", "pad-equalize"}
    runs = report["by_preprocess"]
    expected = max(runs, key=lambda m: (runs[m]["mean_iou"], runs[m]["mean_dice"]))
    assert report["better"] == expected
    assert runs["stretch"]["mean_iou"] != runs["pad-equalize"]["mean_iou"]  # two preprocessings really ran
    assert report["images"] == 3 and "CVAT for images 1.1" in report["source"]
    assert f"better: {expected}" in capsys.readouterr().out
