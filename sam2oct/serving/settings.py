"""The Nuclio front door's settings: environment variables, read once at init time.

Each pipeline option's variable, default and help come from the options table
(``sam2oct.pipeline.options``), so nothing is written twice. A few settings belong to the Nuclio
function alone (mode, request limits, warm-up).
"""

import os
from dataclasses import dataclass

from sam2oct.errors import ConfigError, Sam2OctError, describe
from sam2oct.pipeline.options import OPTION_DEFAULTS, OPTION_ENV, OPTION_HELP, PipelineOptions

_NUCLIO_ONLY = {
    "SAM2OCT_MODE": ("interactor", "interactor or detector"),
    "SAM2OCT_MAX_IMAGE_BYTES": (str(32 << 20), "largest image file accepted, in bytes (before base64)"),
    "SAM2OCT_MAX_POINTS": ("64", "most clicks (and brush masks) accepted in one request"),
    "SAM2OCT_WARMUP": ("1", "1 runs one dummy request at start-up so the first click is fast"),
}
# Read by glibc at process start, and by sam2oct.model.malloc_arenas, which leaves it alone if set.
_PROCESS = {
    "MALLOC_ARENA_MAX": (None, "glibc's limit on malloc arenas; unset, a worker that encodes with OpenVINO "
                               "keeps 2 (its resident memory then stays flat, docs/cpu.md)"),
}


def _env_table() -> dict:
    defaults = OPTION_DEFAULTS
    table = {}
    for option, env in OPTION_ENV.items():
        default = defaults[option]
        meaning = OPTION_HELP[option] + (" (unset: the released one in the Hugging Face cache)"
                                         if option == "checkpoint" else "")
        table[env] = (None if default is None else str(default), meaning)
    table.update(_NUCLIO_ONLY)
    table.update(_PROCESS)
    return table


# name -> (default, one-line meaning); the README's table documents exactly these.
ENV_VARS = _env_table()


def _parse(env, option):
    """The string of one option's variable, typed as the option is (unset: the pipeline's default)."""
    name = OPTION_ENV[option]
    raw = env.get(name)
    default = OPTION_DEFAULTS[option]
    if raw is None or (raw.strip() == "" and not isinstance(default, (int, float))):
        return default
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return raw.strip()
    cast = type(default)
    try:
        return cast(raw.strip())
    except ValueError:
        raise ConfigError(f"{raw!r} is not {'an integer' if cast is int else 'a number'}", option=option) from None


def _int(env, name, lo, hi):
    raw = env.get(name, _NUCLIO_ONLY[name][0])
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
    return value


def _choice(env, name, choices):
    value = env.get(name, _NUCLIO_ONLY[name][0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


@dataclass(frozen=True)
class Settings:
    options: PipelineOptions
    mode: str
    max_image_bytes: int
    max_points: int
    warmup: bool

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        try:
            options = PipelineOptions(**{option: _parse(env, option) for option in OPTION_ENV})
        except Sam2OctError as exc:
            raise ConfigError(describe(exc, OPTION_ENV)) from exc
        return cls(
            options=options,
            mode=_choice(env, "SAM2OCT_MODE", ("interactor", "detector")),
            max_image_bytes=_int(env, "SAM2OCT_MAX_IMAGE_BYTES", 1, 1 << 31),
            max_points=_int(env, "SAM2OCT_MAX_POINTS", 1, 100_000),
            warmup=_choice(env, "SAM2OCT_WARMUP", ("0", "1")) == "1",
        )
