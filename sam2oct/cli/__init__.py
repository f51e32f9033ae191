"""Command line: segment B-scans, score and fine-tune a checkpoint, download or slim one, measure thickness.

    python -m sam2oct download nr206                      # once: models/nr206/...
    python -m sam2oct segment IMAGE|VOLUME... --json out.json --overlay out.png [--labels L.npz]
    python -m sam2oct cvat-task VOLUME... --out DIR [--server-host HOST --project-id N]
    python -m sam2oct evaluate DATA --checkpoint CK [--preprocess both] --json REPORT
    python -m sam2oct convert IN OUT
    python -m sam2oct finetune DATA --checkpoint BASE --out OUT.pt [--val DATA2 | --val-fraction F]
    python -m sam2oct thickness LABELS.npz|EXPORT|VOLUME --json R.json --csv S.csv --maps DIR

A thin front door over sam2oct.pipeline: flags become ``PipelineOptions`` (their defaults and
help come from there), and every user error is found before the model loads and said in one
line, ``error: --flag: what is wrong``, with exit status 2.

One module per command (``run(args)`` and ``add_parser(sub)``); the model's flags come from
``sam2oct.cli.flags``. A command raises ``Sam2OctError`` (``option=`` a pipeline option or a key
of ``OPTION_NAMES``) and ``main`` says it in the command line's names.
"""


import argparse
import sys
from collections import ChainMap
from collections.abc import Mapping

from sam2oct.cli import convert, cvat_task, download, evaluate, finetune, segment, thickness
from sam2oct.cli.flags import OPTION_NAMES
from sam2oct.errors import Sam2OctError, describe
from sam2oct.logs import forwarded, option_names

COMMANDS = (segment, cvat_task, download, convert, evaluate, finetune, thickness)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the command line's one-line format."""

    def error(self, message):
        message = message.removeprefix("argument ")
        self.exit(2, f"error: {message}; see: {self.prog} --help\n")



def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sam2oct", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


class _Names(Mapping):
    """The command line's names of options: the command's own (``args.option_names``, read at
    each lookup: a command may set it as it runs), then the flags."""

    def __init__(self, args):
        self._args = args

    def _chain(self):
        return ChainMap(getattr(self._args, "option_names", None) or {}, OPTION_NAMES)

    def __getitem__(self, key):
        return self._chain()[key]

    def __iter__(self):
        return iter(self._chain())

    def __len__(self):
        return len(self._chain())


def _print_warning(level, message) -> None:
    print(f"warning: {message}", file=sys.stderr)  # sys.stderr as it is now (tests replace it)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: one line and exit 2 (_Parser.error)
    # A command may rename an option (args.option_names: the checkpoint from $SAM2_CHECKPOINT, say);
    # errors and the library's warnings then say it in those names.
    names = _Names(args)
    try:
        with option_names(names), forwarded(_print_warning):
            return args.run(args)
    except Sam2OctError as exc:
        print(f"error: {describe(exc, names)}", file=sys.stderr)
        return 2
