"""Every knob of the function, read from environment variables in one place (init time only)."""

import os
from dataclasses import dataclass

from PIL import Image

from sam2oct.images import DEFAULT_MAX_PIXELS
from sam2oct.errors import ConfigError
from sam2oct.preprocessing import check_mode

# name -> (default, one-line meaning); the README's table documents exactly these.
ENV_VARS = {
    "SAM2_CHECKPOINT": (None, "path of the SAM2-OCT checkpoint file (required)"),
    "SAM2_CONFIG": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "SAM 2 model config: sam2's packaged name or a YAML path"),
    "SAM2_DEVICE": ("auto", "torch device: auto (cuda when available), cuda, cuda:N or cpu"),
    "SAM2OCT_PROFILE": ("", "mgu, mgu_prompted or nr206; empty infers it from the class count"),
    "SAM2OCT_CLASS_NAMES": ("", "comma-separated class names in channel order, overriding the profile's"),
    "SAM2OCT_PREPROCESS": ("", "stretch (model card) or pad-equalize (CVAT-OCT interactor); empty = profile's"),
    "SAM2OCT_CACHE_SIZE": ("8", "frames whose image features are kept (LRU)"),
    "SAM2OCT_MODE": ("interactor", "interactor or detector"),
    "SAM2OCT_LABEL_STYLE": ("names", "names (profile class names) or index (OCT_Object_<k>, the CVAT-OCT fork)"),
    "SAM2OCT_PRECISION": ("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32"),
    "SAM2OCT_MAX_PIXELS": (str(DEFAULT_MAX_PIXELS), "largest image accepted, in pixels (decompression-bomb guard)"),
    "SAM2OCT_MAX_IMAGE_BYTES": (str(32 << 20), "largest image file accepted, in bytes (before base64)"),
    "SAM2OCT_MAX_POINTS": ("64", "most clicks (and brush masks) accepted in one request"),
    "SAM2OCT_SIMPLIFY": ("1.0", "polygon simplification tolerance in pixels (0 keeps every pixel corner)"),
    "SAM2OCT_MIN_AREA": ("16", "regions smaller than this many pixels merge into their surroundings"),
    "SAM2OCT_TORCH_THREADS": ("0", "CPU threads torch may use (0 = torch's default, one per core)"),
    "SAM2OCT_WARMUP": ("1", "1 runs one dummy request at start-up so the first click is fast"),
}


def _number(env, name, cast, lo, hi):
    raw = env.get(name, ENV_VARS[name][0])
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {'an integer' if cast is int else 'a number'}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
    return value


def _choice(env, name, choices):
    value = env.get(name, ENV_VARS[name][0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Settings:
    checkpoint: str | None
    config: str
    device: str
    profile: str
    class_names: str
    preprocess: str
    cache_size: int
    mode: str
    label_style: str
    precision: str
    max_pixels: int
    max_image_bytes: int
    max_points: int
    simplify: float
    min_area: int
    torch_threads: int
    warmup: bool

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        preprocess = env.get("SAM2OCT_PREPROCESS", "").strip().lower()
        if preprocess:
            check_mode(preprocess)
        return cls(
            checkpoint=env.get("SAM2_CHECKPOINT") or None,
            config=env.get("SAM2_CONFIG") or ENV_VARS["SAM2_CONFIG"][0],
            device=env.get("SAM2_DEVICE", "auto").strip() or "auto",
            profile=env.get("SAM2OCT_PROFILE", "").strip(),
            class_names=env.get("SAM2OCT_CLASS_NAMES", "").strip(),
            preprocess=preprocess,
            cache_size=_number(env, "SAM2OCT_CACHE_SIZE", int, 0, 10_000),
            mode=_choice(env, "SAM2OCT_MODE", ("interactor", "detector")),
            label_style=_choice(env, "SAM2OCT_LABEL_STYLE", ("names", "index")),
            precision=_choice(env, "SAM2OCT_PRECISION", ("auto", "bf16", "fp32")),
            # Pillow refuses anything over twice its own bomb limit before we are asked.
            max_pixels=_number(env, "SAM2OCT_MAX_PIXELS", int, 1, 2 * Image.MAX_IMAGE_PIXELS),
            max_image_bytes=_number(env, "SAM2OCT_MAX_IMAGE_BYTES", int, 1, 1 << 31),
            max_points=_number(env, "SAM2OCT_MAX_POINTS", int, 1, 100_000),
            simplify=_number(env, "SAM2OCT_SIMPLIFY", float, 0.0, 100.0),
            min_area=_number(env, "SAM2OCT_MIN_AREA", int, 0, 1 << 31),
            torch_threads=_number(env, "SAM2OCT_TORCH_THREADS", int, 0, 1024),
            warmup=_choice(env, "SAM2OCT_WARMUP", ("0", "1")) == "1",
        )
