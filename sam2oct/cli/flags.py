"""The model's flags, built from the options table, and the checked options they give.

``add_option_flags(parser, MODEL_OPTIONS)`` adds --checkpoint (with --models-dir), --config,
--profile, --class-names, --preprocess and --device with the pipeline's defaults and help;
``options_from_args(args)`` turns them into checked ``PipelineOptions``, finding the checkpoint
when none is named (``option_values`` then ``with_checkpoint``, to check other inputs in between).
"""

import sys
from dataclasses import replace

from sam2oct.pipeline.options import (OPTION_CHOICES, OPTION_DEFAULTS, OPTION_ENV, OPTION_FLAGS, OPTION_HELP,
                                      OPTION_METAVARS, PipelineOptions)

# What errors are named by: the flags, and the command line's own settings.
OPTION_NAMES = {**OPTION_FLAGS, "models_dir": "--models-dir", "json": "--json", "overlay": "--overlay"}
# The flags of every command that runs the model (segment, evaluate, finetune).
MODEL_OPTIONS = ("checkpoint", "config", "profile", "class_names", "preprocess", "device")
# What encodes, at which precision, and where the openvino encoder's conversion is kept.
RUNTIME_OPTIONS = ("runtime", "precision", "ov_cache_dir")
SEGMENT_OPTIONS = MODEL_OPTIONS + ("label_style", "precision", "simplify", "min_area", "max_pixels", "torch_threads",
                                   "runtime", "ov_cache_dir")

CHECKPOINT_ENV = OPTION_ENV["checkpoint"]
_CHECKPOINT_HELP = (f" (default: ${CHECKPOINT_ENV}, else the checkpoint `python -m sam2oct download` "
                    f"stored under --models-dir, else one in the Hugging Face cache)")


def _choice(text: str) -> str:
    return text.strip().lower()



def add_option_flags(parser, options=MODEL_OPTIONS, **overrides) -> None:
    """Add the flags of these pipeline options, with the pipeline's defaults and help.

    ``overrides``: per option, argparse keywords to change (e.g. ``preprocess={"choices": [...]}``).
    --checkpoint brings --models-dir, where it looks when neither it nor $SAM2_CHECKPOINT is set.
    """
    defaults = OPTION_DEFAULTS
    for name in options:
        default = defaults[name]
        kw = {"dest": name, "default": default, "help": OPTION_HELP[name]}
        if name in OPTION_METAVARS:
            kw["metavar"] = OPTION_METAVARS[name]
        if name in OPTION_CHOICES:
            kw.update(choices=OPTION_CHOICES[name], type=_choice)
        elif isinstance(default, (int, float)):
            kw.update(type=type(default))
        if name == "checkpoint":
            kw["help"] += _CHECKPOINT_HELP
        elif default not in (None, ""):
            kw["help"] += " (default: %(default)s)"
        kw.update(overrides.get(name, {}))
        parser.add_argument(OPTION_FLAGS[name], **kw)
        if name == "checkpoint":
            parser.add_argument("--models-dir", default="models", metavar="DIR",
                                help="where `download` stores checkpoints (default: %(default)s)")


def option_values(args, **overrides) -> PipelineOptions:
    """Checked PipelineOptions from the parsed flags as given (``overrides`` win); no file is read."""
    values = {name: getattr(args, name) for name in PipelineOptions.names() if hasattr(args, name)}
    values.update(overrides)
    return PipelineOptions(**values)


def with_checkpoint(args, options: PipelineOptions) -> PipelineOptions:
    """The options with a checkpoint (sam2oct.model.discovery): --checkpoint, else $SAM2_CHECKPOINT,
    else the one `download` stored under --models-dir, else one in the Hugging Face cache (a stored
    one sets the profile too: that of --profile, or the only one there)."""
    if options.checkpoint or not hasattr(args, "checkpoint"):
        return options
    from sam2oct.model.discovery import find_checkpoint

    found = find_checkpoint(profile=options.profile, env_var=CHECKPOINT_ENV, models_dir=getattr(args, "models_dir", "models"))
    if found.source == "env":  # its errors name where it came from
        vars(args).setdefault("option_names", {})["checkpoint"] = CHECKPOINT_ENV
    print(f"using checkpoint {found.describe()}", file=sys.stderr)
    return replace(options, checkpoint=found.path, profile=found.profile or options.profile)


def options_from_args(args, **overrides) -> PipelineOptions:
    """option_values, then with_checkpoint: what a command that runs the model starts from."""
    return with_checkpoint(args, option_values(args, **overrides))
