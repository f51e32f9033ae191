"""sam2oct.cvat_function through cvat-cli's and cvat-sdk's own code, offline (no CVAT server).

- loading: cvat-cli's argument parser (``-p NAME=TYPE:VALUE``) and its FunctionLoader;
- detector: the SDK driver's label mapper and context class, masks decoded with cvat_sdk.masks;
- interactor and tracker: the agent's worker jobs, prompt and context classes and, once, its
  spawned worker process (RecoverableExecutor), as ``cvat-cli function run-agent`` runs them.

The tiny fixture checkpoints have random weights: their label maps are noise, so every expected
answer is computed here from the model's label map (or regions), not written down.
"""

import argparse
import concurrent.futures
import contextlib
import io
import json
import logging
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cvat_sdk.auto_annotation as cvataa
import numpy as np
import pytest
import torch
from conftest import DATA, ROOT, TINY_CKPT, TINY_CONFIG
from cvat_cli._internal import agent_driver
from cvat_cli._internal import agent_driver_interaction as interaction
from cvat_cli._internal import agent_driver_tracking as tracking
from cvat_cli._internal.agent import (
    RecoverableExecutor, _Agent, _default_tracking_state_id_generator, _worker_init, _worker_job_get_function_spec,
    get_function_driver_class,
)
from cvat_cli._internal.agent_driver_detection import _worker_job_detect
from cvat_cli._internal.commands_all import COMMANDS
from cvat_cli._internal.common import CriticalError, FunctionLoader, configure_common_arguments
from cvat_sdk import models
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_sdk.masks import decode_mask, encode_mask
from PIL import Image
from scipy import ndimage

from sam2oct import cvat_function
from sam2oct.model.checkpoint import build_model
from sam2oct.geometry.polygons import flatten_points, rasterize_shapes
from sam2oct.model.profiles import PROFILES

MODULE = "sam2oct.cvat_function"
TINY = (f"checkpoint=str:{TINY_CKPT}", f"config=str:{TINY_CONFIG}", "min_area=int:100")
# The tracker keeps a few background spots of the fixture map (min area 16): the refusal tests need them.
TRACKER = (f"checkpoint=str:{TINY_CKPT}", f"config=str:{TINY_CONFIG}", "min_area=int:16", "kind=str:tracker")
README = ROOT / "README.md"


def doc_text() -> str:
    """The README's section on cvat-cli, up to the next section."""
    text = README.read_text()
    start = text.index("## Using the model with cvat-cli")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]
H, W = 112, 160
CROP = np.asarray(Image.open(DATA / "bscan_768x496_s1.png"))[120:120 + H, 232:232 + W]
FULL = np.asarray(Image.open(DATA / "bscan_768x496_s1.png"))
LOG = logging.getLogger("test_cvat_function")


# --- cvat-cli's side ---------------------------------------------------------------------------

def cli_parser() -> argparse.ArgumentParser:
    """cvat-cli's own parser, built as cvat_cli.__main__.main builds it."""
    parser = argparse.ArgumentParser()
    configure_common_arguments(parser)
    COMMANDS.configure_parser(parser)
    return parser


def loader_of(argv) -> FunctionLoader:
    ns = cli_parser().parse_args(argv)
    return FunctionLoader(ns.function_module, ns.function_file, ns.function_parameters)


def load(*params):
    """The function as ``cvat-cli task auto-annotate 1 --function-module sam2oct.cvat_function -p ...`` loads it."""
    argv = ["task", "auto-annotate", "1", "--function-module", MODULE]
    for p in params:
        argv += ["-p", p]
    return loader_of(argv).load()


def context(frame_name="frame_000001.png", conf_threshold=None, conv_mask_to_poly=False):
    return _DetectionFunctionContextImpl(frame_name=frame_name, conf_threshold=conf_threshold,
                                         conv_mask_to_poly=conv_mask_to_poly)


def prompts(pos=(), neg=(), box=None):
    return interaction._InteractionPromptsImpl(pos_points=tuple(map(tuple, pos)), neg_points=tuple(map(tuple, neg)),
                                               bounding_box=box)


def shape_context(shape_type):
    return tracking._TrackingFunctionShapeContextImpl(original_shape_type=shape_type)


def as_agent_worker(function):
    """What the agent's worker initializer does after loading the function (_worker_init)."""
    agent_driver.set_worker_current_function(function)
    get_function_driver_class(function.spec).init_worker(_default_tracking_state_id_generator)


class InlineExecutor:
    """RecoverableExecutor's interface, running the job in this process."""

    def submit(self, fn, *args, **kwargs):
        future = concurrent.futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def result(self, future):
        return future.result()


# --- frames and expected answers -------------------------------------------------------------

def frame(shift=0, base=CROP) -> Image.Image:
    return Image.fromarray(np.roll(base, shift, axis=0))


def gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0  # 8-bit grey, as the model was trained


def component(label_map, row, col) -> np.ndarray:
    """The 4-connected region of one class holding pixel (row, col)."""
    regions, _ = ndimage.label(label_map == label_map[row, col])
    return regions == regions[row, col]


def polygon_mask(points, height=H, width=W) -> np.ndarray:
    return rasterize_shapes([{"points": np.reshape(points, (-1, 2)).tolist()}], (height, width)) > 0


def layer_regions(function, image, prediction=None):
    p = function.pipeline
    h, w = np.asarray(image).shape[:2]
    return [(r.class_index, r.full_mask(h, w), r) for r in p.regions(p.encode(gray(image)), prediction=prediction)]


def background_pixel(function, image):
    """(row, col) of the first pixel the model calls background."""
    lm = function.pipeline.label_map(function.pipeline.encode(gray(image)))  # the cleaned map
    rows, cols = np.nonzero(lm == 0)
    assert rows.size, "the fixture model sees no background on this frame"
    return int(rows[0]), int(cols[0]), lm


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _leave_no_agent_state():
    """The agent's worker globals hold the last function, its frames and states: drop them after
    this module, so later tests (the soak test counts live features) do not see them."""
    yield
    agent_driver.set_worker_current_function(None)
    interaction._pp_image_cache = interaction._PpImageCache()
    tracking._tracking_states = tracking._TrackingStateContainer()


def module_function(*params):
    function = load(*params)
    yield function
    function.pipeline.release_memory()


@pytest.fixture(scope="module")
def detector():
    yield from module_function(*TINY)


@pytest.fixture(scope="module")
def interactor():
    yield from module_function(*TINY, "kind=str:interactor")


@pytest.fixture(scope="module")
def tracker():
    yield from module_function(*TRACKER)


@pytest.fixture(scope="session")
def k11_checkpoint(tmp_path_factory):
    """An 11-class (MGU-sized) checkpoint with seeded random weights, saved as the released files are."""
    torch.manual_seed(11)
    model = build_model(11, TINY_CONFIG)
    path = tmp_path_factory.mktemp("k11") / "k11.pt"
    torch.save({"epoch": 0, "model_state": model.state_dict(), "optimizer_state": {}, "best_metric": 0.0}, path)
    return path


def k11(path, *params):
    return load(f"checkpoint=str:{path}", f"config=str:{TINY_CONFIG}", *params)


# --- loading and parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("command", [["task", "auto-annotate"], ["function", "create-native"],
                                     ["function", "run-agent"]])
def test_cli_commands_the_docs_quote_exist(command):
    cli = Path(sys.executable).parent / "cvat-cli"  # the venv's console script
    done = subprocess.run([str(cli), *command, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for option in ("--function-module", "--function-parameter", "NAME=TYPE:VALUE"):
        assert option in done.stdout
    if command[1] == "auto-annotate":
        for option in ("--conv-mask-to-poly", "--conf-threshold", "--clear-existing"):
            assert option in done.stdout


def _cvat_cli_lines(text):
    """Every cvat-cli command line in the text's bash blocks (continuations joined, any leading
    VAR=value assignments dropped), as argv after the program name."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = []
    for line in lines:
        words = shlex.split(line, comments=True) if "cvat-cli" in line else []
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
            words = words[1:]
        if words and words[0].endswith("cvat-cli"):
            ends = [i for i, w in enumerate(words) if w in ("&", "&&", ";", "|", "||") or w.startswith(">")]
            commands.append(words[1:ends[0] if ends else None])  # the shell's part is not cvat-cli's
    return commands


def doc_commands():
    """The function commands (--function-module) of the README's cvat-cli section."""
    return [argv for argv in _cvat_cli_lines(doc_text()) if "--function-module" in argv]


DOCS_WITH_CVAT_CLI = ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]


@pytest.mark.parametrize("doc", DOCS_WITH_CVAT_CLI)
def test_every_quoted_cvat_cli_command_parses_with_cvat_cli(doc):
    """Issue 19, trip 1: each cvat-cli command the docs quote, in a block or inline with its
    options, goes through cvat-cli 2.80's own argument parser (placeholders become numbers)."""
    text = (ROOT / doc).read_text()
    commands = _cvat_cli_lines(text)
    inline = [shlex.split(span)[1:] for span in re.findall(r"`(?:\.venv/bin/)?(cvat-cli [^`]*)`", text)]
    commands += [argv for argv in inline if any(a.startswith("-") for a in argv)]  # a whole command, not a name
    for argv in commands:
        argv = [{"TASK_ID": "1", "FUNCTION_ID": "2"}.get(a, a) for a in argv]
        try:
            ns = cli_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc}: cvat-cli refuses: cvat-cli {shlex.join(argv)}")
        if argv[:2] == ["task", "create"]:
            assert ns.resource_type == "local" and ns.resources and isinstance(ns.labels, list)
            assert [d["name"] for d in ns.labels] == list(PROFILES["nr206"].class_names[1:])


@pytest.mark.docs
def test_docs_quote_every_kind():
    commands = [" ".join(argv) for argv in doc_commands()]
    assert sum("task auto-annotate" in c for c in commands) == 2
    for kind in ("interactor", "tracker"):
        assert sum("function create-native" in c and f"kind=str:{kind}" in c for c in commands) == 1
        assert sum("function run-agent" in c and f"kind=str:{kind}" in c for c in commands) == 1
    assert sum("function create-native" in c and "kind=" not in c for c in commands) == 1  # the detector


def doc_task_labels(profile):
    row = next(line for line in doc_text().splitlines() if line.startswith(f"| `{profile}`"))
    return json.loads(re.search(r"`(\[.*\])`", row).group(1))


@pytest.mark.docs
@pytest.mark.parametrize("argv", doc_commands(), ids=lambda a: " ".join(a[4:7]))
def test_docs_commands_run_through_cvat_cli(argv):
    """Each documented command line, parsed by cvat-cli's parser and loaded by its loader.

    Only the checkpoint differs (the tiny fixture and its config instead of the released file),
    and the placeholders get numbers."""
    argv = [{"TASK_ID": "1", "FUNCTION_ID": "2"}.get(a, a) for a in argv]
    argv = [f"checkpoint=str:{TINY_CKPT}" if a.startswith("checkpoint=str:") else a for a in argv]
    argv += ["-p", f"config=str:{TINY_CONFIG}", "-p", "min_area=int:100"]
    ns = cli_parser().parse_args(argv)
    function = FunctionLoader(ns.function_module, ns.function_file, ns.function_parameters).load()
    kind = ns.function_parameters.get("kind", "detector")
    driver = get_function_driver_class(function.spec)
    assert driver.FUNCTION_KIND == kind
    # what create-native registers, and what run-agent checks against it at start
    fields = driver.get_remote_function_fields(function.spec)
    remote = {**fields, "startswith_box": False, "startswith_box_optional": True} if kind == "interactor" else fields
    driver(None, None, function.spec).validate_function_compatibility(remote)
    if "auto-annotate" in argv:
        # the documented task labels take what the function returns
        task_labels = [models.Label(name=d["name"], id=50 + i, type=d["type"], attributes=[], sublabels=[])
                       for i, d in enumerate(doc_task_labels("nr206"))]
        mapper = _AnnotationMapper(LOG, function.spec.labels, task_labels, allow_unmatched_labels=False,
                                   conv_mask_to_poly=ns.conv_mask_to_poly)
        ctx = context(conf_threshold=None, conv_mask_to_poly=ns.conv_mask_to_poly)
        _, shapes = mapper.validate_and_remap(function.detect(ctx, frame()), ds_frame=3)
        assert shapes and {s.type.value for s in shapes} == {"polygon" if ns.conv_mask_to_poly else "mask"}
        if ns.conf_threshold is not None:  # the threshold the command gives is honoured
            kept = function.detect(context(conf_threshold=ns.conf_threshold), frame())
            assert all(s.score >= ns.conf_threshold for s in kept)


@pytest.mark.docs
@pytest.mark.parametrize("profile", ["nr206", "mgu"])
def test_docs_task_labels_are_the_profile_layers(profile):
    assert [d["name"] for d in doc_task_labels(profile)] == list(PROFILES[profile].class_names[1:])


@pytest.mark.docs
def test_docs_list_every_parameter():
    text = doc_text()
    for name, meaning in cvat_function.PARAMETERS.items():
        assert f"| `-p {name}={cvat_function.parameter_type(name)}:…` | {meaning} |" in text


def test_parameters_are_the_pipeline_options():
    from dataclasses import fields

    from sam2oct.pipeline.options import PipelineOptions
    # all but the Nuclio function's reply format: cvat-sdk writes these functions' replies
    assert list(cvat_function.PARAMETERS) == ["kind"] + [f.name for f in fields(PipelineOptions)
                                                         if f.name != "cvat_ui"]
    with pytest.raises(cvat_function.ParameterError, match="unknown parameter -p cvat_ui"):
        load(*TINY, "cvat_ui=str:legacy")


def test_unknown_parameter_is_refused_listing_the_known_ones():
    with pytest.raises(cvat_function.ParameterError) as caught:
        load(*TINY, "colour=str:red", "thresh=float:0.5")
    message = str(caught.value)
    assert "unknown parameters -p colour, -p thresh" in message
    for name in cvat_function.PARAMETERS:
        assert name in message.split("known ones are:")[1]
    assert isinstance(caught.value, CriticalError)  # cvat-cli prints it as one line, no traceback


def test_missing_checkpoint_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("SAM2_CHECKPOINT", raising=False)
    with pytest.raises(cvat_function.ParameterError) as caught:
        load(f"config=str:{TINY_CONFIG}")
    message = str(caught.value)
    assert message.startswith("-p checkpoint=str:PATH (or SAM2_CHECKPOINT): no checkpoint given")
    assert "python -m sam2oct download nr206" in message


def test_wrong_checkpoint_names_it_and_says_how_to_get_one(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(cvat_function.ParameterError) as caught:
        load(f"checkpoint=str:{bad}", f"config=str:{TINY_CONFIG}")
    message = str(caught.value)
    assert message.startswith("-p checkpoint: ") and str(bad) in message
    assert "python -m sam2oct download nr206" in message
    assert caught.value.option == "checkpoint"


def test_checkpoint_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAM2_CHECKPOINT", str(TINY_CKPT))
    function = load(f"config=str:{TINY_CONFIG}")
    assert [label.name for label in function.spec.labels] == list(PROFILES["nr206"].class_names[1:])
    monkeypatch.setenv("SAM2_CHECKPOINT", str(tmp_path / "missing.pt"))
    with pytest.raises(cvat_function.ParameterError, match=r"^SAM2_CHECKPOINT \(no -p checkpoint given\): "):
        load(f"config=str:{TINY_CONFIG}")
    # -p wins over the variable
    assert load(*TINY).spec == function.spec


@pytest.mark.parametrize("param, message", [
    ("kind=str:segmenter", "-p kind: 'segmenter' is not one of detector, interactor, tracker"),
    ("min_area=str:16", "-p min_area: '16' is text, and min_area is a number: write -p min_area=int:16"),
    ("simplify=str:0.5", "write -p simplify=float:0.5"),
    ("min_area=float:2.5", "-p min_area: 2.5 is not an integer"),
    ("profile=str:retina", "-p profile: 'retina' is not one of"),
    ("label_style=str:numbers", "-p label_style: 'numbers' is not one of names, index"),
    ("snap_px=float:-1", "-p snap_px: -1.0 is outside"),
    ("device=str:tpu", "-p device: 'tpu'"),
    ("profile=str:mgu", "-p profile: the checkpoint has 9 classes but profile 'mgu' expects 11"),
    ("class_names=str:a,b", "-p class_names: 2 class names given but the checkpoint has 9 classes"),
    ("config=str:/no/such/config.yaml", "-p config: "),
])
def test_bad_parameter_values_name_the_parameter(param, message):
    with pytest.raises(cvat_function.ParameterError) as caught:
        load(*TINY, param)
    assert message in str(caught.value)


# --- detector ------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile, params", [
    ("nr206", ()),
    ("nr206", ("label_style=str:index",)),
])
def test_detector_labels_are_the_profile_layers(profile, params):
    function = load(*TINY, *params)
    names = PROFILES[profile].class_names
    index = "label_style=str:index" in params
    expected = [(k, f"OCT_Object_{k}" if index else names[k], "mask") for k in range(1, len(names))]
    assert isinstance(function.spec, cvataa.DetectionFunctionSpec)
    assert [(label.id, label.name, label.type) for label in function.spec.labels] == expected


def test_detector_labels_of_an_11_class_checkpoint(k11_checkpoint):
    for params, names in [((), PROFILES["mgu"].class_names[1:]),
                          (("label_style=str:index",), [f"OCT_Object_{k}" for k in range(1, 11)])]:
        function = k11(k11_checkpoint, *params)
        assert [label.name for label in function.spec.labels] == list(names)
        assert [label.id for label in function.spec.labels] == list(range(1, 11))


@pytest.mark.parametrize("task_type, conv", [("mask", False), ("polygon", True), ("any", False), ("any", True)])
def test_detector_output_passes_the_sdk_label_mapper(detector, task_type, conv):
    shapes = detector.detect(context(conv_mask_to_poly=conv), frame())
    task_labels = [models.Label(name=label.name, id=100 + label.id, type=task_type, attributes=[], sublabels=[])
                   for label in detector.spec.labels]
    mapper = _AnnotationMapper(LOG, detector.spec.labels, task_labels, allow_unmatched_labels=False,
                               conv_mask_to_poly=conv)
    ids = [s.label_id for s in shapes]
    tags, remapped = mapper.validate_and_remap(shapes, ds_frame=7)
    assert not tags and len(remapped) == len(shapes) > (5 if conv else 2)  # masks: one per layer
    assert [s.label_id for s in remapped] == [100 + k for k in ids]
    assert {s.type.value for s in remapped} == {"polygon" if conv else "mask"}
    assert all(s.frame == 7 and s.source == "auto" for s in remapped)


def test_mask_task_labels_refuse_conv_mask_to_poly(detector):
    # what the docs say: a task label of type mask cannot take --conv-mask-to-poly (cvat-sdk's rule)
    task_labels = [models.Label(name=label.name, id=label.id, type="mask", attributes=[], sublabels=[])
                   for label in detector.spec.labels]
    with pytest.raises(cvataa.BadFunctionError, match="'polygon' in the function, but 'mask' in the dataset"):
        _AnnotationMapper(LOG, detector.spec.labels, task_labels, allow_unmatched_labels=False, conv_mask_to_poly=True)


def test_detector_masks_are_the_layers_and_the_polygons_their_regions(detector):
    image = frame()
    masks = detector.detect(context(), image)
    polys = detector.detect(context(conv_mask_to_poly=True), image)
    p = detector.pipeline
    cleaned = p.label_map(p.encode(gray(image)))
    # one mask per layer of the cleaned map, exactly its pixels (the label id is the class channel)
    assert [s.label_id for s in masks] == [int(k) for k in np.unique(cleaned) if k]
    decoded = [decode_mask(s.points, image_width=W, image_height=H) for s in masks]
    for shape, mask in zip(masks, decoded):
        assert np.array_equal(mask, cleaned == shape.label_id)
    # one polygon per region piece; together they tile the layers (simplified: up to a few pixels)
    assert len(polys) > len(masks) and {s.label_id for s in polys} == {s.label_id for s in masks}
    owner = rasterize_shapes([{"points": np.reshape(s.points, (-1, 2)).tolist()} for s in polys], (H, W))
    classes = np.array([0] + [s.label_id for s in polys])[owner]
    assert np.mean(classes == cleaned) > 0.95


def test_detector_scores_and_confidence_threshold(detector):
    image = frame()
    every = detector.detect(context(), image)
    scores = sorted(s.score for s in every)
    assert all(0.0 < s <= 1.0 for s in scores)
    threshold = scores[len(scores) // 2]
    kept = detector.detect(context(conf_threshold=threshold), image)
    assert 0 < len(kept) < len(every)
    assert sorted(s.score for s in kept) == [s for s in scores if s >= threshold]


def image_in_mode(mode: str) -> Image.Image:
    """A B-scan in a PIL mode a B-scan file may give, all holding the same grey values.

    Integer frames are scaled by their own maximum (as CVAT shows them); with one pixel at 255,
    v * 257 over a maximum of 255 * 257 is exactly v / 255, the 8-bit scaling."""
    scan = CROP.copy()
    scan[0, 0] = 255
    if mode == "L":
        return Image.fromarray(scan)
    if mode == "I;16":
        return Image.fromarray(scan.astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(scan.astype(np.int32) * 257)
    if mode == "RGB":
        return Image.merge("RGB", [Image.fromarray(scan)] * 3)
    if mode == "P":  # a reversed grey palette: index i shows grey 255 - i
        image = Image.fromarray(255 - scan)
        image.putpalette(bytes(v for i in range(256) for v in (255 - i,) * 3))
        return image
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "RGB", "P"])
def test_every_image_mode_gives_the_same_answer(detector, interactor, mode):
    image = image_in_mode(mode)
    assert image.mode == mode
    reference = detector.detect(context(), image_in_mode("L"))
    got = detector.detect(context(), image)
    assert [(s.label_id, s.points) for s in got] == [(s.label_id, s.points) for s in reference]
    pp = interactor.preprocess_image(interaction._InteractionFunctionContextImpl(), image)
    assert np.array_equal(pp.gray, gray(image_in_mode("L")))


def test_sixteen_bit_file(detector):
    image = Image.open(DATA / "bscan_768x496_s1_16bit.png")
    assert image.mode == "I;16"
    assert detector.detect(context(), image.crop((232, 120, 232 + W, 120 + H)))


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_undecodable_frame_names_it(detector, interactor):
    broken = Image.open(io.BytesIO(png(frame())[:300]))  # opens (the header is there), cannot decode
    with pytest.raises(cvat_function.RequestRefused, match=r"^frame 'scan_07.png': the image could not be decoded"):
        detector.detect(context(frame_name="scan_07.png"), broken)
    broken = Image.open(io.BytesIO(png(frame())[:300]))
    with pytest.raises(cvat_function.RequestRefused, match=r"^the frame: the image could not be decoded") as caught:
        interactor.preprocess_image(interaction._InteractionFunctionContextImpl(), broken)
    # cvat-cli shows the message: one line from task auto-annotate, "Invalid annotation request" from an agent
    assert isinstance(caught.value, CriticalError) and isinstance(caught.value, agent_driver.BadArError)


def test_oversized_frame_names_it():
    function = load(*TINY, "max_pixels=int:10000")
    with pytest.raises(cvat_function.RequestRefused, match=r"^frame 'big.png': -p max_pixels: image is 160x112 = "
                                                          r"17920 pixels, over the pixel limit of 10000"):
        function.detect(context(frame_name="big.png"), frame())


def test_agent_detection_job(detector):
    as_agent_worker(detector)
    got = _worker_job_detect(context(conv_mask_to_poly=True), frame())
    assert [(s.label_id, s.points) for s in got] == \
        [(s.label_id, s.points) for s in detector.detect(context(conv_mask_to_poly=True), frame())]


# --- interactor ----------------------------------------------------------------------------------

def test_interactor_spec_as_the_agent_registers_it(interactor):
    spec = interactor.spec
    assert (spec.min_pos_points, spec.min_neg_points, spec.min_bounding_boxes) == (1, 0, 0)
    driver = get_function_driver_class(spec)
    assert driver.FUNCTION_KIND == "interactor"
    # negative clicks allowed, the box optional
    assert driver.get_remote_function_fields(spec) == {"min_pos_points": 1, "min_neg_points": 0,
                                                       "startswith_box_optional": True}


def test_click_picks_the_layer_region_through_the_agent(interactor):
    as_agent_worker(interactor)
    image = frame(shift=1)  # a frame no other test encodes
    p = interactor.pipeline
    before = p.predictor.encoder_calls
    key = (1, 0, ())
    click = (60.5, 50.5)
    (shape,) = interaction._worker_job_interact(key, image, prompts(pos=[click]))
    assert p.predictor.encoder_calls == before + 1  # preprocess_image encoded the frame
    # the next clicks on the frame come from the agent's cache and the pipeline's: no encoding
    driver = interaction.AgentInteractionFunctionDriver(None, InlineExecutor(), interactor.spec)
    result = driver.calculate_result_for_ar({"type": "interact", "task": 1, "frame": 0, "pos_points": [list(click)],
                                             "neg_points": [], "obj_bbox": []}, None)
    assert p.predictor.encoder_calls == before + 1
    assert result["shapes"] == [{"type": "mask", "points": shape.points, "attributes": shape.attributes}]

    assert shape.type == "mask"
    mask = decode_mask(shape.points, image_width=W, image_height=H)
    prediction = p.predict(p.encode(gray(image)), confidence=True)
    cleaned = p.label_map(p.encode(gray(image)))  # clicks select from the cleaned map
    assert cleaned[50, 60] != 0
    assert (mask == component(cleaned, 50, 60)).all()
    (confidence,) = shape.attributes
    assert confidence.spec_id == cvataa.InteractionResultAttributes.CONFIDENCE
    assert isinstance(confidence.value, str)
    assert float(confidence.value) == pytest.approx(prediction.confidence[mask].mean(), abs=1e-4)


def test_negative_click_and_box(interactor):
    p = interactor.pipeline
    image = frame()
    pp = interactor.preprocess_image(interaction._InteractionFunctionContextImpl(), image)
    ctx = interaction._InteractionFunctionContextImpl()
    label_map = p.label_map(p.encode(gray(image)))
    # a negative click on the clicked region removes it: nothing left to answer
    assert interactor.detect(ctx, pp, prompts(pos=[(60.5, 50.5)], neg=[(60.5, 50.5)])) == []
    # the box limits the answer to the pixels whose centre it holds
    box = ((40, 30), (120, 80))
    (shape,) = interactor.detect(ctx, pp, prompts(pos=[(60.5, 50.5)], box=box))
    limited = np.zeros_like(label_map)
    limited[30:80, 40:120] = label_map[30:80, 40:120]
    mask = decode_mask(shape.points, image_width=W, image_height=H)
    assert (mask == component(limited, 50, 60)).all()
    assert not mask[:30].any() and not mask[80:].any() and not mask[:, :40].any() and not mask[:, 120:].any()
    # corners in either order
    (again,) = interactor.detect(ctx, pp, prompts(pos=[(60.5, 50.5)], box=((120, 80), (40, 30))))
    assert again.points == shape.points
    # a click far outside the frame is refused with a message (an agent shows it)
    with pytest.raises(cvat_function.RequestRefused, match=r"positive point \(-500, 10\) lies outside the 160x112"):
        interactor.detect(ctx, pp, prompts(pos=[(-500, 10)]))


def test_click_on_background_answers_nothing_and_near_a_layer_snaps():
    image = Image.fromarray(FULL)  # the tiny model sees background in a few small spots here
    ctx = interaction._InteractionFunctionContextImpl()
    exact = load(*TINY, "kind=str:interactor", "snap_px=float:0", "min_area=int:0")  # keep the specks
    row, col, label_map = background_pixel(exact, image)
    click = (col + 0.5, row + 0.5)
    assert exact.detect(ctx, exact.preprocess_image(ctx, image), prompts(pos=[click])) == []

    snapping = load(*TINY, "kind=str:interactor", "min_area=int:0")  # snap_px 3 by default
    (shape,) = snapping.detect(ctx, snapping.preprocess_image(ctx, image), prompts(pos=[click]))
    mask = decode_mask(shape.points, image_width=FULL.shape[1], image_height=FULL.shape[0])
    # the region of one of the nearest layer pixels (within 3 pixels)
    rows, cols = np.nonzero(label_map[max(row - 3, 0):row + 4, max(col - 3, 0):col + 4])
    rows, cols = rows + max(row - 3, 0), cols + max(col - 3, 0)
    d2 = (rows - row) ** 2 + (cols - col) ** 2
    assert d2.min() <= 9
    nearest = [(r, c) for r, c, d in zip(rows, cols, d2) if d == d2.min()]
    assert any((mask == component(label_map, r, c)).all() for r, c in nearest)


def test_prompted_profile_gives_clicks_and_box_to_the_model(k11_checkpoint):
    function = k11(k11_checkpoint, "kind=str:interactor", "profile=str:mgu_prompted")
    ctx = interaction._InteractionFunctionContextImpl()
    image = frame()
    pp = function.preprocess_image(ctx, image)
    click, box = (60.5, 50.5), ((20, 10), (140, 100))
    (shape,) = function.detect(ctx, pp, prompts(pos=[click], box=box))
    p = function.pipeline
    encoded = p.encode(pp.gray)
    prompted = p.predict(encoded, points=np.array([click]), point_labels=np.array([1.0]),
                         box=np.array([20.0, 10.0, 140.0, 100.0])).label_map
    assert (prompted != p.predict(encoded).label_map).any()
    prompted = p.clean(prompted)  # clicks select from the cleaned map  # the prompts change the model's answer
    limited = np.zeros_like(prompted)
    limited[10:100, 20:140] = prompted[10:100, 20:140]
    assert limited[50, 60] != 0
    assert (decode_mask(shape.points, image_width=W, image_height=H) == component(limited, 50, 60)).all()


# --- tracker -------------------------------------------------------------------------------------

def test_tracker_spec_as_the_agent_registers_it(tracker):
    assert tracker.spec.supported_shape_types == {"mask", "polygon"}
    driver = get_function_driver_class(tracker.spec)
    assert driver.FUNCTION_KIND == "tracker"
    assert driver.get_remote_function_fields(tracker.spec) == {"supported_shape_types": ["mask", "polygon"]}


def start_shapes(function, image, pick):
    """A mask and a polygon of one layer region of ``image`` (the first one ``pick`` accepts)."""
    k, mask, region = next((k, m, r) for k, m, r in layer_regions(function, image) if pick(k, m))
    return k, mask, [cvataa.TrackableShape(type="mask", points=encode_mask(mask)),
                     cvataa.TrackableShape(type="polygon", points=flatten_points(region.points))]


def states_of(ids):
    return [tracking._tracking_states.retrieve(i, task_id=1, image_dims=(W, H))[0] for i in ids]


def test_track_a_layer_over_several_bscans(tracker):
    as_agent_worker(tracker)
    frames = [frame(shift) for shift in (0, 2, 4, 6)]
    # a region of a layer that is not the frame's biggest, as a mask and as a polygon; and a
    # polygon over the whole frame, which follows the layer most of the frame shows
    k, mask, shapes = start_shapes(tracker, frames[0], lambda k, m: k == 3 and m.sum() > 300)
    shapes.append(cvataa.TrackableShape(type="polygon", points=[0, 0, W, 0, W, H, 0, H]))
    label_map = tracker.pipeline.label_map(tracker.pipeline.encode(gray(frames[0])))
    most = int(np.argmax(np.bincount(label_map.ravel(), minlength=9)[1:])) + 1
    ids = tracking._worker_job_init_tracking(1, frames[0], shapes)
    assert [s.class_index for s in states_of(ids)] == [k, k, most]
    classes, previous = [k, k, most], [mask, mask, np.ones((H, W), bool)]
    contested = 0
    for image in frames[1:]:
        answers = tracking._worker_job_track(1, image, ids)
        assert [a.type for a in answers] == ["mask", "polygon", "polygon"]
        got = [decode_mask(answers[0].points, image_width=W, image_height=H),
               polygon_mask(answers[1].points), polygon_mask(answers[2].points)]
        regions = layer_regions(tracker, image)
        chosen = []
        for i in range(3):
            # the region of the layer on this frame that overlaps the previous position most
            candidates = [m for c, m, _ in regions if c == classes[i]]
            overlaps = [np.count_nonzero(m & previous[i]) for m in candidates]
            assert max(overlaps) > 0
            best = candidates[int(np.argmax(overlaps))]
            chosen.append(best)
            if i == 0:  # a mask is the region's pixels exactly
                assert (got[i] == best).all()
            else:  # a polygon is its simplified outline (1 px)
                assert np.count_nonzero(got[i] & best) / np.count_nonzero(got[i] | best) > 0.8
            contested += np.count_nonzero(overlaps) > 1
        # a mask and a polygon of one region follow the same region
        assert (chosen[0] == chosen[1]).all()
        previous = chosen
    assert contested  # some step had several regions to choose from


def test_track_answers_none_when_the_layer_is_gone(tracker):
    as_agent_worker(tracker)
    start = frame()
    # the layer is absent from the next frame
    bright = Image.fromarray(np.full_like(CROP, 255))
    present = {k for k, _, _ in layer_regions(tracker, bright)}
    k, _, shapes = start_shapes(tracker, start, lambda k, m: k not in present)
    ids = tracking._worker_job_init_tracking(1, start, shapes)
    assert tracking._worker_job_track(1, bright, ids) == [None, None]
    # the layer is there, but none of its regions overlaps the shape
    flipped = frame(base=CROP[::-1].copy())
    after = layer_regions(tracker, flipped)
    k, _, shapes = start_shapes(tracker, start, lambda k, m: any(c == k for c, _, _ in after) and
                                not any(c == k and (m & n).any() for c, n, _ in after))
    ids = tracking._worker_job_init_tracking(1, start, shapes)
    assert tracking._worker_job_track(1, flipped, ids) == [None, None]


def background_shapes(function, image):
    row, col, _ = background_pixel(function, image)
    mask = np.zeros(np.asarray(image).shape, dtype=bool)
    mask[row, col] = True
    square = [col, row, col + 1, row, col + 1, row + 1, col, row + 1]
    return [cvataa.TrackableShape(type="mask", points=encode_mask(mask)),
            cvataa.TrackableShape(type="polygon", points=square)]


def test_shape_on_background_is_refused_at_init(tracker):
    image = Image.fromarray(FULL)
    pp = tracker.preprocess_image(tracking._TrackingFunctionContextImpl(), image)
    for shape in background_shapes(tracker, image):
        with pytest.raises(cvat_function.RequestRefused, match=f"the {shape.type} shape covers no retinal layer"):
            tracker.init_tracking_state(shape_context(shape.type), pp, shape)
    empty = cvataa.TrackableShape(type="polygon", points=[10, 10, 10.2, 10, 10.2, 10.2])
    with pytest.raises(cvat_function.RequestRefused, match="covers no pixel"):
        tracker.init_tracking_state(shape_context("polygon"), pp, empty)
    garbled = cvataa.TrackableShape(type="mask", points=[5, 3, 0, 0, 1, 1])
    with pytest.raises(cvat_function.RequestRefused, match="the mask shape cannot be read"):
        tracker.init_tracking_state(shape_context("mask"), pp, garbled)


def test_agent_reports_the_refusal_to_cvat(tracker):
    """An agent answers CVAT with the message of our refusal, not "Unknown error"."""
    image = Image.fromarray(FULL)
    pp = tracker.preprocess_image(tracking._TrackingFunctionContextImpl(), image)
    shape = background_shapes(tracker, image)[0]
    with pytest.raises(cvat_function.RequestRefused) as caught:
        tracker.init_tracking_state(shape_context("mask"), pp, shape)

    calls = []

    def call_api(path, method, path_params=None, body=None, **kwargs):
        calls.append((path, body))

    def calculate_result_for_ar(ar_params, check_in):
        raise caught.value

    agent = object.__new__(_Agent)  # its request handling alone, without a server connection
    agent._client = SimpleNamespace(api_client=SimpleNamespace(call_api=call_api), logger=LOG)
    agent._function_id, agent._agent_id = 1, "test"
    agent._task_cache_limiter = SimpleNamespace(using_cache_for_task=lambda task: contextlib.nullcontext())
    agent._function_driver = SimpleNamespace(calculate_result_for_ar=calculate_result_for_ar)
    agent._process_ar({"ar_id": "r1", "ar_params": {"type": "init_tracking", "task": 1, "frame": 0}})
    ((path, body),) = calls
    assert path.endswith("/fail")
    assert body["exc_info"] == f"Invalid annotation request: {caught.value}"
    assert "covers no retinal layer" in body["exc_info"]


def test_prompted_tracker_paints_the_previous_position(k11_checkpoint):
    function = k11(k11_checkpoint, "kind=str:tracker", "profile=str:mgu_prompted", "min_area=int:16")
    ctx = tracking._TrackingFunctionContextImpl()
    start, after = frame(), frame(shift=3)
    k, previous, shapes = start_shapes(function, start, lambda k, m: True)
    state = function.init_tracking_state(shape_context("mask"), function.preprocess_image(ctx, start), shapes[0])
    shape = function.track(shape_context("mask"), function.preprocess_image(ctx, after), state)
    p = function.pipeline
    encoded = p.encode(gray(after))
    painted = np.full((H, W), -1)
    painted[previous] = k
    prompted = p.predict(encoded, dense_labels=painted, confidence=True)
    assert (prompted.label_map != p.predict(encoded).label_map).any()  # the prompt changes the answer
    candidates = [m for c, m, _ in layer_regions(function, after, prediction=prompted) if c == k]
    overlaps = [np.count_nonzero(m & previous) for m in candidates]
    got = decode_mask(shape.points, image_width=W, image_height=H)
    assert (got == candidates[int(np.argmax(overlaps))]).all()


# --- pickling and the agent's worker process -------------------------------------------------------

@pytest.mark.parametrize("kind", ["detector", "interactor", "tracker"])
def test_functions_pickle_without_the_model_before_and_after_use(kind):
    function = load(*TINY, f"kind=str:{kind}")
    data = pickle.dumps(function)
    assert len(data) < 50_000  # the options and spec, not the model's weights
    fresh = pickle.loads(data)
    assert fresh.spec == function.spec
    image = frame()
    if kind == "detector":
        use = lambda f: [(s.label_id, s.points) for s in f.detect(context(), image)]  # noqa: E731
    elif kind == "interactor":
        use = lambda f: f.detect(None, f.preprocess_image(None, image), prompts(pos=[(60.5, 50.5)]))  # noqa: E731
    else:
        shape = cvataa.TrackableShape(type="mask", points=encode_mask(CROP > 128))
        use = lambda f: f.init_tracking_state(shape_context("mask"), f.preprocess_image(None, image), shape)  # noqa: E731
    first = use(function)
    assert use(fresh) == first
    used = pickle.loads(pickle.dumps(function))  # after use: still no model in the pickle
    assert len(pickle.dumps(function)) < 50_000 and use(used) == first


def test_tracking_state_pickles(tracker):
    ctx = tracking._TrackingFunctionContextImpl()
    start, after = frame(), frame(shift=2)
    _, _, shapes = start_shapes(tracker, start, lambda k, m: k == 3 and m.sum() > 300)
    state = tracker.init_tracking_state(shape_context("polygon"), tracker.preprocess_image(ctx, start), shapes[1])
    copy = pickle.loads(pickle.dumps(state))
    assert copy == state
    pp = pickle.loads(pickle.dumps(tracker.preprocess_image(ctx, after)))
    assert tracker.track(shape_context("polygon"), pp, copy) == tracker.track(shape_context("polygon"), pp, state)
    assert copy == state  # both moved on to the same place


def test_agent_worker_process(tracker):
    """cvat-cli's own worker process (spawned, as run-agent starts it): load, init_tracking, track,
    a pickled function and state sent into it, and a refusal coming back out of it."""
    ctx = tracking._TrackingFunctionContextImpl()
    start, after = frame(), frame(shift=2)
    _, _, shapes = start_shapes(tracker, start, lambda k, m: k == 3 and m.sum() > 300)
    state = tracker.init_tracking_state(shape_context("mask"), tracker.preprocess_image(ctx, start), shapes[0])
    expected = tracker.track(shape_context("mask"), tracker.preprocess_image(ctx, after), pickle.loads(pickle.dumps(state)))
    as_agent_worker(tracker)
    here = tracking._worker_job_track(1, after, tracking._worker_job_init_tracking(1, start, shapes))

    loader = loader_of(["function", "run-agent", "2", "--function-module", MODULE,
                        *sum((["-p", p] for p in TRACKER), [])])
    with RecoverableExecutor(initializer=_worker_init, initargs=[loader, _default_tracking_state_id_generator]) as ex:
        assert ex.result(ex.submit(_worker_job_get_function_spec)) == tracker.spec
        ids = ex.result(ex.submit(tracking._worker_job_init_tracking, 1, start, shapes))
        assert ex.result(ex.submit(tracking._worker_job_track, 1, after, ids)) == here
        pp = tracker.preprocess_image(ctx, after)
        assert ex.result(ex.submit(tracker.track, shape_context("mask"), pp, state)) == expected
        with pytest.raises(cvat_function.RequestRefused, match="covers no retinal layer"):
            image = Image.fromarray(FULL)
            ex.result(ex.submit(tracking._worker_job_init_tracking, 1, image, background_shapes(tracker, image)[:1]))


# --- docs/troubleshooting.md (issue 19, trip 5) ------------------------------------------------------

def test_troubleshooting_quotes_the_texts_cvat_sdk_and_cvat_cli_really_print(capsys):
    """Each cvat-cli / cvat-sdk text the page quotes is produced by the installed 2.80 code, and the
    README links the page."""
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert "(docs/troubleshooting.md)" in (ROOT / "README.md").read_text()
    task = [models.Label(name="Layer 1", id=1, type="polygon", attributes=[], sublabels=[])]
    spec = load(f"checkpoint=str:{TINY_CKPT}", f"config=str:{TINY_CONFIG}").spec
    seen = []
    for ds_labels, conv in ((task, False), ([models.Label(name="NFL", id=1, type="polygon", attributes=[],
                                                          sublabels=[])], False)):
        try:
            _AnnotationMapper(LOG, spec.labels, ds_labels, allow_unmatched_labels=False, conv_mask_to_poly=conv)
        except Exception as exc:  # cvat-sdk's BadFunctionError
            seen.append(f"{type(exc).__name__}: {exc}")
    assert seen == ["BadFunctionError: label 'NFL' is not in dataset",
                    "BadFunctionError: label 'NFL' has type 'mask' in the function, but 'polygon' in the dataset"]
    for text in seen:
        assert f"`{text}`" in page, text
    for argv, text in ((["task", "auto-annotate", "1", "--function-module", MODULE, "-p", "checkpoint=x.pt"],
                        "argument --function-parameter/-p: parameter type not specified"),
                       (["task", "create", "x", "--labels", "[]", "scan_001.png"],
                        "argument resource_type: invalid choice: 'scan_001.png' (choose from local, share, remote)")):
        with pytest.raises(SystemExit):
            cli_parser().parse_args(argv)
        said = capsys.readouterr().err.strip().splitlines()[-1]  # argparse: "PROG: error: MESSAGE"
        assert said.endswith(f": error: {text}") and f"`error: {text}`" in page, (said, text)
    for words in ("Page not found at /api/functions", "--allow-unmatched-labels", "-p checkpoint=str:",
                  "-p label_style=str:index", "HF_ENDPOINT", "set the model config to", "CVAT for images 1.1"):
        assert words in page, words
