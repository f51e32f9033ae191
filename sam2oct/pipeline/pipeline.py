"""The one path from settings to results, shared by every front door.

    options -> device -> checkpoint -> model on its device -> profile -> predictor (frame cache)
            -> label map -> cleaned label map (min-area merge) -> selections, masks and shapes

The cleaned label map is the model's answer at every front door: clicks select from it, masks
are its pixels, polygons trace it (simplification applies to polygons only) and ``evaluate``
scores it. It is made once per frame and kept with the frame's features in the one cache.

Nuclio (model_handler.py), the CLI (cli.py) and cvat-cli functions (cvat_function.py) are thin
adapters over :class:`Pipeline`: they translate their own inputs into ``PipelineOptions`` and
their own names for each option (an environment variable, a flag, a ``-p`` parameter). Every
default lives in ``PipelineOptions``; errors name the option neutrally (``exc.option``).
"""

from __future__ import annotations

import hashlib
import logging
import threading

import numpy as np
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
from sam2oct.geometry.merge import clean_label_map
from sam2oct.pipeline.cache import FrameCache, FrameResults, copy_shapes
from sam2oct.model.runtime import build_encoder, check_runtime
from sam2oct.pipeline.options import PipelineOptions
from sam2oct.pipeline.results import Interaction, Region
from sam2oct.pipeline.timing import note, stage

log = logging.getLogger(__name__)

def preflight(options: PipelineOptions) -> Profile:
    """What ``Pipeline(options)`` would refuse, found without building the model (a fraction of a
    second): the device, the model config, the checkpoint file and its class count, the profile
    and class names. Returns the profile the pipeline will run as."""
    check_runtime(options.runtime, options.precision, resolve_device(options.device))
    with checkpoint_errors(options.checkpoint):
        load_config(options.config)
        # The weights are memory-mapped, not copied: only the class count is read here.
        k = num_classes_of(read_state_dict(options.checkpoint), options.checkpoint)
    return resolve_profile(k, options.profile or None, options.class_names or None)



# A grey frame is kept by its file's digest only up to this size (4 Mpx).
_RECENT_FILE_BYTES = 16 << 20


class Pipeline:
    """The model with its profile, predictor and caches, from options to shapes and masks."""

    def __init__(self, options: PipelineOptions, *, model=None, encoder=None):
        """``model`` and ``encoder`` (another pipeline's predictor.model and predictor.encoder) share
        what that pipeline built."""
        self.options = options
        device = resolve_device(options.device)  # first: a device fault is not a checkpoint problem
        self.runtime, encoder_precision = check_runtime(options.runtime, options.precision, device)
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
        if self.runtime == "openvino":
            bf16 = False  # the precision is the encoder's; the decoder (1-2% of a click) stays fp32
            if encoder is None:
                encoder = build_encoder(model, self.runtime, encoder_precision, device,
                                        cache_dir=options.ov_cache_dir, threads=options.torch_threads)
        else:
            encoder = None
        # One cache, bounded in bytes: each frame's features with its results, and recent files.
        self.cache = FrameCache(int(options.cache_mb * (1 << 20)))
        self.predictor = SemanticPredictor(model, self.preprocess, bf16=bf16, cache=self.cache, encoder=encoder)
        k = self.profile.num_classes
        self.labels = (list(self.profile.class_names) if options.label_style == "names"
                       else [f"OCT_Object_{i}" for i in range(k)])
        # Incoming label names (brush, exports, tracked shapes) may use either naming.
        self.label_index = {f"OCT_Object_{i}": i for i in range(k)}
        self.label_index.update({n: i for i, n in enumerate(self.profile.class_names)})
        self._lock = threading.RLock()  # a frame's results are made once, by one thread
        self._results_key = ("results", options.min_area, options.simplify, tuple(self.labels))

    @property
    def num_classes(self) -> int:
        return self.profile.num_classes

    @property
    def runtime_note(self) -> str:
        """What encodes, for the start-up log: e.g. "runtime openvino (fp32, loaded from the cache)"."""
        encoder = self.predictor.encoder
        if encoder is None:
            return "runtime torch"
        return f"runtime openvino ({encoder.precision}, {encoder.source_note})"

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
        """Several grey frames -> their features, in one encoder call for those not cached."""
        return self.predictor.encode_batch(grays)

    def encode_file(self, data: bytes) -> EncodedImage:
        """Image file bytes -> features, as ``encode(read_image(data))``. CVAT resends the frame
        with every click: the last few files' grey frames are kept by the file's digest, so a
        click does not decode the image again (the feature cache then finds its features)."""
        digest = ("file", hashlib.blake2b(data, digest_size=20).digest())
        gray = self.cache.get(digest, count=False)
        if gray is None:
            gray = self.read_image(data)
            if gray.nbytes <= _RECENT_FILE_BYTES:
                self.cache.put(digest, gray)
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

    # --- label map to the cleaned label map and its shapes ---------------------------------

    def clean(self, label_map: np.ndarray) -> np.ndarray:
        """A label map after the min-area merge (the rule polygons follow): the model's answer."""
        return clean_label_map(label_map, self.options.min_area)

    def label_map(self, encoded: EncodedImage, prediction: Prediction | None = None) -> np.ndarray:
        """The cleaned label map of a prediction, by default the frame's unprompted one (made once
        per frame, read-only). ``evaluate --raw`` scores ``predict(encoded).label_map`` instead."""
        if prediction is not None:
            return self.clean(prediction.label_map)
        return self._results(encoded).label_map

    def shapes(self, label_map: np.ndarray) -> list:
        """Polygons of every layer region of a label map, with shared boundaries, named in the reply
        style. The min-area merge applies (a cleaned map is traced unchanged)."""
        with stage("trace"):
            return polygons.label_map_to_shapes(label_map, self.labels, tolerance=self.options.simplify,
                                                min_area=self.options.min_area)

    def _trace(self, cleaned: np.ndarray):
        """(shapes, owner) of an already cleaned map (see polygons.trace_label_map)."""
        return polygons.trace_label_map(cleaned, self.labels, tolerance=self.options.simplify, min_area=0)

    def _results(self, encoded: EncodedImage, traced: bool = False) -> FrameResults:
        """The frame's unprompted results, made once and kept with its features (one cache entry)."""
        results = encoded.derived.get(self._results_key)
        if traced and results is not None and results.shapes is not None:
            note("trace", "cached")
        if results is None or (traced and results.shapes is None):
            with self._lock:
                results = encoded.derived.get(self._results_key)
                if results is None:
                    raw = self.predictor.decode(encoded).label_map
                    cleaned = self.clean(raw)
                    cleaned.flags.writeable = False
                    results = FrameResults(cleaned)
                if traced and results.shapes is None:
                    with stage("trace"):
                        shapes, owner = self._trace(results.label_map)
                    owner.flags.writeable = False
                    results.owner, results.shapes = owner, tuple(shapes)
                encoded.derived[self._results_key] = results
                self.cache.recount(encoded.key, encoded)
        return results

    def frame_shapes(self, encoded: EncodedImage) -> list:
        """The polygons of the frame's cleaned label map, traced once per frame; a copy the caller
        may change."""
        return copy_shapes(self._results(encoded, traced=True).shapes)

    def cached_shapes(self, encoded: EncodedImage):
        """The frame's traced results as cached (None if not traced yet): ``shapes`` (never handed
        out: callers get copies, whose ``source`` is one of them) and ``memo``, where a front door
        keeps what it derives from those very shapes (their JSON, say), dropped with them."""
        results = encoded.derived.get(self._results_key)
        return None if results is None or results.shapes is None else results

    def interact(self, encoded: EncodedImage, pos, neg, bbox=None, brush=(), *, confidence=False,
                 shapes=False, shared=False) -> Interaction:
        """Clicks (image pixels, already inside the frame) -> the layers they pick, from the
        cleaned label map.

        ``brush``: [(label name, [H, W] bool), ...] painted prompts (used by mgu_prompted only).
        ``confidence`` adds the picked mask's mean probability; ``shapes`` the polygons of every
        layer left after the box and negative clicks: copies the caller may change or, with
        ``shared``, the frame's cached shapes themselves where they serve (for a caller that only
        reads them, to serialise a reply: copying thousands of them cost more than the reply).
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
            cleaned = self.clean(prediction.label_map)
            prompts, brush_note = "model", ("used" if brush else None)
        else:
            prediction = self.predict(encoded, confidence=confidence)  # memoised: clicks cannot change it
            cleaned = self.label_map(encoded)
            prompts = "selection"
            brush_note = (f"ignored: the {self.profile.name} checkpoint was not trained with brush prompts"
                          if brush else None)
        sel = select(cleaned, pos, neg, bbox, snap=self.options.snap_px)
        score = None
        if confidence and sel.mask.any():
            score = float(prediction.confidence[sel.mask].mean())
        return Interaction(
            shapes=self._selection_shapes(encoded, cleaned, sel.label_map, neg, bbox, shared) if shapes else None,
            mask=sel.mask, label_map=sel.label_map, picked=sel.picked,
            labels=[self.labels[k] for k in sel.picked], ignored_clicks=sel.ignored_clicks,
            snapped_clicks=sel.snapped_clicks, prompts=prompts, brush=brush_note, score=score,
            reason="" if sel.mask.any() else sel.reason,
        )

    def _selection_shapes(self, encoded, cleaned, selected, neg, bbox, shared=False) -> list:
        """Polygons of every layer left after the box and negative clicks (the CVAT-OCT fork's reply).

        Without a box the frame's traced shapes serve: a negative click removes whole regions of
        the cleaned map (interaction.select), so the shapes kept are those whose pixels it left,
        by pixel ownership, exactly as ``regions()`` assigns pixels to shapes.
        """
        if bbox is not None or self.profile.prompted:
            return self._trace(selected)[0]
        results = self._results(encoded, traced=True)
        hand_out = list if shared else copy_shapes
        if not len(neg):
            return hand_out(results.shapes)
        removed = np.unique(results.owner[(selected == 0) & (cleaned != 0)])
        dropped = np.zeros(len(results.shapes) + 1, bool)
        dropped[removed] = True
        return hand_out(s for i, s in enumerate(results.shapes, 1) if not dropped[i])

    def regions(self, encoded: EncodedImage, threshold: float | None = None, *,
                prediction: Prediction | None = None) -> list:
        """Every connected layer region of the cleaned label map (each polygon piece of it: a region
        around a hole is cut in pieces), as its polygon and exactly the map's pixels it holds.

        The masks of one frame never overlap and together are the cleaned map's layer pixels.
        ``threshold`` drops regions whose mean class probability is below it. ``prediction`` (from
        :meth:`predict`, prompted or not) replaces the frame's unprompted label map; without a
        confidence map (``predict(..., confidence=True)``) its regions have no score (None).
        """
        if prediction is None:
            results = self._results(encoded, traced=True)
            shapes, owner = results.shapes, results.owner
            confidence = self.predictor.decode(encoded, confidence=True).confidence
        else:
            shapes, owner = self._trace(self.clean(prediction.label_map))
            confidence = prediction.confidence
        if threshold is not None and confidence is None:
            raise ValueError("a score threshold needs the prediction's confidence map: "
                             "predict(..., confidence=True)")
        out = []
        for i, box in enumerate(ndimage.find_objects(owner)):
            if box is None:
                continue
            region = owner[box] == i + 1
            score = None if confidence is None else float(confidence[box][region].mean())
            if threshold is not None and score < threshold:
                continue
            label = shapes[i]["label"]
            out.append(Region(self.labels.index(label), label, [list(p) for p in shapes[i]["points"]], region,
                              (box[1].start, box[0].start), score))
        return out

    def layers(self, encoded: EncodedImage, threshold: float | None = None, *,
               prediction: Prediction | None = None) -> list:
        """One mask per layer of the cleaned label map (all its regions: a CVAT mask may hold
        several parts), cropped to the layer's box, with its largest polygon as ``points``.

        ``threshold`` drops layers whose mean class probability is below it; ``prediction`` as
        in :meth:`regions`.
        """
        if prediction is None:
            results = self._results(encoded, traced=True)
            cleaned, shapes, owner = results.label_map, results.shapes, results.owner
            confidence = self.predictor.decode(encoded, confidence=True).confidence
        else:
            cleaned = self.clean(prediction.label_map)
            (shapes, owner), confidence = self._trace(cleaned), prediction.confidence
        if threshold is not None and confidence is None:
            raise ValueError("a score threshold needs the prediction's confidence map: "
                             "predict(..., confidence=True)")
        sizes = np.bincount(owner.ravel(), minlength=len(shapes) + 1)
        out = []
        for k, box in enumerate(ndimage.find_objects(cleaned), 1):  # label k at index k - 1
            if box is None:
                continue
            mask = cleaned[box] == k
            score = None if confidence is None else float(confidence[box][mask].mean())
            if threshold is not None and score < threshold:
                continue
            label = self.labels[k]
            pieces = [i for i, s in enumerate(shapes) if s["label"] == label]
            largest = max(pieces, key=lambda i: sizes[i + 1])
            out.append(Region(k, label, [list(p) for p in shapes[largest]["points"]], mask,
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
        self.cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

