"""`segment` on scanner volumes: the label volume equals segmenting each B-scan as an 8-bit PNG,
and carries the file's spacing and laterality; broken files and unusable outputs end in one
`error:` line before the model loads, with nothing written."""

import json
import math

import numpy as np
import pytest
from conftest import TINY
from PIL import Image
from test_cli import NR206, one_line_error, run_cli
from volume_files import CIRCLE_VOL, build_vol, rewrite_header, write_dicom_opt

from sam2oct import cli
from sam2oct.data.volumes.reader import read_volume



@pytest.fixture(scope="module")
def small_vol(tmp_path_factory):
    """Four distinct B-scans, written as a .vol by the test helper (first B-scan inferior)."""
    return build_vol(tmp_path_factory.mktemp("vol") / "macula.vol", 4, shift=40)


@pytest.fixture(scope="module")
def as_pngs(small_vol, tmp_path_factory):
    """Each B-scan of the volume as the 8-bit PNG a user would export, and their one-by-one labels."""
    folder = tmp_path_factory.mktemp("pngs")
    vol = read_volume(small_vol)
    paths = []
    for i, frame in enumerate(vol.bscans):
        paths.append(folder / f"frame{i}.png")
        Image.fromarray(frame).save(paths[-1])
    out = folder / "labels"
    assert cli.main(["segment", *map(str, paths), *TINY, "--labels", str(out), "--batch", "1",
                     "--json", str(folder / "o.json")]) == 0
    return paths, np.concatenate([np.load(out / f"{p.stem}.npz")["labels"] for p in paths])


def agreement(a, b) -> float:
    return float((a == b).mean())


def test_volume_labels_equal_segmenting_its_bscans_one_by_one(small_vol, as_pngs, tmp_path, capsys):
    _, one_by_one = as_pngs
    npz, nii, overlays, out_json = tmp_path / "v.npz", tmp_path / "v.nii.gz", tmp_path / "ov", tmp_path / "v.json"
    assert cli.main(["segment", str(small_vol), *TINY, "--labels", str(npz), "--nifti", str(nii),
                     "--overlay", str(overlays), "--json", str(out_json), "--batch", "3"]) == 0
    assert "4 B-scans" in capsys.readouterr().err
    z = np.load(npz)
    assert sorted(z.files) == ["class_names", "labels", "laterality", "spacing_um"]
    vol = read_volume(small_vol)
    assert z["labels"].dtype == np.uint8 and z["labels"].shape == vol.bscans.shape
    assert agreement(z["labels"], one_by_one) >= 0.999
    assert len(np.unique(z["labels"])) > 3  # the model found layers: the comparison means something
    assert z["spacing_um"].tolist() == pytest.approx([3.8716697599738836, 11.820577085018158, 120.0])
    assert str(z["laterality"]) == "OD" and z["class_names"].tolist() == NR206

    docs = json.loads(out_json.read_text())
    assert [d["bscan"] for d in docs] == [0, 1, 2, 3]
    assert list(docs[0]) == ["image", "bscan", "width", "height", "profile", "classes", "ious", "shapes"]
    assert {d["image"] for d in docs} == {str(small_vol)}
    assert sorted(p.name for p in overlays.iterdir()) == [f"bscan_{i:03d}.png" for i in range(4)]
    assert Image.open(overlays / "bscan_002.png").size == (768, 496)

    import nibabel as nib

    img = nib.load(nii)
    assert img.header.get_zooms() == pytest.approx((0.011820577, 0.0038716698, 0.12))
    assert np.array_equal(np.transpose(np.asarray(img.dataobj), (2, 1, 0)), z["labels"])


def test_dicom_opt_volume_carries_its_spacing_and_laterality(small_vol, as_pngs, tmp_path):
    _, one_by_one = as_pngs
    frames = read_volume(small_vol).bscans
    dcm = write_dicom_opt(tmp_path / "opt.dcm", frames, pixel_spacing_mm=(0.0039, 0.0118),
                          slice_thickness_mm=0.24, laterality="L", z_positions=[3, 1, -1, -3])
    npz = tmp_path / "opt.npz"
    assert cli.main(["segment", str(dcm), *TINY, "--labels", str(npz), "--json", str(tmp_path / "o.json")]) == 0
    z = np.load(npz)
    assert agreement(z["labels"], one_by_one) >= 0.999
    assert z["spacing_um"].tolist() == pytest.approx([3.9, 11.8, 240.0]) and str(z["laterality"]) == "OS"


def test_a_real_circle_scan_segments(tmp_path):
    npz = tmp_path / "circle.npz"
    assert cli.main(["segment", str(CIRCLE_VOL), *TINY, "--labels", str(npz), "--json", str(tmp_path / "o.json")]) == 0
    z = np.load(npz)
    assert z["labels"].shape == (1, 496, 768) and len(np.unique(z["labels"])) > 3
    assert z["spacing_um"][1] == pytest.approx(14.721997) and str(z["laterality"]) == "OD"


def test_images_and_a_tiff_stack_with_the_callers_geometry(as_pngs, tmp_path, capsys):
    import tifffile

    paths, one_by_one = as_pngs
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([np.asarray(Image.open(p)) for p in paths]), photometric="minisblack")
    out = tmp_path / "labels"
    assert cli.main(["segment", str(stack), str(paths[0]), *TINY, "--labels", str(out), "--spacing",
                     "3.9,11.8,120", "--laterality", "os"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d.get("bscan") for d in docs] == [0, 1, 2, 3, None]  # a plain image keeps today's entry
    z = np.load(out / "stack.npz")
    assert agreement(z["labels"], one_by_one) >= 0.999
    assert z["spacing_um"].tolist() == [3.9, 11.8, 120.0] and str(z["laterality"]) == "OS"
    single = np.load(out / f"{paths[0].stem}.npz")
    assert single["labels"].shape == (1, 496, 768) and np.array_equal(single["labels"][0], one_by_one[0])


def test_a_broken_volume_is_one_error_line_and_exit_2(small_vol, tmp_path):
    cut = tmp_path / "cut.vol"
    cut.write_bytes(small_vol.read_bytes()[:3_000_000])
    npz = tmp_path / "out.npz"
    proc = run_cli("segment", cut, *TINY, "--labels", npz)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {cut}: truncated") and proc.stderr.count("\n") == 1
    assert not npz.exists() and list(tmp_path.iterdir()) == [cut]


@pytest.mark.parametrize("make, flags, words", [
    ("pattern", [], ["unsupported scan pattern 7"]),
    ("magic", [], ["wrong magic"]),
    ("pixels", ["--max-pixels", "1000"], ["--max-pixels: ", "over the pixel limit of 1000"]),
    ("vol", ["--spacing", "1,1,1"], ["records the axial/lateral/bscan spacing"]),
    ("vol", ["--spacing", "1,x,1"], ["--spacing: ", "AXIAL,LATERAL,BSCAN"]),
    ("vol", ["--laterality", "OS"], ["records laterality OD"]),
    ("tiff", ["--nifti", "{tmp}/x.nii.gz"], ["--nifti: ", "spacing", "--spacing"]),
    ("vol", ["--labels", "{tmp}/x.txt"], ["--labels: ", ".npz"]),
    ("vol", ["--batch", "0"], ["--batch: ", "1 or more"]),
])
def test_volume_errors_come_before_the_model(small_vol, tmp_path, capsys, no_model, make, flags, words):
    import tifffile

    path = {"pattern": lambda: rewrite_header(small_vol, tmp_path / "p.vol", scan_pattern=7),
            "magic": lambda: rewrite_header(small_vol, tmp_path / "m.vol", magic=b"XXXXXXXX"),
            "pixels": lambda: small_vol, "vol": lambda: small_vol,
            "tiff": lambda: tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 8, 8), np.uint8),
                                             photometric="minisblack") or tmp_path / "t.tif"}[make]()
    one_line_error(capsys, ["segment", path, *TINY, *(f.format(tmp=tmp_path) for f in flags)], *words)
    assert not (tmp_path / "x.nii.gz").exists()


def test_several_volumes_need_distinct_names(small_vol, tmp_path, capsys, no_model):
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / small_vol.name).write_bytes(small_vol.read_bytes())
    one_line_error(capsys, ["segment", small_vol, twin / small_vol.name, *TINY, "--labels", tmp_path / "l"],
                   "--labels: ", "'macula'", "overwrite")


def test_unknown_spacing_stays_unknown_in_the_npz(as_pngs, tmp_path):
    paths, _ = as_pngs
    npz = tmp_path / "one.npz"
    assert cli.main(["segment", str(paths[1]), *TINY, "--labels", str(npz), "--json", str(tmp_path / "o.json")]) == 0
    z = np.load(npz)
    assert all(math.isnan(v) for v in z["spacing_um"]) and str(z["laterality"]) == ""
