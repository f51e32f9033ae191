"""Run the reliability and security suites and print the figures docs/RELIABILITY.md quotes.

    .venv/bin/python scripts/reliability_report.py            # the CI form (~1 min on 2 idle cores)
    .venv/bin/python scripts/reliability_report.py --long     # also the long soak (SAM2OCT_SOAK_LONG=1)

Each suite writes one summary line to <suite>.txt in the folder $SAM2OCT_SUMMARY_DIR names; this
script points it at a fresh temporary folder, runs pytest, and prints the lines of this run with
the wall time (nothing is written into the repository).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["test_fuzz.py", "test_limits.py", "test_soak.py", "test_supply_chain.py", "test_faults.py",
          "test_threads.py"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", action="store_true", help="run the long soak as well (SAM2OCT_SOAK_LONG=1)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sam2oct-reliability-") as tmp:
        return _run(args, Path(tmp))


def _run(args, out: Path) -> int:
    runs = [({}, SUITES)]
    if args.long:
        runs.append(({"SAM2OCT_SOAK_LONG": "1"}, ["test_soak.py"]))
    rc = 0
    for extra, suites in runs:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *[f"tests/{s}" for s in suites]]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "SAM2OCT_SUMMARY_DIR": str(out), **extra}, capture_output=True, text=True)
        wall = time.perf_counter() - t
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
        label = " ".join(f"{k}={v}" for k, v in extra.items())
        print(f"$ {label + ' ' if label else ''}{' '.join(cmd[1:])}\n  -> {tail}  (wall {wall:.0f} s)")
        for line in proc.stdout.splitlines():
            if line.startswith(("FAILED", "ERROR")):
                print("  " + line)
        rc = rc or proc.returncode
    print()
    for path in sorted(out.glob("*.txt")):
        print(path.read_text().strip())
    return rc


if __name__ == "__main__":
    sys.exit(main())
