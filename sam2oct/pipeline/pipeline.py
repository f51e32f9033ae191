"""The one path from settings to results, shared by every front door.

    options -> device -> checkpoint -> model on its device -> profile -> predictor (feature cache)
            -> label map -> shapes and masks

Nuclio (model_handler.py), the CLI (cli.py) and cvat-cli functions (cvat_function.py) are thin
adapters over :class:`Pipeline`: they translate their own inputs into ``PipelineOptions`` and
their own names for each option (an environment variable, a flag, a ``-p`` parameter). Every
default lives in ``PipelineOptions``; errors name the option neutrally (``exc.option``).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np
import shapely
import torch
from PIL import Image
from scipy import ndimage

from sam2oct.geometry import polygons
from sam2oct.model.checkpoint import DEFAULT_CONFIG, load_config, load_model, num_classes_of, read_state_dict
from sam2oct.errors import CheckpointError, ConfigError, DeviceError, RequestError, Sam2OctError
from sam2oct.geometry.images import DEFAULT_MAX_PIXELS, gray_from_pil, read_image
from sam2oct.geometry.interaction import select
from sam2oct.model.predictor import EncodedImage, Prediction, SemanticPredictor
from sam2oct.model.preprocessing import PREPROCESS_MODES
from sam2oct.model.profiles import PROFILES, Profile, parse_class_names, resolve_profile

DOWNLOAD_HINT = "download one with: python -m sam2oct download nr206   (or mgu, mgu_prompted)"
LABEL_STYLES = ("names", "index")
PRECISIONS = ("auto", "bf16", "fp32")

# One line per option: what it means. Front doors build their help and docs tables from this.
OPTION_HELP = {
    "checkpoint": "path of the SAM2-OCT checkpoint file",
    "config": "SAM 2 model config: a name packaged with sam2 (configs/sam2.1/...) or a YAML file path",
    "device": "torch device: auto (cuda when available), cpu, cuda or cuda:N",
    "profile": "mgu, mgu_prompted or nr206; empty infers it from the class count (11 -> mgu, 9 -> nr206)",
    "class_names": "comma-separated class names in channel order, overriding the profile's",
    "preprocess": "stretch (model card) or pad-equalize (CVAT-OCT interactor); empty = the profile's",
    "label_style": "names (profile class names) or index (OCT_Object_<k>, the CVAT-OCT fork)",
    "precision": "auto (bf16 autocast on CUDA devices of compute capability 8.0 or more, else fp32), bf16 or fp32",
    "cache_mb": "memory the per-frame feature cache may hold, in MiB (0 disables it)",
    "simplify": "polygon simplification tolerance in pixels (0 keeps every pixel corner)",
    "min_area": "regions smaller than this many pixels merge into their surroundings",
    "max_pixels": "largest image accepted, in pixels (decompression-bomb guard; at most 178956970, Pillow's hard limit)",
    "torch_threads": "CPU threads torch may use (0 = torch's default, one per core; on a shared CPU host fewer keep clicks fast)",
    "snap_px": "a positive click this many pixels or closer to a layer picks the nearest layer",
}


@dataclass(frozen=True)
class PipelineOptions:
    """Every setting of the pipeline, with its default. Checked on creation (no model needed)."""

    checkpoint: str | None = None
    config: str = DEFAULT_CONFIG
    device: str = "auto"
    profile: str = ""
    class_names: str = ""
    preprocess: str = ""
    label_style: str = "names"
    precision: str = "auto"
    cache_mb: float = 2048.0
    simplify: float = 1.0
    min_area: int = 16
    # Pillow refuses anything over twice its own bomb limit before we are asked.
    max_pixels: int = DEFAULT_MAX_PIXELS
    torch_threads: int = 0
    snap_px: float = 3.0

    def __post_init__(self):
        def choice(name, choices):
            value = str(getattr(self, name)).strip().lower()
            if value not in choices:
                shown = ", ".join(c or "(empty)" for c in choices)
                raise ConfigError(f"{value!r} is not one of {shown}", option=name)
            object.__setattr__(self, name, value)

        def number(name, cast, lo, hi):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{value!r} is not a number", option=name)
            if cast is int and value != int(value):
                raise ConfigError(f"{value!r} is not an integer", option=name)
            if not lo <= value <= hi:  # also refuses NaN
                raise ConfigError(f"{value} is outside {lo}..{hi}", option=name)
            object.__setattr__(self, name, cast(value))

        choice("profile", ("",) + tuple(PROFILES))
        choice("preprocess", ("",) + PREPROCESS_MODES)
        choice("label_style", LABEL_STYLES)
        choice("precision", PRECISIONS)
        number("cache_mb", float, 0.0, float(1 << 20))
        number("simplify", float, 0.0, 100.0)
        number("min_area", int, 0, 1 << 31)
        number("max_pixels", int, 1, 2 * Image.MAX_IMAGE_PIXELS)
        number("torch_threads", int, 0, 1024)
        number("snap_px", float, 0.0, 64.0)
        object.__setattr__(self, "device", str(self.device).strip() or "auto")
        object.__setattr__(self, "config", str(self.config or DEFAULT_CONFIG))
        object.__setattr__(self, "class_names", str(self.class_names or "").strip())
        if self.class_names:
            parse_class_names(self.class_names)
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint) or None)

    @classmethod
    def names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))


# --- device ---------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``, proven usable by a small allocation (before any checkpoint work)."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        device = torch.device("cuda" if name == "auto" else name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{name!r} is not a torch device (auto, cpu, cuda, cuda:N)", option="device") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"{name!r}: only cpu and cuda devices are supported", option="device")
    if not torch.cuda.is_available():
        built = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a CPU-only build")
        raise DeviceError(f"{name!r} asked for, but CUDA is not available here ({built}; "
                          f"check the NVIDIA driver and the container's GPU access)", option="device")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"{name!r} does not exist: this host has {count} CUDA device(s), "
                          f"cuda:0..cuda:{count - 1}", option="device")
    try:
        torch.zeros(1, device=device)
    except Exception as exc:  # driver/runtime mismatch, a device in use exclusively, ...
        raise DeviceError(f"{name!r} cannot be used: {type(exc).__name__}: {_first_line(exc)}",
                          option="device") from exc
    return device


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def move_to_device(model, device: torch.device):
    try:
        return model.to(device)
    except Exception as exc:  # out of memory, driver faults: a device problem, not a checkpoint one
        raise DeviceError(f"the model could not be placed on {device}: {type(exc).__name__}: "
                          f"{_first_line(exc)}", option="device") from exc


@contextmanager
def _checkpoint_errors(path):
    """Whatever reading the checkpoint raises becomes one CheckpointError that says how to get a good file."""
    if not path:
        raise CheckpointError(f"no checkpoint given: name a SAM2-OCT checkpoint file; {DOWNLOAD_HINT}",
                              option="checkpoint")
    try:
        yield
    except Sam2OctError as exc:
        if exc.option == "config":
            raise
        raise CheckpointError(f"{exc}; {DOWNLOAD_HINT}", option=exc.option or "checkpoint") from exc
    except Exception as exc:  # torch.load fails on foreign files in ways the loader does not name
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {_first_line(exc)}); "
                              f"{DOWNLOAD_HINT}", option="checkpoint") from exc


def load_checkpoint(path, config) -> torch.nn.Module:
    """The model on the CPU, or one CheckpointError that says what is wrong and how to get a good file."""
    with _checkpoint_errors(path):
        return load_model(path, config, None)  # placed on the device by move_to_device


def preflight(options: PipelineOptions) -> Profile:
    """What ``Pipeline(options)`` would refuse, found without building the model (a fraction of a
    second): the device, the model config, the checkpoint file and its class count, the profile
    and class names. Returns the profile the pipeline will run as."""
    resolve_device(options.device)
    with _checkpoint_errors(options.checkpoint):
        load_config(options.config)
        # The weights are memory-mapped, not copied: only the class count is read here.
        k = num_classes_of(read_state_dict(options.checkpoint), options.checkpoint)
    return resolve_profile(k, options.profile or None, options.class_names or None)


# --- results --------------------------------------------------------------------------------

@dataclass
class Interaction:
    """What a set of clicks picked on one frame."""

    mask: np.ndarray  # [H, W] bool: the picked regions (empty when nothing was picked)
    label_map: np.ndarray  # the model's labels after the box and negative clicks
    picked: list  # class indices picked, in order of first click
    labels: list  # their reply names
    ignored_clicks: list  # positive clicks that picked nothing
    snapped_clicks: list  # positive clicks just off a layer, moved onto its nearest pixel
    prompts: str  # "model" (clicks were prompts to the model) or "selection" (they only select)
    brush: str | None  # None (no brush), "used" or "ignored: why"
    score: float | None = None  # mean probability of the picked classes over the mask, when asked
    reason: str = ""  # why nothing was picked, when the mask is empty
    shapes: list | None = None  # polygons of the layers left after box and negative clicks, when asked


@dataclass
class Region:
    """One connected region of one layer: its polygon and exactly the pixels the polygon holds."""

    class_index: int
    label: str
    points: list  # [[x, y], ...] on pixel edges
    mask: np.ndarray  # [h, w] bool crop
    offset: tuple  # (x, y) of the crop in the frame
    score: float  # mean probability of its class over its pixels

    def full_mask(self, height: int, width: int) -> np.ndarray:
        full = np.zeros((height, width), dtype=bool)
        x, y = self.offset
        full[y:y + self.mask.shape[0], x:x + self.mask.shape[1]] = self.mask
        return full


# A kept grey frame is at most this large (4 Mpx), so the recent files hold 64 MiB at most.
_RECENT_FILE_BYTES = 16 << 20


@dataclass
class FrameShapes:
    """A frame's traced shapes, cached per frame, and what front doors derive from them."""

    shapes: list
    memo: dict = field(default_factory=dict)


class _SmallLRU:
    """A few recent frames' traced shapes: a click on a frame seen before only selects among them."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self):
        with self._lock:
            self._items.clear()


class Pipeline:
    """The model with its profile, predictor and caches, from options to shapes and masks."""

    def __init__(self, options: PipelineOptions, *, model=None):
        self.options = options
        self.warnings = []  # (message, option) pairs the adapter should log, in its own names
        device = resolve_device(options.device)  # first: a device fault is not a checkpoint problem
        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        if model is None:
            model = load_checkpoint(options.checkpoint, options.config)
        model = move_to_device(model, device)
        self.profile = resolve_profile(model.num_classes, options.profile or None, options.class_names or None)
        if not options.profile and self.profile.name == "mgu":
            self.warnings.append((
                "the checkpoint has 11 classes and no profile is set, so it runs as 'mgu' (clicks only "
                "select); if it is the MGU_prompted checkpoint, set the profile to mgu_prompted so clicks, "
                "box and brush reach the model", "profile"))
        self.preprocess = options.preprocess or self.profile.preprocess
        bf16 = None if options.precision == "auto" else options.precision == "bf16"
        self.predictor = SemanticPredictor(model, self.preprocess, cache_bytes=int(options.cache_mb * (1 << 20)), bf16=bf16)
        k = self.profile.num_classes
        self.labels = (list(self.profile.class_names) if options.label_style == "names"
                       else [f"OCT_Object_{i}" for i in range(k)])
        # Incoming label names (brush, exports, tracked shapes) may use either naming.
        self.label_index = {f"OCT_Object_{i}": i for i in range(k)}
        self.label_index.update({n: i for i, n in enumerate(self.profile.class_names)})
        self._shapes = _SmallLRU(16)
        self._recent_files = _SmallLRU(4)  # image file digest -> its grey frame

    @property
    def num_classes(self) -> int:
        return self.profile.num_classes

    # --- image to features ---------------------------------------------------------------

    def read_image(self, data: bytes) -> np.ndarray:
        try:
            return read_image(data, self.options.max_pixels)
        except RequestError as exc:
            if exc.status == 413:  # the pixel limit is a setting: let the front door name it
                exc.option = "max_pixels"
            raise

    def read_pil(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        if w * h > self.options.max_pixels:
            raise RequestError(f"image is {w}x{h} = {w * h} pixels, over the pixel limit of "
                               f"{self.options.max_pixels}", status=413, option="max_pixels")
        return gray_from_pil(image)

    def encode(self, gray: np.ndarray) -> EncodedImage:
        return self.predictor.encode(gray)

    def encode_file(self, data: bytes) -> EncodedImage:
        """Image file bytes -> features, as ``encode(read_image(data))``. CVAT resends the frame
        with every click: the last few files' grey frames are kept by the file's digest, so a
        click does not decode the image again (the feature cache then finds its features)."""
        digest = hashlib.blake2b(data, digest_size=20).digest()
        gray = self._recent_files.get(digest)
        if gray is None:
            gray = self.read_image(data)
            if gray.nbytes <= _RECENT_FILE_BYTES:
                self._recent_files.put(digest, gray)
        return self.encode(gray)

    # --- features to label map -----------------------------------------------------------

    def predict(self, encoded: EncodedImage, *, points=None, point_labels=None, box=None, dense_labels=None,
                confidence=False) -> Prediction:
        """The label map; prompts reach the model only for a profile trained with them."""
        if not self.profile.prompted:
            return self.predictor.decode(encoded, confidence=confidence)
        return self.predictor.decode(encoded, points=points, labels=point_labels, box=box,
                                     dense_labels=dense_labels, confidence=confidence)

    def dense_labels(self, painted, height: int, width: int):
        """[(label name, [H, W] bool), ...] -> [H, W] class indices (-1 unpainted), later ones on top."""
        if not painted:
            return None
        dense = np.full((height, width), -1, dtype=np.int16 if self.num_classes < 32768 else np.int32)
        for i, (name, mask) in enumerate(painted):
            if name not in self.label_index:
                raise RequestError(f"mask {i} has label {name!r}, which is not one of {', '.join(self.labels)}")
            dense[mask] = self.label_index[name]
        return dense

    # --- label map to shapes ---------------------------------------------------------------

    def shapes(self, label_map: np.ndarray) -> list:
        """Polygons of every layer region, with shared boundaries, named in the reply style."""
        return polygons.label_map_to_shapes(label_map, self.labels, tolerance=self.options.simplify,
                                            min_area=self.options.min_area)

    def frame_shapes(self, encoded: EncodedImage, prediction: Prediction) -> list:
        """The shapes of a frame's unprompted label map, traced once per frame."""
        if self.profile.prompted:
            return self.shapes(prediction.label_map)
        cached = self._shapes.get(encoded.key)
        if cached is None:
            cached = FrameShapes(self.shapes(prediction.label_map))
            self._shapes.put(encoded.key, cached)
        return cached.shapes

    def cached_shapes(self, encoded: EncodedImage):
        """The frame's traced shapes as cached (None if they are not): their ``memo`` dict is
        where a front door keeps what it derives from those very objects (their JSON, say),
        dropped with them."""
        return self._shapes.get(encoded.key)

    def interact(self, encoded: EncodedImage, pos, neg, bbox=None, brush=(), *, confidence=False,
                 shapes=False) -> Interaction:
        """Clicks (image pixels, already inside the frame) -> the layers they pick.

        ``brush``: [(label name, [H, W] bool), ...] painted prompts (used by mgu_prompted only).
        ``confidence`` adds the picked mask's mean probability; ``shapes`` the polygons of every
        layer left after the box and negative clicks.
        """
        geo = encoded.geometry
        pos = np.asarray(pos, dtype=np.float64).reshape(-1, 2)
        neg = np.asarray(neg, dtype=np.float64).reshape(-1, 2)
        dense = self.dense_labels(list(brush), geo.height, geo.width)
        if self.profile.prompted:
            points = np.concatenate([pos, neg]) if len(pos) + len(neg) else None
            labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))] if points is not None else None
            prediction = self.predict(encoded, points=points, point_labels=labels, box=bbox, dense_labels=dense,
                                      confidence=confidence)
            prompts, brush_note = "model", ("used" if brush else None)
        else:
            prediction = self.predict(encoded, confidence=confidence)  # memoised: clicks cannot change it
            prompts = "selection"
            brush_note = (f"ignored: the {self.profile.name} checkpoint was not trained with brush prompts"
                          if brush else None)
        sel = select(prediction.label_map, pos, neg, bbox, snap=self.options.snap_px)
        score = None
        if confidence and sel.mask.any():
            score = float(prediction.confidence[sel.mask].mean())
        return Interaction(
            shapes=self._selection_shapes(encoded, prediction, sel.label_map, neg, bbox) if shapes else None,
            mask=sel.mask, label_map=sel.label_map, picked=sel.picked,
            labels=[self.labels[k] for k in sel.picked], ignored_clicks=sel.ignored_clicks,
            snapped_clicks=sel.snapped_clicks, prompts=prompts, brush=brush_note, score=score,
            reason="" if sel.mask.any() else sel.reason,
        )

    def _selection_shapes(self, encoded, prediction, label_map, neg, bbox) -> list:
        """Polygons of every layer left after the box and negative clicks (the CVAT-OCT fork's reply).

        Without a box the frame's traced shapes serve: a negative click drops the shapes under
        it, so a click only selects among shapes traced once per frame.
        """
        if bbox is not None or self.profile.prompted:
            return self.shapes(label_map)
        shapes = self.frame_shapes(encoded, prediction)
        if not len(neg):
            return shapes
        outlines = np.array([shapely.Polygon(s["points"]) for s in shapes])
        hit = np.zeros(len(shapes), dtype=bool)
        for x, y in neg:
            hit |= shapely.intersects_xy(outlines, x, y)
        return [s for s, h in zip(shapes, hit) if not h]

    def regions(self, encoded: EncodedImage, threshold: float | None = None, *,
                prediction: Prediction | None = None) -> list:
        """Every connected layer region of the frame, as a polygon and the pixels it holds.

        The masks of one frame never overlap: each pixel goes to the one polygon holding its
        centre, so they partition the frame exactly as the polygons tile it. ``threshold`` drops
        regions whose mean class probability is below it. ``prediction`` (a prompted one, from
        :meth:`predict`) replaces the frame's unprompted label map.
        """
        if prediction is None:
            prediction = self.predictor.decode(encoded, confidence=True)
            shapes = self.frame_shapes(encoded, prediction)
        else:
            shapes = self.shapes(prediction.label_map)
        owner = polygons.rasterize_shapes(shapes, prediction.label_map.shape)
        out = []
        for i, box in enumerate(ndimage.find_objects(owner)):
            if box is None:
                continue
            region = owner[box] == i + 1
            score = float(prediction.confidence[box][region].mean())
            if threshold is not None and score < threshold:
                continue
            label = shapes[i]["label"]
            out.append(Region(self.labels.index(label), label, shapes[i]["points"], region,
                              (box[1].start, box[0].start), score))
        return out

    # --- upkeep ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One dummy frame through every stage, so the first real request is not the slow one."""
        gray = np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96)
        encoded = self.encode(gray)
        self.interact(encoded, [[48.0, 32.0]], [])
        self.release_memory()
        self.predictor.encoder_calls = 0

    def release_memory(self) -> None:
        """Drop cached features and shapes (and the CUDA allocator's spare blocks)."""
        self.predictor.cache.clear()
        self._shapes.clear()
        self._recent_files.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

