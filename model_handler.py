"""The model side of the Nuclio function: owns the model, the feature cache and the profile,
and turns one validated request into one JSON-ready result."""

import numpy as np
import torch
from scipy import ndimage

from sam2oct import cvat, masks, polygons
from sam2oct.checkpoint import load_model
from sam2oct.images import read_image
from sam2oct.errors import CheckpointError, ConfigError, RequestError
from sam2oct.interaction import select
from sam2oct.predictor import SemanticPredictor
from sam2oct.profiles import resolve_profile
from sam2oct.settings import Settings

DOWNLOAD_HINT = "download one with: python -m sam2oct download nr206   (or mgu, mgu_prompted)"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"SAM2_DEVICE={name!r} is not a torch device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"SAM2_DEVICE={name!r} but CUDA is not available in this container")
    return device


class ModelHandler:
    def __init__(self, settings: Settings):
        self.settings = settings
        if not settings.checkpoint:
            raise ConfigError(f"SAM2_CHECKPOINT is not set: point it at a SAM2-OCT checkpoint; {DOWNLOAD_HINT}")
        device = resolve_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        try:
            model = load_model(settings.checkpoint, settings.config, device)
        except CheckpointError as exc:
            raise CheckpointError(f"SAM2_CHECKPOINT={settings.checkpoint}: {exc}; {DOWNLOAD_HINT}") from exc
        except Exception as exc:  # torch.load can fail on a foreign file in ways the loader does not name
            raise CheckpointError(
                f"SAM2_CHECKPOINT={settings.checkpoint}: cannot be loaded ({type(exc).__name__}: {exc}); {DOWNLOAD_HINT}"
            ) from exc
        self.profile = resolve_profile(model.num_classes, settings.profile or None, settings.class_names or None)
        bf16 = None if settings.precision == "auto" else settings.precision == "bf16"
        self.predictor = SemanticPredictor(
            model, settings.preprocess or self.profile.preprocess, settings.cache_size, bf16=bf16
        )
        k = self.profile.num_classes
        self.labels = (list(self.profile.class_names) if settings.label_style == "names"
                       else [f"OCT_Object_{i}" for i in range(k)])
        # Brush labels may use either naming, whatever the reply uses.
        self._label_index = {n: i for i, n in enumerate(self.profile.class_names)}
        self._label_index.update({f"OCT_Object_{i}": i for i in range(k)})
        if settings.warmup:
            self.warm_up()

    def warm_up(self) -> None:
        """One dummy frame through every stage, so the first annotator's click is not the slow one."""
        gray = np.linspace(0, 1, 64 * 96, dtype=np.float32).reshape(64, 96)
        encoded = self.predictor.encode(gray)
        self.predictor.decode(encoded, points=np.array([[48.0, 32.0]]), labels=np.array([1]))
        self.predictor.cache.clear()
        self.predictor.encoder_calls = 0

    def infer(self, body):
        if self.settings.mode == "detector":
            return self.detect(cvat.parse_detector(body, max_image_bytes=self.settings.max_image_bytes))
        return self.interact(cvat.parse_interactor(
            body, max_points=self.settings.max_points, max_image_bytes=self.settings.max_image_bytes))

    def _encode(self, image: bytes):
        gray = read_image(image, self.settings.max_pixels)
        return self.predictor.encode(gray)

    def _shapes(self, label_map):
        return polygons.label_map_to_shapes(
            label_map, self.labels, tolerance=self.settings.simplify, min_area=self.settings.min_area)

    def interact(self, req: cvat.InteractorRequest) -> dict:
        encoded = self._encode(req.image)
        h, w = encoded.geometry.height, encoded.geometry.width
        pos = cvat.fit_points(req.pos_points, h, w, "positive")
        neg = cvat.fit_points(req.neg_points, h, w, "negative")
        bbox = cvat.fit_bbox(req.bbox, h, w)
        dense = self._brush_labels(req.brush, h, w)
        result = {}
        if self.profile.prompted:
            points = np.concatenate([pos, neg]) if len(pos) + len(neg) else None
            labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))] if points is not None else None
            prediction = self.predictor.decode(encoded, points=points, labels=labels, box=bbox, dense_labels=dense)
            result["prompts"] = "model"
            if req.brush:
                result["brush"] = "used"
        else:
            prediction = self.predictor.decode(encoded)  # memoised: clicks cannot change it
            result["prompts"] = "selection"
            if req.brush:
                result["brush"] = f"ignored: the {self.profile.name} checkpoint was not trained with brush prompts"
        sel = select(prediction.label_map, pos, neg, bbox)
        if not sel.mask.any():
            raise RequestError(self._nothing_selected(sel, pos), status=422)
        crop, bounds = masks.to_interactor_crop(sel.mask)
        result.update({
            "mask": crop,
            "bounds": bounds,
            "points": polygons.mask_outline(sel.mask),
            "shapes": self._shapes(sel.label_map),
            "labels": [self.labels[k] for k in sel.picked],
        })
        if sel.ignored_clicks:
            result["ignored_clicks"] = sel.ignored_clicks
        if req.threshold is not None:
            result["threshold"] = "ignored: every pixel takes the model's most likely class"
        return result

    @staticmethod
    def _nothing_selected(sel, pos) -> str:
        if len(pos) and len(sel.ignored_clicks) == len(pos):
            return f"every positive click falls on background: {sel.ignored_clicks}; click inside a layer"
        return "no retinal layer left to return (the model found none here, or negative clicks and the box removed all)"

    def _brush_labels(self, brush, h, w):
        if not brush:
            return None
        dense = np.full((h, w), -1, dtype=np.int64)
        for i, (name, rle) in enumerate(brush):
            if name not in self._label_index:
                raise RequestError(f"'brush[{i}]' label {name!r} is not one of {', '.join(self.labels)}")
            try:
                painted = masks.rle_to_mask(rle, h, w)
            except RequestError as exc:
                raise RequestError(f"'brush[{i}].mask': {exc}", exc.status) from None
            dense[painted] = self._label_index[name]
        return dense

    def detect(self, req: cvat.DetectorRequest) -> list:
        encoded = self._encode(req.image)
        prediction = self.predictor.decode(encoded)
        shapes = self._shapes(prediction.label_map)
        # Each pixel goes to the one polygon holding its centre, so the masks partition the
        # frame exactly as the polygons tile it.
        owner = polygons.rasterize_shapes(shapes, prediction.label_map.shape)
        items = []
        for i, box in enumerate(ndimage.find_objects(owner)):
            if box is None:
                continue
            region = owner[box] == i + 1
            score = float(prediction.confidence[box][region].mean())
            if req.threshold is not None and score < req.threshold:
                continue
            items.append({
                "label": shapes[i]["label"],
                "type": "mask",
                "points": polygons.flatten_points(shapes[i]["points"]),
                "mask": masks.to_detector_mask(region, offset=(box[1].start, box[0].start)),
                "confidence": f"{score:.3f}",
            })
        return items

    def release_memory(self) -> None:
        """After an out-of-memory fault: drop cached features and the allocator's spare blocks."""
        self.predictor.cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
