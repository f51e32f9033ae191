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
import logging

import numpy as np
import shapely
import torch
from PIL import Image
from scipy import ndimage

from sam2oct.geometry import polygons
from sam2oct.logs import warn_option
from sam2oct.errors import RequestError
from sam2oct.geometry.images import gray_from_pil, read_image
from sam2oct.model.checkpoint import load_config, num_classes_of, read_state_dict
from sam2oct.model.device import move_to_device, resolve_device
from sam2oct.model.loading import checkpoint_errors, load_checkpoint
from sam2oct.geometry.interaction import select
from sam2oct.model.predictor import EncodedImage, Prediction, SemanticPredictor
from sam2oct.model.profiles import Profile, resolve_profile
from sam2oct.pipeline.cache import FrameShapes, SmallLRU
from sam2oct.pipeline.options import PipelineOptions
from sam2oct.pipeline.results import Interaction, Region
from sam2oct.pipeline.timing import note, stage

log = logging.getLogger(__name__)

def preflight(options: PipelineOptions) -> Profile:
    """What ``Pipeline(options)`` would refuse, found without building the model (a fraction of a
    second): the device, the model config, the checkpoint file and its class count, the profile
    and class names. Returns the profile the pipeline will run as."""
    resolve_device(options.device)
    with checkpoint_errors(options.checkpoint):
        load_config(options.config)
        # The weights are memory-mapped, not copied: only the class count is read here.
        k = num_classes_of(read_state_dict(options.checkpoint), options.checkpoint)
    return resolve_profile(k, options.profile or None, options.class_names or None)



# A kept grey frame is at most this large (4 Mpx), so the recent files hold 64 MiB at most.
_RECENT_FILE_BYTES = 16 << 20


class Pipeline:
    """The model with its profile, predictor and caches, from options to shapes and masks."""

    def __init__(self, options: PipelineOptions, *, model=None):
        self.options = options
        device = resolve_device(options.device)  # first: a device fault is not a checkpoint problem
        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        if model is None:
            model = load_checkpoint(options.checkpoint, options.config)
        model = move_to_device(model, device)
        self.profile = resolve_profile(model.num_classes, options.profile or None, options.class_names or None)
        if not options.profile and self.profile.name == "mgu":
            warn_option(log, "the checkpoint has 11 classes and no profile is set, so it runs as 'mgu' (clicks "
                        "only select); if it is the MGU_prompted checkpoint, set the profile to mgu_prompted so "
                        "clicks, box and brush reach the model", "profile")
        self.preprocess = options.preprocess or self.profile.preprocess
        bf16 = None if options.precision == "auto" else options.precision == "bf16"
        self.predictor = SemanticPredictor(model, self.preprocess, cache_bytes=int(options.cache_mb * (1 << 20)), bf16=bf16)
        k = self.profile.num_classes
        self.labels = (list(self.profile.class_names) if options.label_style == "names"
                       else [f"OCT_Object_{i}" for i in range(k)])
        # Incoming label names (brush, exports, tracked shapes) may use either naming.
        self.label_index = {f"OCT_Object_{i}": i for i in range(k)}
        self.label_index.update({n: i for i, n in enumerate(self.profile.class_names)})
        self._shapes = SmallLRU(16)
        self._recent_files = SmallLRU(4)  # image file digest -> its grey frame

    @property
    def num_classes(self) -> int:
        return self.profile.num_classes

    # --- image to features ---------------------------------------------------------------

    def read_image(self, data: bytes) -> np.ndarray:
        try:
            with stage("decode"):
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
        calls = self.predictor.encoder_calls
        with stage("encode") as mark:
            encoded = self.predictor.encode(gray)
            if self.predictor.encoder_calls == calls:
                mark.name = "encode cache hit"
        return encoded

    def encode_batch(self, grays) -> list:
        return self.predictor.encode_batch(grays)

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
        else:
            note("decode", "kept from the last request")
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
        with stage("trace"):
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
        else:
            note("trace", "cached")
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

