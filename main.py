"""Nuclio entry points: one ModelHandler per worker, JSON in, JSON out, never an escaping exception."""

import json
import traceback

from model_handler import ModelHandler
from sam2oct.errors import RequestError, describe
from sam2oct.pipeline import timing
from sam2oct.pipeline.options import OPTION_ENV
from sam2oct.serving.settings import Settings
from sam2oct.serving import replies

try:  # a CUDA out-of-memory error is its own class from torch 2.5 on
    from torch import OutOfMemoryError
except ImportError:  # pragma: no cover
    from torch.cuda import OutOfMemoryError


def init_context(context):
    context.logger.info("sam2-oct: loading the model")
    try:
        handler = ModelHandler(Settings.from_env(), logger=context.logger)
    except Exception as exc:
        # Said once, plainly; the worker then dies and Nuclio restarts it (restartPolicy).
        context.logger.error(f"sam2-oct: cannot start: {exc}")
        raise
    context.user_data.model = handler
    p = handler.profile
    settings = handler.settings
    context.logger.info(f"sam2-oct: ready: profile {p.name}, {p.num_classes} classes, "
                        f"device {handler.predictor.device}, {handler.pipeline.runtime_note}, "
                        f"mode {settings.mode}")
    if settings.mode == "interactor":  # a format the CVAT in front cannot draw puts masks in the wrong place
        fmt = replies.FORMATS[settings.options.cvat_ui]
        context.logger.info(f"sam2-oct: interactor replies in SAM2OCT_CVAT_UI={fmt.name} format, for {fmt.cvat}")


def _reply(context, status, obj):
    return _respond(context, status, json.dumps(obj))


def _respond(context, status, text):
    return context.Response(body=text, headers={}, content_type="application/json", status_code=status)


def handler(context, event):
    model = context.user_data.model
    try:
        with timing.recording() as timings:
            text = model.infer_json(event.body)
        context.logger.debug(f"sam2-oct: request: {timings}; reply {len(text)} bytes")
        return _respond(context, 200, text)
    except RequestError as exc:
        message = describe(exc, OPTION_ENV)
        context.logger.warn(f"sam2-oct: refused ({exc.status}): {message}")
        return _reply(context, exc.status, {"error": message})
    except (OutOfMemoryError, MemoryError):
        model.release_memory()
        context.logger.error("sam2-oct: out of memory; cache cleared")
        return _reply(context, 503, {"error": "the device ran out of memory; try again"})
    except Exception as exc:  # an internal fault: log it, answer 500, keep serving
        context.logger.error(f"sam2-oct: internal error: {traceback.format_exc()}")
        return _reply(context, 500, {"error": f"internal error: {type(exc).__name__}"})
