"""Command line: segment B-scans, score and fine-tune a checkpoint, download or slim one.

    python -m sam2oct download nr206                      # once: models/nr206/...
    python -m sam2oct segment IMAGE... --json out.json --overlay out.png
    python -m sam2oct evaluate DATA --checkpoint CK [--preprocess both] --json REPORT
    python -m sam2oct convert IN OUT
    python -m sam2oct finetune DATA --checkpoint BASE --out OUT.pt [--val DATA2 | --val-fraction F]

A thin front door over sam2oct.pipeline: flags become ``PipelineOptions`` (their defaults and
help come from there), and every user error is found before the model loads and said in one
line, ``error: --flag: what is wrong``, with exit status 2.

One module per command (``run(args)`` and ``add_parser(sub)``); the model's flags come from
``sam2oct.cli.flags``. A command raises ``Sam2OctError`` (``option=`` a pipeline option or a key
of ``OPTION_NAMES``) and ``main`` says it in the command line's names.
"""


import argparse
import logging
import sys

from sam2oct.cli import convert, download, evaluate, finetune, segment
from sam2oct.cli.flags import OPTION_NAMES
from sam2oct.errors import Sam2OctError, describe

COMMANDS = (segment, download, convert, evaluate, finetune)


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


class _StderrWarnings(logging.Handler):
    """The library's warnings as ``warning: ...`` lines on stderr (looked up when written, so a
    redirected stderr is honoured)."""

    def emit(self, record):
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _show_library_warnings() -> None:
    logger = logging.getLogger("sam2oct")
    if not any(isinstance(h, _StderrWarnings) for h in logger.handlers):
        logger.addHandler(_StderrWarnings(logging.WARNING))


def main(argv=None) -> int:
    _show_library_warnings()
    args = build_parser().parse_args(argv)  # usage errors: one line and exit 2 (_Parser.error)
    try:
        return args.run(args)
    except Sam2OctError as exc:
        names = {**OPTION_NAMES, **getattr(args, "option_names", {})}
        print(f"error: {describe(exc, names)}", file=sys.stderr)
        return 2
