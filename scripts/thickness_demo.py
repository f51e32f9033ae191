"""The README's heat map: `thickness --maps` on a synthetic macular volume (no real scan needed).

    python scripts/thickness_demo.py [--work out/thickness-demo] [--figure docs/img/thickness_map_retina.png]

The volume is sam2oct.evaluation.thickness.synthetic.synthetic_macula: a left eye, 49 B-scans of
512 A-scans at 3.87 x 11.7 x 122 µm (about 6 x 6 mm, as a Spectralis 20 x 20 degree raster),
with a foveal pit slightly off the scan's centre and the retina thicker nasally. It is written as a
`segment --labels` .npz and measured by the command line, which finds the fovea itself.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from sam2oct.cli import main as cli
    from sam2oct.evaluation.thickness.synthetic import synthetic_macula

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "thickness-demo")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "img" / "thickness_map_retina.png")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    vol = synthetic_macula(laterality="OS", bscans=49, width=512, height=496, spacing=(3.87, 11.7, 122.0),
                           fovea=(23.4, 262.7), waviness=0.03, seed=1)
    npz = args.work / "synthetic_OS.npz"
    np.savez_compressed(npz, labels=vol.labels, spacing_um=np.array([3.87, 11.7, 122.0]),
                        laterality=np.array("OS"), class_names=np.array(vol.class_names))
    report = args.work / "thickness.json"
    status = cli(["thickness", str(npz), "--json", str(report), "--csv", str(args.work / "sectors.csv"),
                  "--maps", str(args.work / "maps")])
    if status:
        return status
    out = json.loads(report.read_text())
    print(f"true pit centre B-scan {vol.fovea[0]}, column {vol.fovea[1]}; found {out['fovea']}")
    print((args.work / "sectors.csv").read_text())
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.work / "maps" / "thickness_retina.png", args.figure)
    print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
