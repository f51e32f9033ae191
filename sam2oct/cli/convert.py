"""`convert`: a slim weights-only copy of a training checkpoint."""

from pathlib import Path

from sam2oct.cli.flags import add_option_flags
from sam2oct.cli.paths import check_destination


def run(args) -> int:
    from sam2oct.model.hub import convert

    args.option_names = {"dst": "dst"}
    check_destination("dst", Path(args.dst))  # before the checkpoint is read and checked
    info = convert(args.src, args.dst, args.config)
    print(f"wrote {args.dst}: {info['tensors']} tensors, K={info['num_classes']}, {info['bytes'] / 2**20:.1f} MiB")
    return 0




def add_parser(sub) -> None:
    cv = sub.add_parser("convert", help="write a slim weights-only copy of a checkpoint")
    cv.add_argument("src")
    cv.add_argument("dst")
    add_option_flags(cv, ("config",))
    cv.set_defaults(run=run)
