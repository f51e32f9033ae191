"""`download`: a released checkpoint into models/<profile>/, verified."""

from pathlib import Path

from sam2oct.cli.flags import CHECKPOINT_ENV
from sam2oct.cli.paths import check_destination
from sam2oct.errors import CheckpointError
from sam2oct.model.profiles import HF_REPO, PROFILES


def run(args) -> int:
    from sam2oct.model.checkpoint import CHECKSUMS_NAME
    from sam2oct.model.hub import HubUnreachable, download, stored_key

    # The checkpoint and checksums.json are written here: a bad folder is said before ~880 MB come.
    models = Path(args.models_dir)
    check_destination("models_dir", models / stored_key(args.profile))
    check_destination("models_dir", models / CHECKSUMS_NAME)
    try:
        path = download(args.profile, args.models_dir, args.revision)
    except HubUnreachable as exc:
        raise CheckpointError(
            f"{exc}; to go on offline, copy {Path(exc.filename).name} ({HF_REPO}/{exc.filename} on the hub) "
            f"from a machine that has it and pass its path with --checkpoint (or set {CHECKPOINT_ENV}), "
            f"or set HF_ENDPOINT to a mirror of the hub") from None
    print(f"saved {path}\nuse it with: python -m sam2oct segment IMAGE   (it finds {path} in "
          f"{args.models_dir}/), or: export {CHECKPOINT_ENV}={path.resolve()}")
    return 0




def add_parser(sub) -> None:
    dl = sub.add_parser("download", help="fetch a released checkpoint into models/<profile>/")
    dl.add_argument("profile", choices=sorted(PROFILES))
    dl.add_argument("--models-dir", default="models", metavar="DIR", help="default: %(default)s")
    dl.add_argument("--revision", help="hub commit to fetch (default: the recorded one, else main)")
    dl.set_defaults(run=run)
