"""`python -m sam2oct thickness`: exports, bundles and label volumes in, checked against an
independent ETDRS scoring (tests/thickness_helpers.py); every user error one line, exit 2."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CKPT, TINY_CONFIG
from sam2oct import cli
from sam2oct.evaluation.thickness.synthetic import synthetic_macula
from sam2oct.model.profiles import NR206_CLASSES
from thickness_helpers import (SECTORS, cvat_export, independent_etdrs, pixel_counts_from_boundaries, write_folder,
                               write_zip)

SPACING = (3.87, 14.0, 150.0)


@pytest.fixture(autouse=True)
def no_checkpoint_in_env(monkeypatch):
    monkeypatch.delenv("SAM2_CHECKPOINT", raising=False)


def macula(eye, **kw):
    args = dict(laterality=eye, bscans=41, width=460, height=420, spacing=SPACING, fovea=(19.6, 230.3),
                waviness=0.04, seed=5)
    args.update(kw)
    return synthetic_macula(**args)


def thickness_of(labels, class_names=NR206_CLASSES, axial=3.9):
    """{layer: [N, W] µm, retina: ...} by counting pixels of each class in a loop over A-scans."""
    n, _, w = labels.shape
    out = {name: np.zeros((n, w)) for name in list(class_names[1:]) + ["retina"]}
    for b in range(n):
        for k, name in enumerate(class_names[1:], start=1):
            out[name][b] = (labels[b] == k).sum(axis=0) * axial
        out["retina"][b] = (labels[b] > 0).sum(axis=0) * axial
    return out


def run_ok(capsys, argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def one_line_error(capsys, argv, *words):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert str(word) in err, err
    assert out == ""
    return err


@pytest.mark.parametrize("eye,shapes", [("OD", "polygons"), ("OS", "mixed")])
def test_export_round_trip_matches_the_independent_scoring(tmp_path, capsys, eye, shapes):
    vol = macula(eye)
    export = write_zip(tmp_path / "task.zip", cvat_export(vol.labels, list(NR206_CLASSES), shapes=shapes))
    report_path, csv_path = tmp_path / "out" / "report.json", tmp_path / "out" / "sectors.csv"
    run_ok(capsys, ["thickness", export, "--spacing", ",".join(map(str, SPACING)), "--laterality", eye.lower(),
                    "--json", report_path, "--csv", csv_path])
    report = json.loads(report_path.read_text())
    fovea = (report["fovea"]["bscan"], report["fovea"]["column"])
    assert abs(fovea[0] - 19.6) <= 1 and abs(fovea[1] - 230.3) <= 2
    counts = pixel_counts_from_boundaries(vol.boundaries, vol.labels.shape[1]) * SPACING[0]
    analytic = {name: counts[i] for i, name in enumerate(NR206_CLASSES[1:])}
    analytic["retina"] = counts.sum(axis=0)
    expected = independent_etdrs(analytic, fovea, SPACING, eye)
    for layer, sectors in expected.items():
        for sector in SECTORS:
            assert report["etdrs"][layer][sector] == pytest.approx(sectors[sector], abs=0.5), (layer, sector)
    assert report["cst_um"] == pytest.approx(expected["retina"]["CSF"], abs=0.5)
    assert report["laterality"] == eye and report["spacing_um"] == dict(zip(("axial", "lateral", "bscan"), SPACING))
    assert "ILM" in report["definition"]
    rows = {r["layer"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    assert float(rows["retina"]["NIM"]) == pytest.approx(expected["retina"]["NIM"], abs=0.5)


def test_bundle_with_volume_json_needs_no_flags_and_keeps_unannotated_frames_in_place(tmp_path, capsys):
    vol = macula("OS", bscans=31, width=300, spacing=(3.9, 20.0, 200.0), fovea=(15.0, 150.0))
    labels = vol.labels.copy()
    labels[0] = 0  # the most superior B-scan was never annotated: no shapes in the export
    meta = {"spacing_um": [3.9, 20.0, 200.0], "laterality": "OS", "scan_pattern": "volume", "n_bscans": 31}
    members = cvat_export(labels, list(NR206_CLASSES), extra={"volume.json": json.dumps(meta).encode()})
    bundle = write_folder(tmp_path / "bundle", members)
    out, err = run_ok(capsys, ["thickness", bundle, "--fovea-bscan", 15, "--fovea-column", 150])
    report = json.loads(out)
    assert report["fovea"] == {"bscan": 15, "column": 150} and report["fovea_source"] == "given"
    expected = independent_etdrs(thickness_of(labels), (15, 150), (3.9, 20.0, 200.0), "OS")
    for sector in SECTORS:
        assert report["etdrs"]["retina"][sector] == pytest.approx(expected["retina"][sector], abs=1e-3)
    assert "1 of 31 B-scans have no annotation" in err


def test_export_of_a_bundle_task_with_its_volume_json(tmp_path, capsys):
    """A CVAT export does not keep the bundle's volume.json: --volume-json gives it, with the frame
    list that puts B-scans nobody annotated (here the middle one) in their place."""
    vol = macula("OD", bscans=21, width=300, spacing=(3.9, 20.0, 300.0), fovea=(10.0, 150.0))
    labels = vol.labels.copy()
    labels[10] = 0
    frames = [f"bscan_{i:03d}.png" for i in range(21)]
    meta = {"spacing_um": [3.9, 20.0, 300.0], "laterality": "OD", "scan_pattern": "volume", "n_bscans": 21,
            "frames": frames}
    (tmp_path / "volume.json").write_text(json.dumps(meta))
    export = write_zip(tmp_path / "corrected.zip", cvat_export(labels, list(NR206_CLASSES), names=frames))
    out, err = run_ok(capsys, ["thickness", export, "--volume-json", tmp_path / "volume.json",
                               "--fovea-bscan", 10, "--fovea-column", 150])
    report = json.loads(out)
    expected = independent_etdrs(thickness_of(labels), (10, 150), (3.9, 20.0, 300.0), "OD")
    for sector in SECTORS:
        assert report["etdrs"]["retina"][sector] == pytest.approx(expected["retina"][sector], abs=1e-3)
    assert report["coverage"]["CSF"] < 0.75  # the middle B-scan crosses the centre and is not covered
    assert "1 of 21 B-scans have no annotation" in err
    meta["n_bscans"] = 22
    (tmp_path / "volume.json").write_text(json.dumps(meta))
    one_line_error(capsys, ["thickness", export, "--volume-json", tmp_path / "volume.json"], "22 B-scans",
                   "holds 21")
    one_line_error(capsys, ["thickness", export, "--volume-json", tmp_path / "absent.json"], "--volume-json",
                   "no such file")


def test_inferior_first_export_is_turned_round(tmp_path, capsys):
    vol = macula("OD", bscans=31, width=300, spacing=(3.9, 20.0, 200.0), fovea=(11.0, 140.0))
    flipped = vol.labels[::-1]  # as a device that writes the most inferior B-scan first
    export = write_zip(tmp_path / "inferior.zip", cvat_export(flipped, list(NR206_CLASSES), shapes="masks"))
    flags = ["--spacing", "3.9,20,200", "--laterality", "OD", "--fovea-bscan", 11, "--fovea-column", 140]
    out, _ = run_ok(capsys, ["thickness", export, "--bscan-order", "inferior-first", *flags])
    turned = json.loads(out)
    expected = independent_etdrs(thickness_of(vol.labels), (11, 140), (3.9, 20.0, 200.0), "OD")
    for sector in SECTORS:
        assert turned["etdrs"]["retina"][sector] == pytest.approx(expected["retina"][sector], abs=1e-3)
    assert turned["etdrs"]["retina"]["SIM"] != turned["etdrs"]["retina"]["IIM"]  # the order matters
    assert turned["bscan_order"] == "inferior-first"


def test_segmentation_mask_export(tmp_path, capsys):
    vol = macula("OD", bscans=21, width=240, spacing=(3.9, 25.0, 300.0), fovea=(10.0, 120.0))
    colours = [(0, 0, 0)] + [(30 * k, 255 - 20 * k, (70 * k) % 256) for k in range(1, 9)]
    members = {"labelmap.txt": "".join(f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in zip(NR206_CLASSES, colours)).encode()}
    for i, frame in enumerate(vol.labels):
        for folder, array in (("SegmentationClass", np.array(colours, dtype=np.uint8)[frame]),
                              ("JPEGImages", (frame * 20).astype(np.uint8))):
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            members[f"{folder}/bscan_{i:03d}.png"] = buf.getvalue()
    export = write_zip(tmp_path / "segmask.zip", members)
    out, _ = run_ok(capsys, ["thickness", export, "--spacing", "3.9,25,300", "--laterality", "OD",
                             "--fovea-bscan", 10, "--fovea-column", 120])
    report = json.loads(out)
    expected = independent_etdrs(thickness_of(vol.labels), (10, 120), (3.9, 25.0, 300.0), "OD")
    for layer in ("NFL", "ONL", "retina"):
        for sector in SECTORS:
            assert report["etdrs"][layer][sector] == pytest.approx(expected[layer][sector], abs=1e-3)


def save_npz(path, labels, spacing=(3.9, 20.0, 200.0), laterality="OD", class_names=NR206_CLASSES):
    np.savez(path, labels=labels, spacing_um=np.array(spacing, dtype=np.float64),
             laterality=np.array(laterality), class_names=np.array(class_names))
    return path


def test_label_volume_npz_with_maps(tmp_path, capsys):
    vol = macula("OD", bscans=31, width=300, spacing=(3.9, 20.0, 200.0), fovea=(15.3, 149.6))
    npz = save_npz(tmp_path / "labels.npz", vol.labels)
    maps = tmp_path / "maps"
    _, err = run_ok(capsys, ["thickness", npz, "--json", tmp_path / "r.json", "--maps", maps])
    report = json.loads((tmp_path / "r.json").read_text())
    assert abs(report["fovea"]["bscan"] - 15.3) <= 1 and abs(report["fovea"]["column"] - 149.6) <= 2
    assert report["fovea_source"] == "found" and report["cst_um"] == report["etdrs"]["retina"]["CSF"]
    assert set(report["coverage"]) == set(SECTORS) and set(report["volume_mm3"]["retina"]) == set(SECTORS) | {"total"}
    for layer in list(NR206_CLASSES[1:]) + ["retina"]:
        assert (maps / f"thickness_{layer}.png").stat().st_size > 10_000
        raw = np.load(maps / f"thickness_{layer}.npy")
        np.testing.assert_allclose(raw, thickness_of(vol.labels)[layer], atol=1e-3)
    assert "CST" in err


def test_line_scan_npz_gives_a_profile(tmp_path, capsys):
    vol = synthetic_macula(bscans=1, width=256, height=300, spacing=(3.9, 12.0, 100.0), fovea=(0.0, 120.4))
    npz = save_npz(tmp_path / "line.npz", vol.labels, spacing=(3.9, 12.0, float("nan")), laterality="")
    _, _ = run_ok(capsys, ["thickness", npz, "--csv", tmp_path / "p.csv", "--json", tmp_path / "p.json",
                           "--maps", tmp_path / "m"])
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["scan"] == "line" and report["etdrs"] is None and abs(report["fovea"]["column"] - 120.4) <= 2
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert len(rows) == 256 and float(rows[10]["retina"]) == pytest.approx(thickness_of(vol.labels)["retina"][0, 10])
    assert (tmp_path / "m" / "profile_bscan000.png").exists()


def test_missing_spacing_is_one_error_naming_the_flag(tmp_path, capsys, no_model):
    vol = macula("OD", bscans=5, width=60, height=300, fovea=(2.0, 30.0))
    export = write_zip(tmp_path / "e.zip", cvat_export(vol.labels, list(NR206_CLASSES)))
    out = tmp_path / "never.json"
    one_line_error(capsys, ["thickness", export, "--laterality", "OD", "--json", out], "--spacing", "AXIAL,LATERAL,BSCAN")
    one_line_error(capsys, ["thickness", export, "--spacing", "3.9,20,200"], "--laterality", "OD or OS")
    npz = save_npz(tmp_path / "nan.npz", vol.labels, spacing=(np.nan, np.nan, np.nan))
    one_line_error(capsys, ["thickness", npz, "--csv", tmp_path / "never.csv"], "--spacing")
    assert not out.exists() and not (tmp_path / "never.csv").exists()


@pytest.mark.parametrize("flags,words", [
    (["--spacing", "3.9,20"], ["--spacing", "AXIAL,LATERAL,BSCAN"]),
    (["--spacing", "1,2,3"], ["--spacing", "records the spacing"]),
    (["--laterality", "OS"], ["--laterality", "records laterality OD"]),
    (["--fovea-bscan", "-1"], ["--fovea-bscan", "index"]),
    (["--fovea-column", "999"], ["--fovea-column", "0..59"]),
    (["--json", "{tmp}"], ["--json", "is a folder"]),
    (["--csv", "{tmp}/x.csv", "--json", "{tmp}/x.csv"], ["--csv", "same file"]),
    (["--maps", "{tmp}/afile"], ["--maps", "is a file"]),
    (["--bscan-order", "inferior-first"], ["--bscan-order", "superior-first already"]),
    (["--pattern", "line"], ["--pattern"]),
])
def test_bad_flags_are_one_line(tmp_path, capsys, no_model, flags, words):
    vol = macula("OD", bscans=5, width=60, height=300, fovea=(2.0, 30.0))
    npz = save_npz(tmp_path / "v.npz", vol.labels)
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, ["thickness", npz, *(f.format(tmp=tmp_path) for f in flags)],
                   *(w.format(tmp=tmp_path) for w in words))


def test_bad_inputs_are_one_line(tmp_path, capsys, no_model):
    one_line_error(capsys, ["thickness", tmp_path / "absent.npz"], "INPUT", "no such file")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    one_line_error(capsys, ["thickness", tmp_path / "junk.npz"], "junk.npz", "not a readable")
    np.savez(tmp_path / "nolabels.npz", other=np.zeros(3))
    one_line_error(capsys, ["thickness", tmp_path / "nolabels.npz"], "lacks labels")
    save_npz(tmp_path / "big.npz", np.full((3, 4, 5), 12, dtype=np.uint8))
    one_line_error(capsys, ["thickness", tmp_path / "big.npz"], "class 12", "9 classes")
    members = cvat_export(np.ones((2, 8, 8), dtype=np.uint8), ["background", "Mystery"])
    export = write_zip(tmp_path / "odd.zip", members)
    one_line_error(capsys, ["thickness", export, "--spacing", "1,1,1", "--laterality", "OD"], "--class-names",
                   "released profile")


def test_segment_bscans_uses_the_model_per_bscan(tmp_path):
    """The scanner-file path's model loop: one label map per B-scan, as segmenting each alone."""
    from sam2oct.cli.thickness import segment_bscans
    from sam2oct.pipeline.options import PipelineOptions
    from sam2oct.pipeline.pipeline import Pipeline

    pipeline = Pipeline(PipelineOptions(checkpoint=str(TINY_CKPT), config=str(TINY_CONFIG), cache_mb=0))
    rng = np.random.default_rng(0)
    bscans = rng.integers(0, 256, (2, 64, 96), dtype=np.uint8)
    labels = segment_bscans(pipeline, bscans, progress=False)
    assert labels.shape == (2, 64, 96) and labels.dtype == np.uint8
    raw_differs = False
    for i in range(2):
        encoded = pipeline.encode(bscans[i].astype(np.float32) / 255)
        # the cleaned map, as every front door answers, not the raw argmax map
        raw = pipeline.predict(encoded).label_map
        np.testing.assert_array_equal(labels[i], pipeline.clean(raw))
        raw_differs |= not np.array_equal(labels[i], raw)
    assert raw_differs  # on noise the two maps differ, so the check above tells them apart


def test_scanner_file_is_segmented_then_measured_as_its_label_volume(tmp_path, capsys):
    """A .vol in: the same report as `segment --labels` then thickness on the .npz (the tiny
    fixture model's layers are meaningless; the path is what is checked). Needs the volume
    reader of sam2oct/data/volumes (issue 16)."""
    pytest.importorskip("sam2oct.data.volumes.reader", reason="the scanner-file reader is not in this build")
    from volume_files import build_vol

    vol = build_vol(tmp_path / "vol3.vol", 3, distance_mm=0.12)
    tiny = ["--checkpoint", TINY_CKPT, "--config", TINY_CONFIG]
    fovea = ["--fovea-bscan", 1, "--fovea-column", 380]
    run_ok(capsys, ["segment", vol, *tiny, "--labels", tmp_path / "vol3.npz", "--json", tmp_path / "seg.json"])
    via_npz, _ = run_ok(capsys, ["thickness", tmp_path / "vol3.npz", *fovea])
    direct, err = run_ok(capsys, ["thickness", vol, *tiny, *fovea, "--maps", tmp_path / "maps"])
    a, b = json.loads(via_npz), json.loads(direct)
    assert a["etdrs"] == b["etdrs"] and a["spacing_um"] == b["spacing_um"] and b["laterality"] == "OD"
    assert b["spacing_um"]["bscan"] == pytest.approx(120.0)
    assert (tmp_path / "maps" / "thickness_retina.png").exists() and "segmented" in err
    one_line_error(capsys, ["thickness", vol, *tiny, "--spacing", "1,2,3"], "--spacing", "records the spacing")
