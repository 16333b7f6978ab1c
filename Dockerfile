# syntax=docker/dockerfile:1
# Multi-stage: the build stage installs ragserve into a virtualenv and pulls the models into the
# image; the runtime stage carries only that virtualenv and the model cache (no compilers, no
# torch), runs as a non-root user and starts offline.

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
# Optional extras baked in, e.g. `--build-arg EXTRAS=postgres` (docker-compose.yml does).
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/ragserve \
 && /opt/ragserve/bin/pip install --upgrade pip \
 && /opt/ragserve/bin/pip install ".${EXTRAS:+[$EXTRAS]}"
# The preload step: models go into the image, verified against their pinned sha256.
ENV RAGSERVE_MODEL_DIR=/opt/models
# --warm loads each model once, so ONNX Runtime's optimized graph is saved into the image too
# (the runtime user cannot write /opt/models; loads then skip graph optimization).
# The runtime needs no installer in its virtualenv. The bytecode pip compiled stays: the
# runtime user cannot write it, and compiling every import at each start would slow it.
RUN /opt/ragserve/bin/ragserve models pull --warm \
 && rm -f /opt/models/.lock-* \
 && /opt/ragserve/bin/python -m pip uninstall --quiet -y pip setuptools

FROM ${PYTHON} AS runtime
RUN useradd --system --uid 10001 --home-dir /data --create-home ragserve
COPY --from=build /opt/ragserve /opt/ragserve
COPY --from=build /opt/models /opt/models
ENV PATH=/opt/ragserve/bin:$PATH \
    RAGSERVE_MODEL_DIR=/opt/models \
    RAGSERVE_DATA_DIR=/data \
    RAGSERVE_HOST=0.0.0.0 \
    RAGSERVE_PORT=8000 \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
USER ragserve
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
CMD ["ragserve", "serve"]
