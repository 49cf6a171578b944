# vae-serve images. Targets:
#   serve      (default) CPU inference: FastAPI + ONNX Runtime, no torch
#   serve-gpu  the same on a CUDA runtime base with onnxruntime-gpu
#   train      the trainer (torch, the `train` extra); writes a new model version
# One uvicorn worker per container: requests are batched inside the process,
# so scale out with replicas, not workers.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# onnxruntime-gpu from PyPI is built for CUDA 13 and cuDNN 9 (1.31.1 links
# libcudart.so.13): the base's CUDA major must follow it. Hosts need a driver
# that supports CUDA 13.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# --- serving dependencies, built into a venv that the runtime stage copies ---
FROM ${PYTHON_IMAGE} AS build
# binutils for `strip`, in this stage only. The base tag fixes the Debian release;
# apt version pins would break the build at Debian's next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY app ./app
COPY trainer ./trainer
COPY vae_contract ./vae_contract
# The runtime needs no installer, and byte code only for what the service imports
# at startup (compiling all of site-packages, onnxruntime's own tooling included,
# adds 46 MB). Then what the service never loads goes, each measured on the venv
# (docs/deploy.md, Image size):
# - onnxruntime's libonnxruntime.so, 35 MB: a second copy of the runtime for C API
#   users; the Python binding has the runtime built in and never loads it;
# - symbols and debug sections of the shared libraries, 20 MB (uvloop alone 12):
#   strip --strip-unneeded keeps what the dynamic linker needs. Not in the *.libs
#   folders: auditwheel rewrote those libraries with patchelf, and strip misaligns
#   their segments (numpy's OpenBLAS then fails to load: "ELF load command
#   address/offset not page-aligned");
# - test suites, type stubs, C headers and Cython sources, 9 MB (numpy's tests 7).
# Last, the service's own imports (the gRPC stubs included) run once: a library
# that no longer loads fails the build. -I keeps /src off sys.path, so the
# installed copy is imported.
RUN pip install --no-cache-dir --no-compile . \
    && python -m pip uninstall --yes pip setuptools \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && rm "$site"/onnxruntime/capi/libonnxruntime.so.* \
    && find "$site" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
        -exec strip --strip-unneeded {} + \
    && find "$site" -depth -type d -name tests -exec rm -r {} + \
    && find "$site" -type f \( -name '*.pyi' -o -name '*.h' -o -name '*.pxd' -o -name '*.pyx' \) -delete \
    && python -I -c "import uvicorn, app.oip.rpc; from app.main import create_app; uvicorn.Config(create_app()).load()"

# --- training image: docker compose --profile train run --rm train ---
FROM ${PYTHON_IMAGE} AS train
WORKDIR /src
# torch==2.13.0 is pinned in the `train` extra; pass
# --build-arg PIP_EXTRA_INDEX_URL=<a CPU wheel index> for a CPU-only torch.
ARG PIP_EXTRA_INDEX_URL=""
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib
COPY pyproject.toml README.md ./
COPY app ./app
COPY trainer ./trainer
COPY vae_contract ./vae_contract
RUN pip install --no-cache-dir "./[train]" \
    && groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin vae
USER 10001:10001
CMD ["vae-train", "--data", "/data/mnist", "--out", "/model_store/mnist"]

# --- GPU serving: onnxruntime-gpu on a CUDA runtime base ---
FROM ${CUDA_IMAGE} AS gpu-build
# Ubuntu's python3 (3.12 on 24.04): the base tag fixes the release; apt
# version pins would break the build at Ubuntu's next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY app ./app
COPY trainer ./trainer
COPY vae_contract ./vae_contract
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` package:
# drop the CPU one and lay the GPU one, at the version the extra resolved,
# down again over the files that the uninstall removed.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "./[gpu]" \
    && ort_gpu="onnxruntime-gpu==$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime-gpu"))')" \
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir --no-deps --force-reinstall "$ort_gpu"

FROM ${CUDA_IMAGE} AS serve-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin vae
COPY --from=gpu-build /opt/venv /opt/venv
COPY model_store /model_store
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_GRPC_PORT=8001 \
    VAE_MODEL_STORE=/model_store \
    VAE_DEVICE=cuda
USER 10001:10001
# HTTP (the native API and the Open Inference Protocol), and the protocol's gRPC.
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VAE_PORT', '8000'), timeout=2)"]
CMD ["vae-serve"]

# --- CPU serving (the default target, so it stays last) ---
FROM ${PYTHON_IMAGE} AS serve
RUN groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin vae
COPY --from=build /opt/venv /opt/venv
COPY model_store /model_store
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_GRPC_PORT=8001 \
    VAE_MODEL_STORE=/model_store \
    VAE_DEVICE=cpu
USER 10001:10001
# HTTP (the native API and the Open Inference Protocol), and the protocol's gRPC.
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VAE_PORT', '8000'), timeout=2)"]
CMD ["vae-serve"]
