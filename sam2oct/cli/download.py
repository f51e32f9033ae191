"""`download`: a released checkpoint into models/<profile>/, verified."""

from pathlib import Path

from sam2oct.cli.flags import CHECKPOINT_ENV
from sam2oct.cli.paths import check_destination
from sam2oct.model.checkpoint import CHECKSUMS_NAME
from sam2oct.model.profiles import PROFILES


def run(args) -> int:
    from sam2oct.model.hub import stored_key, download

    # The checkpoint and checksums.json are written here: a bad folder is said before ~880 MB come.
    models = Path(args.models_dir)
    check_destination("models_dir", models / stored_key(args.profile))
    check_destination("models_dir", models / CHECKSUMS_NAME)
    path = download(args.profile, args.models_dir, args.revision)
    print(f"saved {path}\nuse it with: python -m sam2oct segment IMAGE   (it finds {path} in "
          f"{args.models_dir}/), or: export {CHECKPOINT_ENV}={path.resolve()}")
    return 0




def add_parser(sub) -> None:
    dl = sub.add_parser("download", help="fetch a released checkpoint into models/<profile>/")
    dl.add_argument("profile", choices=sorted(PROFILES))
    dl.add_argument("--models-dir", default="models", metavar="DIR", help="default: %(default)s")
    dl.add_argument("--revision", help="hub commit to fetch (default: the recorded one, else main)")
    dl.set_defaults(run=run)
