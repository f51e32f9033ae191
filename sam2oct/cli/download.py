"""`download`: a released checkpoint into models/<profile>/, verified."""

from sam2oct.cli.flags import CHECKPOINT_ENV
from sam2oct.model.profiles import PROFILES


def run(args) -> int:
    from sam2oct.model.hub import download

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
