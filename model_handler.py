"""The Nuclio front door's model side: one Pipeline, CVAT's request in, CVAT's reply out."""

import logging

from sam2oct import cvat, masks, polygons
from sam2oct.errors import RequestError, Sam2OctError, describe
from sam2oct.pipeline import Pipeline
from sam2oct.settings import OPTION_ENV, Settings

log = logging.getLogger("sam2oct")


class ModelHandler:
    def __init__(self, settings: Settings, logger=None):
        self.settings = settings
        self.log = logger or log
        # nuclio's logger has warn(), Python's logging warning()
        self._warn = getattr(self.log, "warning", None) or self.log.warn
        try:
            self.pipeline = Pipeline(settings.options)
        except Sam2OctError as exc:  # the same error, in this front door's names
            raise type(exc)(describe(exc, OPTION_ENV)) from exc
        for message, option in self.pipeline.warnings:
            self._warn(f"sam2-oct: {OPTION_ENV.get(option, option)}: {message}")
        if settings.warmup:
            self.pipeline.warm_up()

    @property
    def profile(self):
        return self.pipeline.profile

    @property
    def predictor(self):
        return self.pipeline.predictor

    def infer(self, body):
        if self.settings.mode == "detector":
            return self.detect(cvat.parse_detector(body, max_image_bytes=self.settings.max_image_bytes))
        return self.interact(cvat.parse_interactor(
            body, max_points=self.settings.max_points, max_image_bytes=self.settings.max_image_bytes))

    def interact(self, req: cvat.InteractorRequest) -> dict:
        p = self.pipeline
        encoded = p.encode_file(req.image)
        h, w = encoded.geometry.height, encoded.geometry.width
        pos = cvat.fit_points(req.pos_points, h, w, "positive")
        neg = cvat.fit_points(req.neg_points, h, w, "negative")
        bbox = cvat.fit_bbox(req.bbox, h, w)
        brush = [(name, self._brush_mask(i, name, rle, h, w)) for i, (name, rle) in enumerate(req.brush)]
        picked = p.interact(encoded, pos, neg, bbox, brush, shapes=True)
        if not picked.mask.any():
            raise RequestError(f"no retinal layer picked: {picked.reason}", status=422)
        crop, bounds = masks.to_interactor_crop(picked.mask)
        result = {
            "mask": crop,
            "bounds": bounds,
            "points": polygons.mask_outline(picked.mask),
            "shapes": picked.shapes,
            "labels": picked.labels,
            "prompts": picked.prompts,
        }
        if picked.brush:
            result["brush"] = picked.brush
        if picked.ignored_clicks:
            result["ignored_clicks"] = picked.ignored_clicks
        if picked.snapped_clicks:
            result["snapped_clicks"] = picked.snapped_clicks
        if req.threshold is not None:
            result["threshold"] = "ignored: every pixel takes the model's most likely class"
        return result

    def _brush_mask(self, i, name, rle, h, w):
        if name not in self.pipeline.label_index:
            raise RequestError(f"'brush[{i}]' label {name!r} is not one of {', '.join(self.pipeline.labels)}")
        try:
            return masks.rle_to_mask(rle, h, w)
        except RequestError as exc:
            raise RequestError(f"'brush[{i}].mask': {exc}", exc.status) from None

    def detect(self, req: cvat.DetectorRequest) -> list:
        p = self.pipeline
        try:
            gray = p.read_image(req.image)
        except RequestError as exc:
            # One bad frame must not abort a task's automatic annotation (stock CVAT shows
            # only "422 Client Error"): answer no shapes, and say why in the log.
            self._warn(f"sam2-oct: detector: frame skipped, no shapes returned: {exc}")
            return []
        return [{
            "label": region.label,
            "type": "mask",
            "points": polygons.flatten_points(region.points),
            "mask": masks.to_detector_mask(region.mask, offset=region.offset),
            "confidence": f"{region.score:.3f}",
        } for region in p.regions(p.encode(gray), req.threshold)]

    def release_memory(self) -> None:
        """After an out-of-memory fault: drop cached features and the allocator's spare blocks."""
        self.pipeline.release_memory()
