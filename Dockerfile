# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target bot    -t minigpt4-bot .      # slim: no torch, talks to a worker
#   docker build --target worker -t minigpt4-worker .   # the model worker; PyPI's torch wheels bundle CUDA
# The GPU needs only the host's NVIDIA driver and the NVIDIA Container Toolkit.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 app \
    && mkdir -p /run/minigpt4 /data /weights && chown app /run/minigpt4 /data /weights
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY model_worker ./model_worker

FROM base AS worker
RUN pip install ".[worker,queue]"
USER app
# Weights are mounted read-write so the first start can write its safetensors bundle next to them.
ENV HF_HOME=/weights/.cache
VOLUME ["/weights", "/run/minigpt4"]
# Unhealthy when the worker stops answering or an engine step hangs past --step-timeout (the watchdog).
# The first start converts the weights: give it time before failures count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
    CMD ["python", "-m", "model_worker", "health", "--socket", "/run/minigpt4/worker.sock"]
ENTRYPOINT ["python", "-m", "model_worker"]
CMD ["serve", "--weights", "/weights", "--socket", "/run/minigpt4/worker.sock"]

FROM base AS bot
RUN pip install ".[queue]"
USER app
ENV DATA_DIR=/data
VOLUME ["/data"]
ENTRYPOINT ["python", "-m", "bot"]
CMD ["run"]
