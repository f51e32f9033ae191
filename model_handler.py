"""The Nuclio front door's model side: one Pipeline, CVAT's request in, CVAT's reply out."""

import json
import logging
from dataclasses import replace

from sam2oct.geometry import masks, polygons
from sam2oct.serving import cvat_request
from sam2oct.errors import RequestError, Sam2OctError, describe
from sam2oct.logs import forwarded, option_names
from sam2oct.model.discovery import find_checkpoint
from sam2oct.pipeline.options import OPTION_ENV
from sam2oct.pipeline.pipeline import Pipeline
from sam2oct.serving import replies
from sam2oct.serving.settings import Settings

log = logging.getLogger("sam2oct.model_handler")


class ModelHandler:
    def __init__(self, settings: Settings, logger=None):
        self.settings = settings
        self.log = logger or log
        # nuclio's logger has warn(), Python's logging warning()
        self._warn = getattr(self.log, "warning", None) or self.log.warn
        # The library's warnings name the environment variables and reach Nuclio's logger.
        with option_names(OPTION_ENV), forwarded(lambda level, message: self._warn(f"sam2-oct: {message}")):
            try:
                options = settings.options
                if not options.checkpoint:  # no SAM2_CHECKPOINT: a released one in the Hugging Face cache
                    found = find_checkpoint(profile=options.profile, models_dir=None)
                    options = replace(options, checkpoint=found.path, profile=found.profile or options.profile)
                self.pipeline = Pipeline(options)
            except Sam2OctError as exc:  # the same error, in this front door's names
                raise type(exc)(describe(exc, OPTION_ENV)) from exc
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
            return self.detect(cvat_request.parse_detector(body, max_image_bytes=self.settings.max_image_bytes))
        return self.interact(self._interactor_request(body))

    def _interactor_request(self, body) -> cvat_request.InteractorRequest:
        return cvat_request.parse_interactor(body, max_points=self.settings.max_points,
                                     max_image_bytes=self.settings.max_image_bytes)

    def infer_json(self, body) -> str:
        """``json.dumps(self.infer(body))``, byte for byte, built faster (replies.reply_json)."""
        if self.settings.mode == "detector":
            return json.dumps(self.infer(body))
        req = self._interactor_request(body)
        picked, encoded = self._interaction(req, shared=True)  # serialised here, never changed
        return replies.reply_json(self.settings.options.cvat_ui, picked, req.threshold,
                                  lambda shapes: self._shapes_json(shapes, self.pipeline.cached_shapes(encoded)))

    def _shapes_json(self, shapes, cached) -> str:
        """JSON of the fork's polygons. A frame's traced shapes are the same on every click
        (serialising thousands of them was most of a warm click's time), so their texts are kept
        with them in the pipeline's frame cache and leave with them. ``shapes`` holds cached shapes
        themselves (asked for ``shared``) or copies of them (``source``: the cached shape); other
        shapes (traced for a box, say) are serialised as they come."""
        texts = {}
        if cached is not None:
            texts = cached.memo.get("json")
            if texts is None:
                texts = cached.memo["json"] = {id(shape): json.dumps(shape) for shape in cached.shapes}
        return "[" + ", ".join(texts.get(id(getattr(shape, "source", shape))) or json.dumps(shape)
                               for shape in shapes) + "]"

    def interact(self, req: cvat_request.InteractorRequest) -> dict:
        """The reply to an interactor request, in the format CVAT_UI names, as plain JSON objects."""
        picked, _ = self._interaction(req)
        return replies.reply(self.settings.options.cvat_ui, picked, req.threshold)

    def _interaction(self, req: cvat_request.InteractorRequest, shared=False):
        """What the request's clicks pick (with what the reply format needs) and the encoded frame;
        ``shared``: the polygons as cached (Pipeline.interact), for a reply that only reads them."""
        p = self.pipeline
        encoded = p.encode_file(req.image)
        h, w = encoded.geometry.height, encoded.geometry.width
        pos = cvat_request.fit_points(req.pos_points, h, w, "positive")
        neg = cvat_request.fit_points(req.neg_points, h, w, "negative")
        bbox = cvat_request.fit_bbox(req.bbox, h, w)
        brush = [(name, self._brush_mask(i, name, rle, h, w)) for i, (name, rle) in enumerate(req.brush)]
        fmt = replies.FORMATS[self.settings.options.cvat_ui]
        picked = p.interact(encoded, pos, neg, bbox, brush, confidence=fmt.confidence, shapes=fmt.polygons,
                            shared=shared)
        if not picked.mask.any() and fmt.name == "current":  # a 200 with no shapes: say why here
            self.log.info(f"sam2-oct: no retinal layer picked: {picked.reason}")
        return picked, encoded

    def _brush_mask(self, i, name, rle, h, w):
        if name not in self.pipeline.label_index:
            raise RequestError(f"'brush[{i}]' label {name!r} is not one of {', '.join(self.pipeline.labels)}")
        try:
            return masks.rle_to_mask(rle, h, w)
        except RequestError as exc:
            raise RequestError(f"'brush[{i}].mask': {exc}", exc.status) from None

    def detect(self, req: cvat_request.DetectorRequest) -> list:
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
        } for region in p.layers(p.encode(gray), req.threshold)]  # one mask per layer

    def release_memory(self) -> None:
        """After an out-of-memory fault: drop cached features and the allocator's spare blocks."""
        self.pipeline.release_memory()
