"""cvat-cli's front door: the model as a cvat-sdk auto-annotation function (detector, interactor, tracker).

    cvat-cli task auto-annotate TASK --function-module sam2oct.cvat_function -p checkpoint=str:PATH
    cvat-cli function create-native NAME --function-module sam2oct.cvat_function \\
        -p kind=str:interactor -p checkpoint=str:PATH          (then: function run-agent ID, same -p)

cvat-cli imports this module and calls :func:`create` with the ``-p`` parameters: ``kind``
(detector, interactor or tracker) and every :class:`~sam2oct.pipeline.options.PipelineOptions` field.
Everything else is the pipeline's; this module only translates between cvat-sdk's types and it.
"""

from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, fields, replace

import cvat_sdk.auto_annotation as cvataa
import numpy as np
from cvat_sdk import models
from cvat_sdk.masks import decode_mask, encode_mask

from sam2oct.geometry import polygons
from sam2oct.serving import cvat_request
from sam2oct.errors import ConfigError, RequestError, Sam2OctError, describe
from sam2oct.logs import option_names
from sam2oct.model.discovery import find_checkpoint
from sam2oct.pipeline.options import NUCLIO_ONLY, OPTION_ENV, OPTION_HELP, PipelineOptions
from sam2oct.pipeline.pipeline import Pipeline

try:
    # cvat-cli shows the message of these exception types and hides others: the agent answers
    # CVAT's UI "Unknown error" for any other type, and the CLI prints a traceback instead of
    # one line. Private names, hence the pinned cvat-cli version.
    from cvat_cli._internal.agent_driver import BadArError as _AgentShowsMessage
    from cvat_cli._internal.common import CriticalError as _CliShowsMessage
except ImportError:  # the SDK alone (cvat_sdk.auto_annotation.annotate_task called from Python)
    class _AgentShowsMessage(Exception):
        pass

    class _CliShowsMessage(Exception):
        pass

log = logging.getLogger(__name__)

KINDS = ("detector", "interactor", "tracker")
CHECKPOINT_ENV = OPTION_ENV["checkpoint"]
# The options cvat-cli can set: all but the Nuclio function's own (its reply format: for cvat-cli
# functions cvat-sdk writes the reply).
_OPTIONS = tuple(name for name in PipelineOptions.names() if name not in NUCLIO_ONLY)
# -p name -> one line of help; the README's table and the refusal of unknown names use these.
PARAMETERS = {"kind": f"{', '.join(KINDS)} (default detector): what the function does",
              **{name: OPTION_HELP[name] for name in _OPTIONS}}
PARAMETER_NAMES = {name: f"-p {name}" for name in _OPTIONS}  # errors.describe's names
_DEFAULTS = {f.name: f.default for f in fields(PipelineOptions) if f.default is not MISSING}


def parameter_type(name: str) -> str:
    """The TYPE to write in ``-p NAME=TYPE:VALUE`` for a parameter: str, int or float."""
    default = _DEFAULTS.get(name)
    return type(default).__name__ if isinstance(default, (int, float)) else "str"


class ParameterError(ConfigError, _CliShowsMessage):
    """A ``-p`` parameter (or the checkpoint it names) the function cannot work with."""


class RequestRefused(RequestError, _AgentShowsMessage, _CliShowsMessage):
    """A frame, prompt or shape the function cannot work on; the message says which and why."""


# --- loading --------------------------------------------------------------------------------

def create(**params):
    """cvat-cli's factory: ``-p NAME=TYPE:VALUE`` parameters in, the function object out."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ParameterError(f"unknown parameter{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(f'-p {n}' for n in unknown)}; the known ones are: "
                             f"{', '.join(PARAMETERS)}")
    kind = params.pop("kind", "detector")
    if kind not in KINDS:
        raise ParameterError(f"-p kind: {kind!r} is not one of {', '.join(KINDS)}", option="kind")
    for name, value in params.items():
        default = _DEFAULTS[name]
        if isinstance(value, str) and isinstance(default, (int, float)):
            raise ParameterError(f"-p {name}: {value!r} is text, and {name} is a number: write "
                                 f"-p {name}={parameter_type(name)}:{value}", option=name)
    names = dict(PARAMETER_NAMES)
    try:
        options = PipelineOptions(**params)
        if not options.checkpoint:  # $SAM2_CHECKPOINT, else ./models, else the Hugging Face cache
            names["checkpoint"] = f"-p checkpoint=str:PATH (or {CHECKPOINT_ENV})"
            found = find_checkpoint(profile=options.profile, env_var=CHECKPOINT_ENV)
            if found.source == "env":
                names["checkpoint"] = f"{CHECKPOINT_ENV} (no -p checkpoint given)"
            options = replace(options, checkpoint=found.path, profile=found.profile or options.profile)
        with option_names(names):  # the pipeline's warnings name -p parameters
            function = {"detector": Detector, "interactor": Interactor, "tracker": Tracker}[kind](options)
    except Sam2OctError as exc:  # the same error, in this front door's names
        raise ParameterError(describe(exc, names), option=exc.option) from exc
    return function


class _Function:
    """The options and, built from them in whichever process uses it, the pipeline."""

    def __init__(self, options: PipelineOptions):
        self.options = options
        self._pipeline = Pipeline(options)  # now: a wrong checkpoint is refused at load time

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.options)
        return self._pipeline

    def __getstate__(self):
        # The model stays behind: a copy in another process builds its own from the options.
        return {**self.__dict__, "_pipeline": None}


@dataclass(frozen=True, eq=False)
class Frame:
    """A frame the function has encoded, as the agent keeps it between calls.

    Only the grey image: the agent keeps what ``preprocess_image`` returns for ten minutes
    whatever the number of frames, so the features stay in the pipeline's bounded cache (on
    the model's device) and a frame evicted from it is encoded again.
    """

    gray: np.ndarray

    @property
    def size(self) -> tuple:
        return self.gray.shape


class _FrameFunction(_Function):
    """A function the agent hands each frame once (preprocess_image), then prompts or shapes on it."""

    def preprocess_image(self, context, image) -> Frame:
        """Encode the frame once; the calls on it find its features in the pipeline's cache."""
        gray = read_frame(self.pipeline, image)
        self.pipeline.encode(gray)
        return Frame(gray)


def read_frame(pipeline: Pipeline, image, frame_name: str | None = None) -> np.ndarray:
    """A PIL image of any mode a B-scan file gives -> grey [H, W]; one error naming the frame otherwise."""
    where = f"frame {frame_name!r}" if frame_name else "the frame"
    try:
        return pipeline.read_pil(image)
    except RequestError as exc:  # e.g. over the pixel limit: "-p max_pixels: image is ..."
        raise RequestRefused(f"{where}: {describe(exc, PARAMETER_NAMES)}", exc.status, option=exc.option) from exc
    except MemoryError:
        raise
    except Exception as exc:  # PIL decodes lazily: a corrupt file fails here, in whatever way
        raise RequestRefused(f"{where}: the image could not be decoded ({type(exc).__name__}: "
                             f"{str(exc)[:300]})") from exc


def mask_points(mask: np.ndarray, offset=(0, 0)) -> list:
    """CVAT's mask ``points`` (cvat_sdk.masks.encode_mask) of a tight crop placed at ``offset`` (x, y).

    As floats, the type of CVAT's ``points``: the SDK's models convert ints one by one, at twice the cost.
    """
    points = encode_mask(np.asarray(mask, dtype=bool))
    dx, dy = (int(v) for v in offset)
    points[-4:] = [points[-4] + dx, points[-3] + dy, points[-2] + dx, points[-1] + dy]
    return [float(v) for v in points]


def shape_mask(shape_type: str, points, height: int, width: int) -> np.ndarray:
    """The pixels of a CVAT mask or polygon shape (a polygon holds the pixels whose centre it holds)."""
    try:
        if shape_type == "mask":
            return decode_mask(list(points), image_width=width, image_height=height)
        pairs = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if len(pairs) < 3 or not np.isfinite(pairs).all():
            raise ValueError(f"a polygon needs at least 3 finite points, got {len(points)} values")
        return polygons.rasterize_shapes([{"points": pairs.tolist()}], (height, width)) > 0
    except ValueError as exc:
        raise RequestRefused(f"the {shape_type} shape cannot be read: {exc}") from exc


# --- detector -------------------------------------------------------------------------------

class Detector(_Function):
    """The cleaned label map: one mask per layer per frame (a CVAT mask may hold several parts),
    or with --conv-mask-to-poly one polygon per layer region."""

    def __init__(self, options: PipelineOptions):
        super().__init__(options)
        # The function's label ids are the class channels; CVAT matches the task's labels by name.
        self.spec = cvataa.DetectionFunctionSpec(labels=[
            cvataa.label_spec(name, k, type="mask") for k, name in enumerate(self.pipeline.labels) if k])

    def detect(self, context, image) -> list:
        p = self.pipeline
        gray = read_frame(p, image, context.frame_name)
        encoded = p.encode(gray)
        # cvat-sdk tells whether the shapes become polygons (the driver then refuses masks)
        if context.conv_mask_to_poly:
            return self.annotations(p.regions(encoded, context.conf_threshold), True)
        return self.annotations(p.layers(encoded, context.conf_threshold))

    @staticmethod
    def annotations(regions, conv_mask_to_poly: bool = False) -> list:
        """Pipeline regions (or layers) as cvat-sdk shapes: label id = class channel, score = mean
        class probability; masks are the pixels of the cleaned label map exactly."""
        if conv_mask_to_poly:
            return [cvataa.polygon(r.class_index, polygons.flatten_points(r.points), score=r.score)
                    for r in regions]
        return [cvataa.mask(r.class_index, mask_points(r.mask, r.offset), score=r.score) for r in regions]


# --- interactor -----------------------------------------------------------------------------

class Interactor(_FrameFunction):
    """Clicks pick layers (pipeline.interact); the answer is one mask of the picked regions."""

    # A box is optional (min_bounding_boxes=0); at least one positive click.
    spec = cvataa.InteractionFunctionSpec(min_pos_points=1, min_neg_points=0, min_bounding_boxes=0)

    def detect(self, context, pp_image: Frame, prompts) -> list:
        p = self.pipeline
        encoded = p.encode(pp_image.gray)
        h, w = pp_image.size
        try:
            pos = cvat_request.fit_points(np.asarray(prompts.pos_points, dtype=np.float64).reshape(-1, 2), h, w, "positive")
            neg = cvat_request.fit_points(np.asarray(prompts.neg_points, dtype=np.float64).reshape(-1, 2), h, w, "negative")
            box = prompts.bounding_box
            if box is not None:
                (x1, y1), (x2, y2) = box
                box = cvat_request.fit_bbox(np.array([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], float), h, w)
        except RequestError as exc:
            raise RequestRefused(str(exc), exc.status) from exc
        picked = p.interact(encoded, pos, neg, box, confidence=True)
        if not picked.mask.any():
            log.info("sam2-oct: interactor: no layer picked: %s", picked.reason)
            return []
        confidence = models.AttributeValRequest(spec_id=int(cvataa.InteractionResultAttributes.CONFIDENCE),
                                                value=f"{picked.score:.4f}")
        return [cvataa.InteractionResultShape(type="mask", points=mask_points(picked.mask), attributes=[confidence])]


# --- tracker --------------------------------------------------------------------------------

@dataclass
class TrackingState:
    """Which layer a tracked shape covers and where it was last: plain, picklable values."""

    class_index: int
    label: str
    shape_type: str  # "mask" or "polygon", the type track answers with
    points: list  # the last position as CVAT mask points (run lengths + box)
    size: tuple  # (height, width) of the frames


class Tracker(_FrameFunction):
    """A layer region followed from B-scan to B-scan: the region of its class overlapping it most."""

    spec = cvataa.TrackingFunctionSpec(supported_shape_types={"mask", "polygon"})

    def init_tracking_state(self, context, pp_image: Frame, shape) -> TrackingState:
        p = self.pipeline
        h, w = pp_image.size
        mask = shape_mask(shape.type, shape.points, h, w)
        if not mask.any():
            raise RequestRefused(f"the {shape.type} shape covers no pixel of the {w}x{h} frame")
        label_map = p.label_map(p.encode(pp_image.gray))
        counts = np.bincount(label_map[mask], minlength=p.num_classes)
        counts[0] = 0  # background is not a layer to follow
        if not counts.any():
            raise RequestRefused(f"the {shape.type} shape covers no retinal layer: the model sees only "
                                 f"background under its {int(mask.sum())} pixels; draw it on a layer")
        k = int(np.argmax(counts))  # the layer most of it covers
        return TrackingState(k, p.labels[k], shape.type, mask_points(mask), (h, w))

    def track(self, context, pp_image: Frame, state: TrackingState):
        p = self.pipeline
        h, w = state.size
        if pp_image.size != (h, w):
            raise RequestRefused(f"the frame is {pp_image.size[1]}x{pp_image.size[0]}, the tracked shape's "
                                 f"frame {w}x{h}")
        encoded = p.encode(pp_image.gray)
        previous = decode_mask(state.points, image_width=w, image_height=h)
        prediction = None
        if p.profile.prompted:  # trained with painted prompts: tell the model where the layer was
            dense = p.dense_labels([(state.label, previous)], h, w)
            prediction = p.predict(encoded, dense_labels=dense, confidence=True)
        best, best_overlap = None, 0
        for region in p.regions(encoded, prediction=prediction):
            if region.class_index != state.class_index:
                continue
            (x, y), (rh, rw) = region.offset, region.mask.shape
            overlap = int(np.count_nonzero(previous[y:y + rh, x:x + rw] & region.mask))
            if overlap > best_overlap:
                best, best_overlap = region, overlap
        if best is None:
            return None  # the layer is gone from under the shape
        state.points = mask_points(best.mask, best.offset)
        if state.shape_type == "polygon":
            return cvataa.TrackableShape(type="polygon", points=polygons.flatten_points(best.points))
        return cvataa.TrackableShape(type="mask", points=state.points)
