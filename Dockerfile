# syntax=docker/dockerfile:1
#
# supportbot image: a builder stage makes a virtualenv, a slim stage runs it.
#
#   docker build -t supportbot .                       # CPU torch (default)
#   docker build -t supportbot:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# CUDA wheels bundle their CUDA runtime, so the slim base still works on a host
# with the NVIDIA driver and container toolkit (run with --gpus all). Set
# BASE_IMAGE to an nvidia/cuda runtime image with Python 3.11+ if you prefer one.
# Secrets (Slack tokens, OPENAI_API_KEY) are never built in: pass them at run
# time (--env-file .env, or compose's env_file).

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, from the chosen PyTorch index: its own layer, cached across code changes.
RUN pip install --index-url ${TORCH_INDEX_URL} torch==${TORCH_VERSION}
COPY pyproject.toml constraints.txt README.md ./
COPY knowledge ./knowledge
COPY bot ./bot
# `supportbot bench` in the image: a tool beside the product, loaded only by that command.
COPY benchmarks ./benchmarks
# The constraints file pins torch, so nothing below can replace the wheel above.
RUN pip install -c constraints.txt .

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 supportbot \
 && useradd --system --uid 10001 --gid supportbot --home-dir /app --shell /usr/sbin/nologin supportbot \
 && mkdir -p /app/data /models/huggingface \
 && chown -R supportbot:supportbot /app /models
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models/huggingface \
    DATA_DIR=/app/data \
    HOST=0.0.0.0 \
    PORT=3000 \
    METRICS_PORT=9100 \
    LOG_FORMAT=json \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    MALLOC_ARENA_MAX=2
WORKDIR /app
# Models (HF cache or local copies) and the index / feedback data outlive containers.
VOLUME ["/models", "/app/data"]
USER supportbot
# 3000: Slack HTTP Events API (unused in Socket Mode); 9100: /metrics, /healthz, /readyz.
EXPOSE 3000 9100
# Liveness only: loading models and the index may take minutes, readiness is /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('METRICS_PORT', '9100') + '/healthz', timeout=4)"]
CMD ["supportbot", "serve"]
