"""`cvat-task`: the bundle a volume becomes (frames, CVAT 1.1 masks or polygons, labels.json,
volume.json), read back by `evaluate` as the model's own annotations; the server path against a
stand-in for cvat-sdk's client at its boundary (no live CVAT server is run here)."""

import json
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY
from PIL import Image
from test_cli import NR206, one_line_error
from volume_files import build_vol

import sam2oct.cli.cvat_server as cvat_server
from sam2oct import cli
from sam2oct.data.cvat_bundle import mask_rle
from sam2oct.data.volumes.reader import read_volume



@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    return build_vol(tmp_path_factory.mktemp("v") / "eye1.vol", 3, shift=60)


@pytest.fixture(scope="module")
def bundle(vol, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert cli.main(["cvat-task", str(vol), "--out", str(out), *TINY]) == 0
    return out


def test_mask_rle_is_what_cvat_sdk_decodes():
    from cvat_sdk.masks import decode_mask

    rng = np.random.default_rng(0)
    for _ in range(100):
        m = rng.random((9, 13)) < rng.random()
        if not m.any():
            continue
        runs, left, top, w, h = mask_rle(m)
        decoded = decode_mask(runs + [left, top, left + w - 1, top + h - 1], image_width=13, image_height=9)
        assert np.array_equal(decoded.astype(bool), m)


def test_bundle_holds_frames_annotations_labels_and_volume_json(vol, bundle):
    folder = bundle / "eye1"
    volume = read_volume(vol)
    names = [f"bscan_{i:03d}.png" for i in range(3)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names + ["annotations.xml", "labels.json",
                                                                     "volume.json"])
    for i, name in enumerate(names):  # 8-bit, in frame order (most superior first)
        assert np.array_equal(np.asarray(Image.open(folder / name)), volume.bscans[i])
    meta = json.loads((folder / "volume.json").read_text())
    assert meta["spacing_um"] == pytest.approx([3.8716697599738836, 11.820577085018158, 120.0])
    assert (meta["laterality"], meta["scan_pattern"], meta["source"]) == ("OD", "volume", "eye1.vol")
    assert meta["sha256"] == volume.sha256 and meta["frames"] == names and meta["class_names"] == NR206
    labels = json.loads((folder / "labels.json").read_text())
    assert [label["name"] for label in labels] == NR206[1:]
    root = ET.parse(folder / "annotations.xml").getroot()
    images = root.findall("image")
    assert [im.get("name") for im in images] == names
    for im in images:  # one mask per layer per B-scan
        layers = [m.get("label") for m in im.findall("mask")]
        assert len(layers) == len(set(layers)) and set(layers) <= set(NR206[1:]) and len(layers) > 3


def _evaluate(capsys, data):
    report = data.parent / f"{data.name}-report.json"
    assert cli.main(["evaluate", str(data), *TINY, "--json", str(report)]) == 0
    capsys.readouterr()
    return json.loads(report.read_text())


def test_evaluate_reads_the_bundle_as_the_models_own_annotations(bundle, capsys):
    report = _evaluate(capsys, bundle)
    assert report["images"] == 3 and report["mean_iou"] >= 0.98
    assert {p["volume"] for p in report["per_image"]} == {"eye1"}
    one = _evaluate(capsys, bundle / "eye1")  # one bundle folder by itself
    assert one["mean_iou"] == pytest.approx(report["mean_iou"])


def test_polygon_bundle_scores_as_well(vol, tmp_path, capsys):
    # exact outlines (no simplification) of the cleaned map that evaluate also scores by default
    assert cli.main(["cvat-task", str(vol), "--out", str(tmp_path / "poly"), "--polygons", *TINY,
                     "--simplify", "0"]) == 0
    root = ET.parse(tmp_path / "poly" / "eye1" / "annotations.xml").getroot()
    assert root.find("image/polygon") is not None and root.find("image/mask") is None
    assert _evaluate(capsys, tmp_path / "poly")["mean_iou"] >= 0.98


def test_without_a_server_it_prints_the_cvat_cli_command(vol, tmp_path, capsys):
    assert cli.main(["cvat-task", str(vol), "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cvat-cli task create eye1 local ") and "--annotation_format 'CVAT 1.1'" in out
    assert "--image_quality 100 --sorting-method predefined" in out


def test_an_existing_bundle_is_not_overwritten(vol, bundle, capsys, no_model):
    before = (bundle / "eye1" / "volume.json").read_text()
    one_line_error(capsys, ["cvat-task", vol, "--out", bundle, *TINY], "--out: ", "exists already")
    assert (bundle / "eye1" / "volume.json").read_text() == before


# --- the server path, against a stand-in client ---------------------------------------------

class FakeTask:
    def __init__(self, repo, task_id, spec):
        self.repo, self.id, self.spec, self.removed = repo, task_id, spec, False

    def remove(self):
        self.removed = True


class FakeTasks:
    """cvat-sdk's TasksRepo at its boundary: create_from_data creates through self.create."""

    def __init__(self, fail=None):
        self.fail, self.made, self.calls = fail, [], []

    def create(self, spec):
        task = FakeTask(self, 40 + len(self.made), spec)
        self.made.append(task)
        return task

    def create_from_data(self, spec, resources, *, resource_type, data_params, annotation_path, annotation_format):
        self.calls.append(dict(spec=spec, resources=resources, resource_type=resource_type, data_params=data_params,
                               annotation_path=annotation_path, annotation_format=annotation_format))
        task = self.create(spec=spec)
        if self.fail:
            raise RuntimeError(self.fail)
        return task


class FakeClient:
    def __init__(self, project_labels=(), fail=None):
        self.tasks = FakeTasks(fail)
        labels = [SimpleNamespace(name=n) for n in project_labels]
        self.projects = SimpleNamespace(retrieve=lambda pid: SimpleNamespace(get_labels=lambda: labels))
        self.api_map = SimpleNamespace(host="http://cvat.example:8080")


@pytest.fixture
def fake_server(monkeypatch):
    made = {}

    def install(**kw):
        client = FakeClient(**kw)
        monkeypatch.setattr(cvat_server, "connect", lambda args: made.setdefault("client", client))
        return client

    return install


def test_server_path_creates_a_task_per_volume(vol, tmp_path, capsys, fake_server):
    client = fake_server(project_labels=NR206[1:] + ["extra"])
    assert cli.main(["cvat-task", str(vol), "--out", str(tmp_path), *TINY, "--server-host", "cvat.example",
                     "--project-id", "7"]) == 0
    out = capsys.readouterr().out.strip()
    (call,) = client.tasks.calls
    assert out == "http://cvat.example:8080/tasks/40"
    assert call["spec"].name == "eye1" and call["spec"].project_id == 7
    assert call["data_params"] == {"image_quality": 100, "sorting_method": "predefined"}
    assert call["resources"] == [str(tmp_path / "eye1" / f"bscan_{i:03d}.png") for i in range(3)]
    assert call["annotation_path"] == str(tmp_path / "eye1" / "annotations.xml")
    assert call["annotation_format"] == "CVAT 1.1" and str(call["resource_type"]).lower().endswith("local")
    meta = json.loads((tmp_path / "eye1" / "volume.json").read_text())
    assert meta["cvat_task_url"] == out and meta["sha256"]
    assert not client.tasks.made[0].removed
    assert "create" not in vars(client.tasks)  # the repository's own create is back


def test_server_path_without_a_project_sends_the_layers_as_labels(vol, tmp_path, capsys, fake_server):
    client = fake_server()
    assert cli.main(["cvat-task", str(vol), "--out", str(tmp_path), *TINY, "--server-host", "h"]) == 0
    spec = client.tasks.calls[0]["spec"]
    assert [label.name for label in spec.labels] == NR206[1:]


def test_labels_missing_from_the_project_stop_before_anything(vol, tmp_path, capsys, fake_server, no_model):
    client = fake_server(project_labels=["NFL", "GCL+IPL"])
    one_line_error(capsys, ["cvat-task", vol, "--out", tmp_path / "o", *TINY, "--server-host", "h",
                            "--project-id", "3"], "--project-id: ", "project 3 lacks the labels", "INL", "RPE")
    assert client.tasks.calls == [] and not (tmp_path / "o" / "eye1").exists()


def test_a_failed_upload_deletes_the_task(vol, tmp_path, capsys, fake_server):
    client = fake_server(fail="413 Payload Too Large")
    assert cli.main(["cvat-task", str(vol), "--out", str(tmp_path), *TINY, "--server-host", "h"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    last = err.splitlines()[-1]  # after the line per volume segmented
    assert last.startswith("error: --server-host: eye1: creating the CVAT task failed")
    assert "413 Payload Too Large" in last and "task 40 was deleted" in last
    assert [t.removed for t in client.tasks.made] == [True]
    assert "create" not in vars(client.tasks)


def test_an_unreachable_server_is_one_line(vol, tmp_path, capsys, no_model):
    import socket

    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one_line_error(capsys, ["cvat-task", vol, "--out", tmp_path, *TINY, "--server-host", "http://127.0.0.1",
                            "--server-port", port, "--auth", "user:pw"], "--server-host: ", "cannot log in")
