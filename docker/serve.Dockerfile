# syntax=docker/dockerfile:1
# distill-serve on one NVIDIA GPU: gunicorn with one worker holding one model. Build from the
# repository root (this file's .dockerignore keeps .venv and workspaces out of the context):
#   docker build -f docker/serve.Dockerfile -t distillery-serve:0.1.0 .
# The model is not in the image: mount it at /models (see docker/README.md).
# torch 2.11.0 from PyPI carries its own CUDA 13.0 libraries; the host needs an NVIDIA driver
# that supports CUDA 13 (>= 580) and the NVIDIA container toolkit.

FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

FROM nvidia/cuda:13.0.2-base-ubuntu24.04

# Python 3.11, as the test suite (uv installs a standalone CPython build; Ubuntu 24.04 ships 3.12).
ARG PYTHON_VERSION=3.11.14
# HOME in /tmp: the runtime user (uid 10001) has no home, and triton/HF write caches under it.
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface

COPY --from=uv /uv /usr/local/bin/uv
RUN uv venv --python "${PYTHON_VERSION}" /opt/venv

WORKDIR /app
COPY docker/constraints.txt docker/constraints.txt
# The inference part of the model stack, in its own layer so code changes do not re-download
# it; the training-only packages (llamafactory, torchvision, torchaudio) stay out.
RUN uv pip install -c docker/constraints.txt torch transformers bitsandbytes accelerate peft
COPY pyproject.toml README.md ./
# Only the core and the serve stage: serve imports nothing else, and without the other stages'
# folders the wheel holds just these two (none of the PDF, spreadsheet or training code or deps).
COPY distillery distillery
COPY serve serve
RUN uv pip install -c docker/constraints.txt ".[serve]" \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin serve
USER 10001

# A merged model dir mounted here; base + LoRA: DISTILL_SERVE_MODEL=base dir, DISTILL_SERVE_ADAPTER=adapter dir.
ENV DISTILL_SERVE_MODEL=/models
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# `distill-serve gunicorn` execs gunicorn, so gunicorn is PID 1 and gets SIGTERM from `docker stop`.
CMD ["distill-serve", "gunicorn", "--bind", "0.0.0.0:8000"]
