"""Call main.handler the way Nuclio does, with the local nuclio_sdk test Platform.

    h = make_handler(SAM2OCT_MODE="detector")     # init_context runs now, under these env vars
    status, reply = h.call({"image": b64(path)})  # reply is the parsed JSON body
    h.model                                       # the worker's ModelHandler (context.user_data.model)

make_handler starts from the tiny test checkpoint with warm-up off (BASE_ENV), applies the
given variables (None unsets one), runs init_context, and restores os.environ afterwards,
also when init fails. main reads the environment only in init_context, so a Handler keeps
its configuration for its whole life; share one per configuration (module-scoped fixture).
"""

import base64
import io
import json
import os
from pathlib import Path

import nuclio_sdk
import nuclio_sdk.json_encoder
import nuclio_sdk.test

import main
from sam2oct.settings import ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
TINY_CKPT = ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.pt"
TINY_CONFIG = ROOT / "tests" / "fixtures" / "parity" / "tiny_k9.yaml"
BASE_ENV = {"SAM2_CHECKPOINT": str(TINY_CKPT), "SAM2_CONFIG": str(TINY_CONFIG), "SAM2OCT_WARMUP": "0"}


def b64(data) -> str:
    """Base64 text of a file (str or Path) or of bytes, as CVAT sends an image."""
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    return base64.b64encode(data).decode("ascii")


def png_bytes(image) -> bytes:
    """PNG file bytes of a PIL image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _strict_json(text: str):
    # NaN / Infinity are not JSON: a reply containing them must fail here
    def refuse(name):
        raise ValueError(f"reply body holds {name}, which is not JSON")
    return json.loads(text, parse_constant=refuse)


def wire(response) -> dict:
    """What Nuclio's wrapper would send for a handler's return value."""
    return nuclio_sdk.Response.from_entrypoint_output(nuclio_sdk.json_encoder.Encoder().encode, response)


class Handler:
    """One Nuclio worker: a Platform whose handler context was initialised once."""

    def __init__(self, platform, context):
        self.platform = platform
        self.context = context

    @property
    def model(self):
        return self.context.user_data.model

    def response(self, body, content_type="application/json") -> nuclio_sdk.Response:
        event = nuclio_sdk.Event(body=body, content_type=content_type, method="POST", path="/")
        return self.platform.call_handler(main.handler, event)

    def call(self, body, content_type="application/json"):
        """(status, parsed JSON body); checks the reply is a JSON Response."""
        resp = self.response(body, content_type)
        assert isinstance(resp, nuclio_sdk.Response), f"handler returned {type(resp).__name__}"
        assert resp.content_type == "application/json"
        assert isinstance(resp.body, str)
        return resp.status_code, _strict_json(resp.body)

    __call__ = call


def make_handler(**env) -> Handler:
    """A fresh worker with BASE_ENV plus `env` (value None: unset); raises what init_context raises."""
    wanted = {**BASE_ENV, **env}
    names = set(ENV_VARS) | set(wanted)
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in names:  # nothing from the caller's shell leaks in
            os.environ.pop(name, None)
        os.environ.update({k: str(v) for k, v in wanted.items() if v is not None})
        platform = nuclio_sdk.test.Platform()
        # The Platform runs init_context on the first call; run it now, while env is set.
        context = platform._get_handler_context(main.handler)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Handler(platform, context)
