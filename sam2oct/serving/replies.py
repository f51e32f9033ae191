"""The interactor's reply in the form each CVAT generation draws where the model put it.

One setting, ``cvat_ui`` (Nuclio: ``SAM2OCT_CVAT_UI``), picks the format:

``current`` (default), stock CVAT 2.60 and later (cvat-core ``LambdaManager.call``):
    ``{"shapes": [{"type": "mask", "points": RUNS + [x1, y1, x2, y2], "attributes":
    [{"spec_id": 0, "value": "<confidence>"}], "group": 0, "occluded": false, "rotation": 0,
    "source": "semi-auto"}]}``: CVAT's own mask encoding (run lengths over the inclusive box, row
    by row, alternating from a run of 0s), the box placing it. No ``mask`` key: that UI wraps a
    reply holding one as a mask at (0, 0) and ignores ``bounds``. Nothing picked: no shapes (the UI
    says "No shapes to display"), and ``reason`` says why.
``legacy``, stock CVAT 2.12 to 2.59: ``{"mask": [[0/1, ...], ...], "bounds": [x1, y1, x2, y2],
    "points": [[x, y], ...]}``, the mask the crop of ``bounds``. That UI reads ``mask`` as nested
    lists (it run-length encodes them itself), so no run lengths here. Nothing picked: 422 (that UI
    needs a mask).
``cvat-oct``, the CVAT-OCT fork: ``legacy`` plus ``shapes``, a polygon per layer region left after
    the box and negative clicks (``{"type": "polygon", "label": NAME, "points": [[x, y], ...]}``).
    The polygons go to the fork only: they are most of a reply's bytes.

Every format also carries ``labels`` (the picked layers' names) and ``prompts``, and when they
apply ``brush``, ``ignored_clicks``, ``snapped_clicks`` and ``threshold``: CVAT passes unknown
keys through and its UI ignores them; admins and tests read them.

``reply`` gives the reply as plain JSON objects; ``reply_json`` the same reply's JSON text,
``json.dumps(reply(...))`` byte for byte, written faster (the 0/1 crop straight from its array,
each cached polygon's text once per frame).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import numpy as np

from sam2oct.geometry import masks, polygons
from sam2oct.errors import ConfigError, RequestError

CONFIDENCE_SPEC_ID = 0  # the attribute id CVAT's UI reads as the shape's confidence


@dataclass(frozen=True)
class ReplyFormat:
    name: str
    cvat: str  # which CVAT draws it right, for logs and docs
    confidence: bool  # the reply needs the mask's mean probability
    polygons: bool  # the reply holds the polygons of every layer region (the fork's shapes)


FORMATS = {f.name: f for f in (
    ReplyFormat("current", "stock CVAT 2.60 and later: a mask shape in CVAT's run lengths with its confidence",
                confidence=True, polygons=False),
    ReplyFormat("legacy", "stock CVAT 2.12 to 2.59: mask (0/1 rows of the box) + bounds + points",
                confidence=False, polygons=False),
    ReplyFormat("cvat-oct", "the CVAT-OCT fork: mask + bounds + points and per-layer polygons in shapes",
                confidence=False, polygons=True),
)}
DEFAULT = "current"
CVAT_UI_HELP = ("interactor reply format: current (CVAT 2.60 and later), legacy (CVAT 2.12 to "
                "2.59) or cvat-oct (the CVAT-OCT fork)")


def reply_format(name: str) -> ReplyFormat:
    key = str(name).strip().lower()
    if key not in FORMATS:
        raise ConfigError(f"{name!r} is not one of {', '.join(FORMATS)}", option="cvat_ui")
    return FORMATS[key]


# --- encodings --------------------------------------------------------------------------------

def mask_runs(crop: np.ndarray) -> np.ndarray:
    """CVAT's run lengths of a 2-D mask, row-major, alternating, the first a run of 0s (maybe empty)."""
    flat = np.asarray(crop, dtype=bool).ravel()
    if not flat.size:
        raise ValueError("mask is empty")
    ends = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], ends, [flat.size])))
    return np.concatenate(([0], runs)) if flat[0] else runs


def mask_points(mask: np.ndarray) -> list:
    """CVAT's mask ``points`` of a full-frame mask: run lengths over its tight box, then the box.

    The same numbers as ``cvat_sdk.masks.encode_mask`` (the Nuclio image has no cvat-sdk), as ints.
    """
    crop, box = masks.crop_to_box(mask)
    return mask_runs(crop).tolist() + box


def mask_shape(mask: np.ndarray, score: float) -> dict:
    """One shape of CVAT 2.60+'s interactor reply: the mask, placed by its box, and its confidence."""
    return {"type": "mask", "points": mask_points(mask),
            "attributes": [{"spec_id": CONFIDENCE_SPEC_ID, "value": f"{score:.4f}"}],
            "group": 0, "occluded": False, "rotation": 0, "source": "semi-auto"}


def crop_json(crop: np.ndarray) -> str:
    """``json.dumps(crop.astype(int).tolist())`` of a 0/1 mask, written with numpy (a few times faster)."""
    h, w = crop.shape
    row = np.empty((h, 3 * w + 2), dtype=np.uint8)  # "[0, 1, ..., 0], " per row
    cells = row[:, 1:3 * w + 1].reshape(h, w, 3)  # "v, " per value
    cells[:, :, 0] = ord("0") + (crop != 0)
    cells[:, :, 1:] = np.frombuffer(b", ", np.uint8)
    row[:, 0], row[:, -3] = ord("["), ord("]")  # "]" where the row's last ", " began
    row[:, -2:] = np.frombuffer(b", ", np.uint8)
    return "[" + row.tobytes()[:-2].decode("ascii") + "]"


# --- the reply --------------------------------------------------------------------------------

# Stands for a field in the reply's JSON until its text, written faster, takes its place.
_SLOT = f"sam2oct-slot-{uuid.uuid4().hex}"


def _fields(fmt: ReplyFormat, picked, threshold) -> tuple[dict, dict]:
    """The reply with its large fields as slots, and those fields' values (arrays, shape lists)."""
    large, reply = {}, {}
    if picked.mask.any():
        if fmt.name == "current":
            reply["shapes"] = [mask_shape(picked.mask, picked.score)]
        else:
            crop, bounds = masks.crop_to_box(picked.mask)
            large["mask"] = crop
            reply.update(mask=None, bounds=bounds, points=polygons.mask_outline(picked.mask))
            if fmt.polygons:
                large["shapes"] = picked.shapes
                reply["shapes"] = None
    elif fmt.name == "current":
        reply.update(shapes=[], reason=f"no retinal layer picked: {picked.reason}")
    else:  # these UIs need a mask: say why there is none (logged by CVAT, shown as a 4xx)
        raise RequestError(f"no retinal layer picked: {picked.reason}", status=422)
    reply.update(labels=picked.labels, prompts=picked.prompts)
    for key in ("brush", "ignored_clicks", "snapped_clicks"):
        if getattr(picked, key):
            reply[key] = getattr(picked, key)
    if threshold is not None:
        reply["threshold"] = "ignored: every pixel takes the model's most likely class"
    for key in large:
        reply[key] = f"{_SLOT}-{key}"
    return reply, large


def reply(cvat_ui: str, picked, threshold=None) -> dict:
    """The interactor's reply for an :class:`~sam2oct.pipeline.results.Interaction`, as plain JSON objects.

    ``picked`` must come from ``Pipeline.interact`` with ``confidence`` and ``shapes`` as the
    format asks (``FORMATS[cvat_ui].confidence`` / ``.polygons``).
    """
    out, large = _fields(reply_format(cvat_ui), picked, threshold)
    if "mask" in large:
        out["mask"] = large["mask"].astype(np.uint8).tolist()
    if "shapes" in large:
        out["shapes"] = list(large["shapes"])
    return out


def reply_json(cvat_ui: str, picked, threshold=None, shape_json=None) -> str:
    """``json.dumps(reply(cvat_ui, picked, threshold))``, byte for byte, written faster.

    ``shape_json(shapes)`` may give the JSON text of the polygon list (cached per frame); by
    default each polygon is serialised as it comes.
    """
    out, large = _fields(reply_format(cvat_ui), picked, threshold)
    text = json.dumps(out)
    for key, value in large.items():
        if key == "mask":
            value = crop_json(value)
        else:
            value = shape_json(value) if shape_json else json.dumps(list(value))
        # the slots' text cannot occur elsewhere in the reply: replace the one occurrence
        text = text.replace(json.dumps(f"{_SLOT}-{key}"), value, 1)
    return text
