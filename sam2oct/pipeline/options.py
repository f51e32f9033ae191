"""The one options table: every setting of the pipeline, defined once.

Each option is a field of :class:`PipelineOptions` whose metadata holds its help line, its name
at each front door (the Nuclio environment variable, the CLI flag; cvat-cli's ``-p`` name is the
field name itself) and how it is checked. The Nuclio env table, the CLI flags and the cvat-cli
parameters are all built from these fields, so a default or a help line is written once.
Errors name the option neutrally (``exc.option``); each front door spells it its own way.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from PIL import Image

from sam2oct.errors import ConfigError
from sam2oct.geometry.images import DEFAULT_MAX_PIXELS
from sam2oct.model.checkpoint import DEFAULT_CONFIG
from sam2oct.model.preprocessing import PREPROCESS_MODES
from sam2oct.model.runtime import RUNTIMES
from sam2oct.model.profiles import PROFILES, parse_class_names
from sam2oct.serving.replies import CVAT_UI_HELP, DEFAULT as DEFAULT_CVAT_UI, FORMATS as CVAT_UI_FORMATS

LABEL_STYLES = ("names", "index")
PRECISIONS = ("auto", "bf16", "fp32")


def option(default, help, *, env, flag=None, metavar=None, choices=None, bounds=None, nuclio_only=False):
    """A field of the options table. ``choices``: the allowed values (lower-cased on the way in);
    ``bounds``: (type, lowest, highest) for a number; ``nuclio_only``: a setting of the Nuclio
    function alone (no cvat-cli ``-p`` parameter)."""
    return field(default=default, metadata={"help": help, "env": env, "flag": flag, "metavar": metavar,
                                            "choices": choices, "bounds": bounds, "nuclio_only": nuclio_only})


@dataclass(frozen=True)
class PipelineOptions:
    """Every setting of the pipeline, with its default. Checked on creation (no model needed)."""

    checkpoint: str | None = option(
        None, "path of the SAM2-OCT checkpoint file", env="SAM2_CHECKPOINT", flag="--checkpoint",
        metavar="FILE")
    config: str = option(
        DEFAULT_CONFIG, "SAM 2 model config: a name packaged with sam2 (configs/sam2.1/...) or a YAML file path",
        env="SAM2_CONFIG", flag="--config", metavar="CONFIG")
    device: str = option(
        "auto", "torch device: auto (cuda when available), cpu, cuda or cuda:N", env="SAM2_DEVICE",
        flag="--device", metavar="DEVICE")
    profile: str = option(
        "", "mgu, mgu_prompted or nr206; empty infers it from the class count (11 -> mgu, 9 -> nr206)",
        env="SAM2OCT_PROFILE", flag="--profile", choices=("",) + tuple(PROFILES))
    class_names: str = option(
        "", "comma-separated class names in channel order, overriding the profile's", env="SAM2OCT_CLASS_NAMES",
        flag="--class-names", metavar="NAMES")
    preprocess: str = option(
        "", "stretch (model card) or pad-equalize (CVAT-OCT interactor); empty = the profile's",
        env="SAM2OCT_PREPROCESS", flag="--preprocess", choices=("",) + PREPROCESS_MODES)
    label_style: str = option(
        "names", "names (profile class names) or index (OCT_Object_<k>, the CVAT-OCT fork)",
        env="SAM2OCT_LABEL_STYLE", flag="--label-style", choices=LABEL_STYLES)
    runtime: str = option(
        "auto", "what encodes images: auto (openvino on a CPU device when it is installed, else torch), "
                "torch or openvino (CPU only; the decoder stays in torch)",
        env="SAM2OCT_RUNTIME", flag="--runtime", choices=RUNTIMES)
    precision: str = option(
        "auto", "auto (torch: bf16 autocast on CUDA devices of compute capability 8.0 or more; openvino: bf16 on "
                "CPUs with avx512_bf16 or amx_bf16, see docs/cpu.md; else fp32), bf16 (openvino: such CPUs only) or fp32",
        env="SAM2OCT_PRECISION", flag="--precision", choices=PRECISIONS)
    ov_cache_dir: str = option(
        "", "folder of the converted OpenVINO encoder (converted once per checkpoint); empty = "
            "$HF_HOME/sam2oct-openvino (HF_HOME defaults to ~/.cache/huggingface)",
        env="SAM2OCT_OV_CACHE_DIR", flag="--ov-cache-dir", metavar="DIR")
    cache_mb: float = option(
        2048.0, "memory the per-frame feature cache may hold, in MiB (0 disables it)",
        env="SAM2OCT_CACHE_MB", bounds=(float, 0.0, float(1 << 20)))
    simplify: float = option(
        1.0, "polygon simplification tolerance in pixels (0 keeps every pixel corner)", env="SAM2OCT_SIMPLIFY",
        flag="--simplify", metavar="PX", bounds=(float, 0.0, 100.0))
    min_area: int = option(
        16, "regions smaller than this many pixels merge into their surroundings", env="SAM2OCT_MIN_AREA",
        flag="--min-area", metavar="PIXELS", bounds=(int, 0, 1 << 31))
    # Pillow refuses anything over twice its own bomb limit before we are asked.
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "largest image accepted, in pixels (decompression-bomb guard; at most 178956970, Pillow's hard limit)",
        env="SAM2OCT_MAX_PIXELS", flag="--max-pixels", metavar="PIXELS",
        bounds=(int, 1, 2 * Image.MAX_IMAGE_PIXELS))
    torch_threads: int = option(
        0, "CPU threads torch (and the openvino encoder) may use (0 = their default, one per core; on a "
           "shared CPU host fewer keep clicks fast)", env="SAM2OCT_TORCH_THREADS", flag="--threads", metavar="N", bounds=(int, 0, 1024))
    snap_px: float = option(
        3.0, "a positive click this many pixels or closer to a layer picks the nearest layer",
        env="SAM2OCT_SNAP_PX", bounds=(float, 0.0, 64.0))
    # The interactor's reply format (sam2oct/serving/replies.py): each CVAT generation draws only
    # its own right; cvat-cli functions answer through cvat-sdk, whatever the server's version.
    cvat_ui: str = option(
        DEFAULT_CVAT_UI, CVAT_UI_HELP, env="SAM2OCT_CVAT_UI", choices=tuple(CVAT_UI_FORMATS), nuclio_only=True)

    def __post_init__(self):
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if meta["choices"] is not None:
                value = str(value).strip().lower()
                if value not in meta["choices"]:
                    shown = ", ".join(c or "(empty)" for c in meta["choices"])
                    raise ConfigError(f"{value!r} is not one of {shown}", option=f.name)
            elif meta["bounds"] is not None:
                value = _number(f.name, value, *meta["bounds"])
            object.__setattr__(self, f.name, value)
        object.__setattr__(self, "device", str(self.device).strip() or "auto")
        object.__setattr__(self, "config", str(self.config or DEFAULT_CONFIG))
        object.__setattr__(self, "class_names", str(self.class_names or "").strip())
        object.__setattr__(self, "ov_cache_dir", str(self.ov_cache_dir or "").strip())
        if self.class_names:
            parse_class_names(self.class_names)
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint) or None)

    @classmethod
    def names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))


def _number(name, value, cast, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{value!r} is not a number", option=name)
    if cast is int and value != int(value):
        raise ConfigError(f"{value!r} is not an integer", option=name)
    if not lo <= value <= hi:  # also refuses NaN
        raise ConfigError(f"{value} is outside {lo}..{hi}", option=name)
    return cast(value)


def _table(key) -> dict:
    return {f.name: f.metadata[key] for f in fields(PipelineOptions) if f.metadata[key] is not None}


# Views of the table, one per use.
OPTION_DEFAULTS = {f.name: f.default for f in fields(PipelineOptions) if f.default is not MISSING}
OPTION_HELP = _table("help")
OPTION_ENV = _table("env")  # the Nuclio function's environment variables
OPTION_FLAGS = _table("flag")  # the command line's flags (options without one are not flags)
OPTION_METAVARS = _table("metavar")
NUCLIO_ONLY = tuple(f.name for f in fields(PipelineOptions) if f.metadata["nuclio_only"])
OPTION_CHOICES = {name: tuple(c for c in choices if c) for name, choices in _table("choices").items()}
