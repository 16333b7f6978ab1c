# syntax=docker/dockerfile:1
# Multi-stage: the build stage installs ragserve into a virtualenv and pulls the models into the
# image; the runtime stage carries only that virtualenv and the model cache (no compilers, no
# pip, no torch), runs as a non-root user and starts offline.
#
# Bases: by default a minimal Debian 12 (bookworm, python3 3.11) made from Debian packages by
# scripts/make-base-image (no registry needed): BASE has python3 and CA certificates and no
# package manager, BUILD_BASE adds python3-venv and binutils. With Docker Hub at hand any
# Python 3.11 image should do for both (not tried here: no Docker Hub):
#   docker build --build-arg BASE=python:3.11-slim-bookworm \
#                --build-arg BUILD_BASE=python:3.11-slim-bookworm -t ragserve .
# scripts/image-check builds, starts and checks the image (podman or docker).

ARG BASE=localhost/ragserve-base:bookworm
ARG BUILD_BASE=localhost/ragserve-base:bookworm-build

FROM ${BUILD_BASE} AS build
# Extras baked in: `hub` by default, as `make serve` installs (huggingface_hub is a dependency of
# tokenizers anyway); `--build-arg EXTRAS=hub,postgres` for the PostgreSQL store (compose does).
ARG EXTRAS=hub
# PIP_CERT: pip trusts the system CA store (a build behind a TLS-inspecting proxy mounts its
# bundle there; scripts/image-check does). The runtime stage does not inherit this ENV.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /opt/ragserve \
 && /opt/ragserve/bin/pip install --quiet --upgrade pip \
 && /opt/ragserve/bin/pip install --quiet ".${EXTRAS:+[$EXTRAS]}"
# The preload step: models go into the image, verified against their pinned sha256.
# --warm loads each model once, so ONNX Runtime's optimized graph is saved into the image too
# (the runtime user cannot write /opt/models; loads then skip graph optimization). The saved
# graph is found by a key that includes the model file's mtime in nanoseconds, and image layers
# keep whole seconds: the files' mtimes are cut to the second before warming, or the runtime
# would never find the graph (it did not: 64 MB carried for nothing; bge-small then loaded in
# 0.51 s instead of 0.31 s). The key also includes the CPU model and flags: on another kind of
# CPU the graph is built at each start.
# Then the virtualenv loses what serving never runs (the image must stay under 500 MB; each line
# saved what it says on the default build):
# - the installer (pip, setuptools, wheel);
# - ONNX Runtime's C API library (35 MB: the Python module carries its own copy, linked in) and
#   its model-tooling packages transformers/ and tools/ (`ragserve models export`, which needs
#   the export extra and torch, is not served from the image);
# - hf_xet (11 MB), the hub's transfer backend (the image starts with HF_HUB_OFFLINE=1);
# - C/Cython sources, headers, type stubs, test suites, and two extension modules nothing
#   imports: lxml.objectify (python-docx uses lxml.etree) and numpy's SIMD test module;
# - the bytecode of packages serving never imports (none of them appears in
#   PYTHONPROFILEIMPORTTIME's list over a start, JSON and HTML ingest and every search mode):
#   the hub client and its helpers (offline), pygments (rich highlights tracebacks with it),
#   protobuf (ONNX Runtime's tooling). Imported after all, they compile in memory. ~11 MB;
# - debug symbols of the extension modules (strip --strip-unneeded, where binutils is there:
#   the Debian build base has it; ~28 MB). Not the libraries auditwheel vendored in *.libs/:
#   stripping numpy's OpenBLAS leaves it unloadable ("ELF load command ... not page-aligned").
# The rest of the bytecode pip compiled stays: the runtime user cannot write it, and compiling
# every import at each start would slow it.
ENV RAGSERVE_MODEL_DIR=/opt/models
RUN /opt/ragserve/bin/ragserve models pull \
 && find /opt/models -type f -exec sh -c 'touch -d "@$(stat -c %Y "$1")" "$1"' _ {} \; \
 && /opt/ragserve/bin/ragserve models pull --warm \
 && rm -f /opt/models/.lock-* \
 && /opt/ragserve/bin/python -m pip uninstall --quiet -y pip setuptools wheel \
 && cd /opt/ragserve/lib/python3*/site-packages \
 && rm -rf pip pip-*.dist-info setuptools setuptools-*.dist-info wheel wheel-*.dist-info \
           _distutils_hack distutils-precedence.pth /opt/ragserve/bin/pip* \
           onnxruntime/capi/libonnxruntime.so.* onnxruntime/transformers onnxruntime/tools \
           hf_xet hf_xet-*.dist-info lxml/objectify.*.so numpy/_core/_simd.*.so \
 && find . \( -name '*.c' -o -name '*.cpp' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' \
        -o -name '*.pyi' \) -type f -delete \
 && find . -depth -mindepth 2 -type d -name tests -exec rm -rf {} + \
 && for p in huggingface_hub fsspec filelock tqdm yaml pygments google; do \
      [ ! -d "$p" ] || find "$p" -depth -name __pycache__ -type d -exec rm -rf {} +; done \
 && if command -v strip >/dev/null; then \
      find /opt/ragserve -name '*.so' -type f ! -path '*.libs/*' \
        -exec strip --strip-unneeded {} +; fi

FROM ${BASE} AS runtime
# The base's own installer goes too where it has one (python:3.11-slim does; the Debian base
# made by scripts/make-base-image has none, nor ensurepip's wheels).
RUN groupadd --system --gid 10001 ragserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --create-home ragserve \
 && rm -rf /usr/local/lib/python3*/site-packages/pip* \
           /usr/local/lib/python3*/site-packages/setuptools* \
           /usr/local/lib/python3*/site-packages/wheel* \
           /usr/local/lib/python3*/ensurepip /usr/local/bin/pip* \
           /usr/lib/python3*/ensurepip /usr/share/python-wheels
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
# Podman keeps a HEALTHCHECK only in the docker image format (`podman build --format docker`).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
CMD ["ragserve", "serve"]
