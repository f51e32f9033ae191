# SAM2-OCT, GPU: the image that function-gpu.yaml has Nuclio build (same base image, same install
# steps, same environment), built here with plain `docker build` instead of Nuclio's builder, the
# way Nuclio documents for a Python function (docs.nuclio.io, Python runtime, "Dockerfile").
# For air-gapped sites: build and save where the registries are reachable, load and deploy on the
# site; nuctl then only starts the image. Step by step: docs/deploy.md.
#
# Build (from the repository root, best from a clean export: see docs/deploy.md):
#   docker build -t sam2-oct-gpu:0.1.0 .
# Carry it over:
#   docker save sam2-oct-gpu:0.1.0 | gzip > sam2-oct-gpu-0.1.0.tar.gz
#   docker load -i sam2-oct-gpu-0.1.0.tar.gz
# Deploy (the yaml gives the name, annotations, trigger, GPU limit, checkpoint volume and env;
# its spec.build section is not used):
#   nuctl deploy --project-name cvat --run-image sam2-oct-gpu:0.1.0 --file function-gpu.yaml \
#     --platform local --platform-config '{"attributes": {"network": "cvat_cvat"}}'
#   nuctl deploy --project-name cvat --run-image sam2-oct-gpu:0.1.0 --file detector/function-gpu.yaml \
#     --platform local --platform-config '{"attributes": {"network": "cvat_cvat"}}'
# NUCLIO_LABEL must be the version of the Nuclio dashboard and nuctl in use (CVAT's compose: 1.15.x).

ARG NUCLIO_LABEL=1.15.9
ARG NUCLIO_ARCH=amd64
ARG NUCLIO_BASE_IMAGE=python:3.11-slim
ARG NUCLIO_ONBUILD_IMAGE=quay.io/nuclio/handler-builder-python-onbuild:${NUCLIO_LABEL}-${NUCLIO_ARCH}

# Supplies uhttpc, used for the health check on the local (Docker) platform
FROM quay.io/nuclio/uhttpc:0.0.1-${NUCLIO_ARCH} AS uhttpc

# Supplies the processor binary, Nuclio's Python wrapper and the wheels that go with them
FROM ${NUCLIO_ONBUILD_IMAGE} AS processor

# python: 3.11 (function-gpu.yaml runtime python:3.11)
FROM ${NUCLIO_BASE_IMAGE}

COPY --from=processor /home/nuclio/bin/processor /usr/local/bin/processor
COPY --from=processor /home/nuclio/bin/py /opt/nuclio/
COPY --from=processor /home/nuclio/bin/py3.11-whl/ /opt/nuclio/whl/
COPY --from=uhttpc /home/nuclio/bin/uhttpc /usr/local/bin/uhttpc

# What Nuclio's builder adds for runtime python:3.11 (the project never installs nuclio-sdk
# itself): pip, nuclio-sdk and msgpack from the wheels shipped in Nuclio's own image, offline.
RUN python /opt/nuclio/whl/$(basename /opt/nuclio/whl/pip-*.whl)/pip install pip --no-index --find-links /opt/nuclio/whl \
 && python -m pip install nuclio-sdk msgpack --no-index --find-links /opt/nuclio/whl

# function-gpu.yaml spec.build.directives.preCopy
RUN python -m pip install --no-cache-dir setuptools==84.2.1
RUN python -m pip install --no-cache-dir torch==2.13.0 torchvision==0.28.0

# The function code (what Nuclio copies from the function root into /opt/nuclio)
COPY main.py model_handler.py requirements.txt constraints.txt /opt/nuclio/
COPY sam2oct /opt/nuclio/sam2oct

# function-gpu.yaml spec.build.directives.postCopy
RUN SAM2_BUILD_CUDA=0 python -m pip install --no-cache-dir --no-build-isolation -c /opt/nuclio/constraints.txt -c /opt/nuclio/requirements.txt sam2==1.1.0
RUN python -m pip install --no-cache-dir -c /opt/nuclio/constraints.txt -r /opt/nuclio/requirements.txt

# function-gpu.yaml spec.env (a deployed yaml's env replaces these, e.g. the detector's)
ENV SAM2_CHECKPOINT=/models/nr206/final_runs_NR206_last.pt \
    SAM2OCT_PROFILE=nr206 \
    SAM2OCT_MODE=interactor \
    SAM2_DEVICE=cuda

# Readiness probe
HEALTHCHECK --interval=1s --timeout=3s CMD /usr/local/bin/uhttpc --url http://127.0.0.1:8082/ready || exit 1

# The processor reads /etc/nuclio/config/processor/processor.yaml, which nuctl provides at deploy time
CMD [ "processor" ]
