# syntax=docker/dockerfile:1
# argus images. Both targets install with scripts/install.sh — the same script `make test` runs.
#
#   docker build -t argus:serve .                         # the service (serve extra, no torch)
#   docker build --target offline -t argus:offline .      # the daily job (train extra, torch CPU)
#   docker build -t argus:serve-gpu \
#     --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .   # runtime encoder on CUDA
#
# BASE must provide python3 >= 3.11 with venv, or apt-get to install them.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive
RUN if ! python3 -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /app

# -- the source, then each image's virtual environment built from it ---------------------------
FROM base AS source
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY argus/ argus/
COPY model/ model/
COPY index/ index/
COPY service/ service/

FROM source AS build-serve
RUN scripts/install.sh serve
# Swagger UI's files for /docs (from PyPI, hash-checked): the docs need no CDN at run time
RUN .venv/bin/argus docs-assets --dir /app/docs-assets

# -- the runtime images: a non-root user owning the data directories -------------------------
FROM base AS runtime
RUN useradd --system --uid 10001 --home-dir /app argus && mkdir -p /work /bundles && chown argus /work /bundles

# -- the service -------------------------------------------------------------------------------
FROM runtime AS serve
COPY --from=build-serve /app /app
ENV PATH=/app/.venv/bin:$PATH ARGUS_BUNDLES=/bundles ARGUS_DOCS_ASSETS=/app/docs-assets
USER argus
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["argus", "serve", "--host", "0.0.0.0", "--port", "8000"]

# -- the offline job (export, build, publish; also training) ----------------------------------
FROM source AS build-offline
RUN scripts/install.sh train,serve

FROM runtime AS offline
COPY --from=build-offline /app /app
ENV PATH=/app/.venv/bin:$PATH
USER argus
CMD ["scripts/daily.sh"]

# The default target is the service.
FROM serve
