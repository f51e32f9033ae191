"""Layer thickness and the ETDRS grid (sam2oct.evaluation.thickness) against an independent
scoring (tests/thickness_helpers.py: analytic boundaries, a per-A-scan loop on angles and radii),
coverage against circle-segment formulas, the fovea against the synthetic pit's centre.
"""

import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from sam2oct.evaluation.thickness.geometry import Spacing, ThicknessError
from sam2oct.evaluation.thickness.maps import write_maps
from sam2oct.evaluation.thickness.report import measure
from sam2oct.evaluation.thickness.synthetic import synthetic_macula
from sam2oct.model.profiles import MGU_CLASSES, NR206_CLASSES
from thickness_helpers import SECTORS, analytic_thickness, independent_etdrs, pixel_counts_from_boundaries


@pytest.fixture(scope="module", params=["OD", "OS"])
def macula(request):
    return synthetic_macula(laterality=request.param, bscans=41, width=460, spacing=(3.87, 14.0, 150.0),
                            fovea=(19.6, 230.3), waviness=0.04, seed=3)


def test_sectors_match_an_independent_scoring_for_each_eye(macula):
    fovea = (20, 230)  # given, so that the grid alone is compared
    report = measure(macula.labels, macula.spacing, macula.laterality, macula.class_names,
                     fovea_bscan=fovea[0], fovea_column=fovea[1])
    out = report.as_json()
    s = macula.spacing
    expected = independent_etdrs(analytic_thickness(macula), fovea, (s.axial, s.lateral, s.bscan), macula.laterality)
    assert set(out["etdrs"]) == set(macula.class_names[1:]) | {"retina"}
    for layer, sectors in expected.items():
        for sector, value in sectors.items():
            assert value is not None
            assert out["etdrs"][layer][sector] == pytest.approx(value, abs=0.5), (layer, sector)
    assert out["cst_um"] == pytest.approx(expected["retina"]["CSF"], abs=0.5)
    assert out["fovea"] == {"bscan": 20, "column": 230} and out["fovea_source"] == "given"
    # the grid lies inside the scan: every sector fully covered, volume = mean x sector area
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in out["coverage"].values())
    ring_quadrant = math.pi * (1.5 ** 2 - 0.5 ** 2) / 4
    assert out["volume_mm3"]["retina"]["NIM"] == pytest.approx(expected["retina"]["NIM"] * 1e-3 * ring_quadrant,
                                                               rel=2e-3)


def test_pixel_counts_track_the_continuous_anatomy(macula):
    """Counting pixel centres is not biased: sector means within 1.5 µm of the exact thickness."""
    fovea = (20, 230)
    report = measure(macula.labels, macula.spacing, macula.laterality, macula.class_names,
                     fovea_bscan=fovea[0], fovea_column=fovea[1])
    exact = np.clip(macula.boundaries, 0, macula.labels.shape[1])
    continuous = {"retina": (exact[-1] - exact[0]) * macula.spacing.axial}
    s = macula.spacing
    expected = independent_etdrs(continuous, fovea, (s.axial, s.lateral, s.bscan), macula.laterality)
    for sector in SECTORS:
        assert report.etdrs["retina"][sector] == pytest.approx(expected["retina"][sector], abs=1.5)


def test_nasal_and_temporal_swap_between_eyes():
    vol = synthetic_macula(laterality="OD", bscans=31, width=300, spacing=(3.9, 20.0, 200.0), fovea=(15.0, 150.0))
    od = measure(vol.labels, vol.spacing, "OD", vol.class_names, fovea_bscan=15, fovea_column=150).etdrs
    os_ = measure(vol.labels, vol.spacing, "OS", vol.class_names, fovea_bscan=15, fovea_column=150).etdrs
    for layer in od:
        for ring in ("IM", "OM"):
            assert os_[layer]["N" + ring] == od[layer]["T" + ring]
            assert os_[layer]["T" + ring] == od[layer]["N" + ring]
            assert os_[layer]["S" + ring] == od[layer]["S" + ring]
        assert os_[layer]["CSF"] == od[layer]["CSF"]
    # the anatomy is thicker nasally: a right eye's NOM beats its TOM
    assert od["retina"]["NOM"] > od["retina"]["TOM"] + 20
    # the left eye is the right eye's mirror image: read as OS, the mirrored scan gives the same sectors
    mirrored = measure(vol.labels[:, :, ::-1], vol.spacing, "OS", vol.class_names,
                       fovea_bscan=15, fovea_column=300 - 1 - 150).etdrs
    for layer in od:
        for sector in SECTORS:
            assert mirrored[layer][sector] == pytest.approx(od[layer][sector], abs=1e-9)


@pytest.mark.parametrize("eye", ["OD", "OS"])
@pytest.mark.parametrize("spacing,shape,centre", [
    ((3.87, 11.5, 120.0), (49, 512), (23.4, 247.8)),
    ((3.87, 5.7, 60.0), (97, 1024), (50.7, 530.2)),
])
def test_fovea_is_found_near_the_pit(eye, spacing, shape, centre):
    vol = synthetic_macula(laterality=eye, bscans=shape[0], width=shape[1], spacing=spacing, fovea=centre)
    report = measure(vol.labels, vol.spacing, eye, vol.class_names)
    b, c = report.fovea
    assert abs(b - centre[0]) <= 1 and abs(c - centre[1]) <= 2, (report.fovea, centre)
    assert report.as_json()["fovea_source"] == "found"


def test_fovea_search_ignores_unsegmented_ascans():
    """A-scans without retina (zero thickness) are not the thinnest retina."""
    vol = synthetic_macula(bscans=31, width=300, spacing=(3.9, 20.0, 200.0), fovea=(15.2, 149.6))
    labels = vol.labels.copy()
    labels[12:14, :, 120:130] = 0  # a hole in the segmentation near the centre
    report = measure(labels, vol.spacing, "OD", vol.class_names)
    assert abs(report.fovea[0] - 15.2) <= 1 and abs(report.fovea[1] - 149.6) <= 2
    # a given B-scan keeps it, and the column is searched along it
    report = measure(labels, vol.spacing, "OD", vol.class_names, fovea_bscan=18)
    assert report.fovea[0] == 18 and abs(report.fovea[1] - 149.6) <= 2
    assert report.fovea_source == "given B-scan, found column"


def circle_part_right_of(radius, d):
    """Area of the disc x^2 + y^2 < radius^2 with x > -d (0 <= d <= radius)."""
    return math.pi * radius ** 2 / 2 + d * math.sqrt(radius ** 2 - d ** 2) + radius ** 2 * math.asin(d / radius)


def test_coverage_of_a_scan_that_reaches_only_half_the_grid():
    vol = synthetic_macula(bscans=41, width=400, spacing=(3.9, 10.0, 150.0), fovea=(20.0, 100.0))
    labels = vol.labels[:, :, 100:]  # the fovea is now the first column: temporal half (OD) missing
    report = measure(labels, vol.spacing, "OD", vol.class_names, fovea_bscan=20, fovea_column=0)
    half_column = 0.5 * 10.0 / 1000  # the first A-scan stands for 5 µm to its left
    expected_csf = circle_part_right_of(0.5, half_column) / (math.pi * 0.25)
    assert report.coverage["CSF"] == pytest.approx(expected_csf, abs=1e-4)
    assert report.coverage["NIM"] == pytest.approx(1.0, abs=1e-6)
    assert report.coverage["SIM"] == pytest.approx(0.5 + (half_column * (1.5 - 0.5)) / (math.pi * 2 / 4), abs=2e-3)
    assert report.coverage["TIM"] == 0.0 and report.etdrs["retina"]["TIM"] is None
    assert report.volume_mm3["retina"]["total"] is None  # a sector without data: no total
    # B-scans without retina (an annotator left them empty) are not covered
    emptied = labels.copy()
    emptied[:20] = 0  # every B-scan above the fovea
    cut = measure(emptied, vol.spacing, "OD", vol.class_names, fovea_bscan=20, fovea_column=0)
    assert cut.coverage["SIM"] == pytest.approx(0.0, abs=0.01)
    assert cut.etdrs["retina"]["SIM"] is None and cut.ascans["SIM"] == 0


def test_retina_leaves_the_choroid_out_and_says_so():
    labels = np.zeros((1, 10, 4), dtype=np.uint8)
    labels[0, 2:4] = 1  # RNFL: 2 px
    labels[0, 4:7] = 8  # RPE: 3 px
    labels[0, 7:9] = 9  # Choroid: 2 px
    report = measure(labels, (4.0, 10.0, 0.0001), "", MGU_CLASSES)
    assert np.all(report.maps["retina"] == 20.0)
    assert np.all(report.maps["Choroid"] == 8.0)
    definition = report.as_json()["definition"]
    assert "except Choroid" in definition and "ILM" in definition and "Cirrus" in definition


def test_a_single_bscan_gets_a_profile_and_no_grid(tmp_path):
    vol = synthetic_macula(bscans=1, width=200, spacing=(3.9, 15.0, 100.0), fovea=(0.0, 97.3))
    report = measure(vol.labels, vol.spacing, "OS", vol.class_names)
    out = report.as_json()
    assert out["scan"] == "line" and out["etdrs"] is None and out["cst_um"] is None
    assert out["fovea"]["bscan"] == 0 and abs(out["fovea"]["column"] - 97.3) <= 2
    rows = list(csv.DictReader(io.StringIO(report.csv_text())))
    assert len(rows) == 200
    counts = pixel_counts_from_boundaries(vol.boundaries, vol.labels.shape[1])[:, 0]
    for c in (0, 50, 97, 199):
        assert float(rows[c]["NFL"]) == pytest.approx(counts[0, c] * 3.9, abs=1e-3)
        assert float(rows[c]["retina"]) == pytest.approx(counts[:, c].sum() * 3.9, abs=1e-3)
        assert float(rows[c]["position_mm"]) == pytest.approx((c - out["fovea"]["column"]) * 0.015, abs=1e-4)
    written = write_maps(report, tmp_path / "maps")
    names = sorted(p.name for p in written)
    assert "profile_bscan000.png" in names and "thickness_retina.npy" in names
    with Image.open(tmp_path / "maps" / "profile_bscan000.png") as im:
        assert im.size[0] > 600


def test_csv_rows_are_the_json_sectors(macula):
    report = measure(macula.labels, macula.spacing, macula.laterality, macula.class_names)
    out = json.loads(json.dumps(report.as_json()))  # plain JSON types only
    rows = list(csv.DictReader(io.StringIO(report.csv_text())))
    assert [r["layer"] for r in rows] == list(macula.class_names[1:]) + ["retina"]
    for row in rows:
        for sector in SECTORS:
            assert float(row[sector]) == pytest.approx(out["etdrs"][row["layer"]][sector], abs=1e-3)


def test_maps_are_written_per_layer_with_the_raw_values(tmp_path, macula):
    report = measure(macula.labels, macula.spacing, macula.laterality, macula.class_names)
    labels = macula.labels.copy()
    labels[0] = 0  # one B-scan without retina: NaN in the raw map
    report = measure(labels, macula.spacing, macula.laterality, macula.class_names)
    write_maps(report, tmp_path)
    for layer in ("NFL", "GCL+IPL", "retina"):
        raw = np.load(tmp_path / f"thickness_{layer}.npy")
        assert raw.shape == macula.labels.shape[::2]
        assert np.isnan(raw[0]).all()
        expected = (labels[1:] == list(macula.class_names).index(layer)).sum(axis=1) * macula.spacing.axial \
            if layer != "retina" else (labels[1:] > 0).sum(axis=1) * macula.spacing.axial
        np.testing.assert_allclose(raw[1:], expected, atol=1e-3)
        with Image.open(tmp_path / f"thickness_{layer}.png") as im:
            assert im.size[0] > 500 and im.size[1] > 500
            assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 50  # a heat map, not a blank canvas


@pytest.mark.parametrize("call,option", [
    (lambda v: measure(v.labels, (3.9, -1, 100), "OD", v.class_names), "spacing"),
    (lambda v: measure(v.labels, (3.9, 10), "OD", v.class_names), "spacing"),
    (lambda v: measure(v.labels, v.spacing, "", v.class_names), "laterality"),
    (lambda v: measure(v.labels, v.spacing, "OX", v.class_names), "laterality"),
    (lambda v: measure(v.labels, v.spacing, "OD", v.class_names, fovea_bscan=99, fovea_column=3), "fovea_bscan"),
    (lambda v: measure(v.labels, v.spacing, "OD", v.class_names, fovea_column=-1), "fovea_column"),
])
def test_bad_settings_are_named(call, option):
    vol = synthetic_macula(bscans=5, width=40, height=200, spacing=(3.9, 20.0, 100.0), fovea=(2.0, 20.0))
    with pytest.raises(ThicknessError) as err:
        call(vol)
    assert err.value.option == option


def test_bad_label_volumes_are_refused():
    with pytest.raises(ThicknessError, match="only 9 classes"):
        measure(np.full((2, 5, 5), 9, dtype=np.uint8), (1, 1, 1), "OD", NR206_CLASSES)
    with pytest.raises(ThicknessError, match="integer"):
        measure(np.zeros((2, 5, 5), dtype=np.float32), (1, 1, 1), "OD", NR206_CLASSES)
    with pytest.raises(ThicknessError, match="shape"):
        measure(np.zeros((2, 5, 5, 1), dtype=np.uint8), (1, 1, 1), "OD", NR206_CLASSES)
    assert Spacing.of({"axial": 1, "lateral": 2, "bscan": 3}) == Spacing(1.0, 2.0, 3.0)
