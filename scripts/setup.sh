#!/usr/bin/env bash
# One-command set-up: creates .venv in the repository root with everything the tests,
# the CLI and the benchmarks need (CPU torch; sam2 without its optional CUDA extension).
#
# torch and torchvision come as one matching pair of CPU builds from PyTorch's own wheel index:
# on Linux the default index (PyPI) serves the CUDA build, several GB of nvidia-* wheels. Where
# that index cannot be reached (an offline mirror, an air-gapped CI machine), torch alone comes
# from the configured default index instead; torchvision then arrives with sam2 from there and
# may not import (nothing here needs it). SETUP_TORCH_INDEX names another index for the pair
# (a local mirror of the CPU index; https://pypi.org/simple for the CUDA build on a Linux GPU
# host); set it empty to skip PyTorch's index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_INDEX=${SETUP_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=70" wheel

# A 5-second look at the index first, so that a machine without access falls back at once
# instead of waiting out pip's timeouts and retries. Honours pip's CA bundle (PIP_CERT) and
# the usual proxy variables.
torch_index_reachable() {
    [ -n "$TORCH_INDEX" ] || return 1
    .venv/bin/python - "$TORCH_INDEX" <<'EOF'
import os, ssl, sys, urllib.request
url = sys.argv[1].rstrip("/") + "/torch/"
cafile = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or None
try:
    context = ssl.create_default_context(cafile=cafile)
    urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5, context=context)
except Exception as exc:
    print(f"set-up: {url} not reachable ({type(exc).__name__}: {exc})", file=sys.stderr)
    sys.exit(1)
EOF
}

if torch_index_reachable; then
    echo "set-up: torch 2.13.0 + torchvision 0.28.0 from $TORCH_INDEX"
    .venv/bin/python -m pip install -q -c constraints.txt --index-url "$TORCH_INDEX" \
        torch==2.13.0 torchvision==0.28.0
    # the pair must work together (a torchvision built for another torch fails on import)
    .venv/bin/python - "$TORCH_INDEX" <<'EOF'
import sys
try:
    import torch, torchvision
except Exception as exc:
    sys.exit(f"set-up: torch and torchvision from {sys.argv[1]} do not work together: {type(exc).__name__}: {exc}")
print("set-up: torch", torch.__version__, "torchvision", torchvision.__version__)
EOF
else
    echo "set-up: ${TORCH_INDEX:-no torch index} not usable: torch 2.13.0 only, from the default package index"
    .venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
fi

SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install -q --no-build-isolation -c constraints.txt sam2==1.1.0
.venv/bin/python -m pip install -q -c constraints.txt -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
echo "set-up done: .venv ready"
