#!/usr/bin/env bash
# One-command set-up: creates .venv in the repository root with everything the tests,
# the CLI and the benchmarks need (CPU torch; sam2 without its optional CUDA extension).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=70" wheel
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --no-build-isolation -c constraints.txt sam2==1.1.0
.venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "set-up done: .venv ready"
