"""Finding the parity fixtures: NAME.pt + NAME.yaml + NAME.npz triples.

They live in tests/fixtures/parity/ and, when the environment variable SAM2OCT_PARITY_DIR names a
folder, there too (e.g. fixtures made from a released checkpoint, too big for the repository).
`pytest_report_header` can be imported into conftest.py to list them in pytest's header.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUNDLED_DIR = Path(__file__).resolve().parent / "fixtures" / "parity"
ENV_VAR = "SAM2OCT_PARITY_DIR"
SUFFIXES = (".pt", ".yaml", ".npz")


@dataclass(frozen=True)
class ParityFixture:
    id: str
    folder: Path
    name: str

    @property
    def pt(self) -> Path:
        return self.folder / f"{self.name}.pt"

    @property
    def yaml(self) -> Path:
        return self.folder / f"{self.name}.yaml"

    @property
    def npz(self) -> Path:
        return self.folder / f"{self.name}.npz"

    def cases(self) -> list:
        """Case names in the npz (every CASE/low_res_logits); reads only the zip directory."""
        with np.load(self.npz) as z:
            return sorted(k.split("/")[0] for k in z.files if k.endswith("/low_res_logits"))


def parity_dirs() -> list:
    dirs = [BUNDLED_DIR]
    extra = os.environ.get(ENV_VAR, "").strip()
    if extra:
        dirs.append(Path(extra).expanduser().resolve())
    return dirs


def discover():
    """(complete fixtures, incomplete stems as 'folder/NAME') over all parity folders."""
    found, incomplete, seen = [], [], set()
    for folder in parity_dirs():
        if not folder.is_dir():
            continue
        stems = sorted({p.stem for p in folder.iterdir() if p.suffix in SUFFIXES})
        for stem in stems:
            if all((folder / f"{stem}{s}").is_file() for s in SUFFIXES):
                fid = stem if stem not in seen else f"{folder.name}/{stem}"
                seen.add(fid)
                found.append(ParityFixture(fid, folder, stem))
            else:
                incomplete.append(f"{folder}/{stem}")
    return found, incomplete


def describe() -> str:
    found, _ = discover()
    names = ", ".join(f"{f.id} ({f.folder})" for f in found) or "none"
    return f"parity fixtures: {names}"


def pytest_report_header(config):
    return describe()
