# One image for both OPEA services: `opea-media serve` picks text2image (9379) or image2video
# (9369) from OPEA_MEDIA_SERVICE or --service. Everything else comes from OPEA_MEDIA_* variables
# or flags (`docker run IMAGE serve --help`).
#
#   docker build -t opea-media .                                     CPU torch from PyTorch's CPU index
#   docker build --build-arg TORCH_SOURCE=wheels -t opea-media .     torch from docker/wheels/ (offline)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t opea-media:cuda .
#
# Build arguments:
#   BASE_IMAGE       python:3.11-slim. Any Debian-like image with python3 (3.10+), venv and pip.
#   TORCH_VERSION    2.13.0
#   TORCH_SOURCE     index (default): torch from TORCH_INDEX_URL; wheels: the torch wheel in
#                    docker/wheels/ (its own dependencies from PyPI or from wheels beside it).
#   TORCH_INDEX_URL  https://download.pytorch.org/whl/cpu. A CUDA index (or https://pypi.org/simple,
#                    whose Linux torch is a CUDA build) makes a GPU image; see README.md.
#   EXTRAS           empty. setup.cfg extras to install too, comma-separated: openvino for
#                    OPEA_MEDIA_BACKEND=openvino (adds about 180 MB).

ARG BASE_IMAGE=python:3.11-slim

# --- requirements: the dependencies named in setup.cfg -----------------------------------------
# A stage of its own, so that the layers below are rebuilt only when this list changes, not on
# every edit of setup.cfg.
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=
COPY setup.cfg /tmp/setup.cfg
RUN EXTRAS="$EXTRAS" python3 -c "import configparser, os; c = configparser.ConfigParser(); c.read('/tmp/setup.cfg'); \
extras = [e for e in os.environ['EXTRAS'].split(',') if e]; \
print('\n'.join([c['options']['install_requires'].strip()] + [c['options.extras_require'][e].strip() for e in extras]))" \
    >/tmp/requirements.txt

# --- deps: a virtual environment with torch and the project's dependencies ---------------------
FROM ${BASE_IMAGE} AS deps

ARG TORCH_VERSION=2.13.0
ARG TORCH_SOURCE=index
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv

# Torch first and pinned: with an open range pip would take PyPI's multi-GB CUDA build.
COPY docker/wheels/ /tmp/wheels/
RUN set -eu; \
    case "$TORCH_SOURCE" in \
      index)  pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" ;; \
      wheels) set -- /tmp/wheels/torch-"$TORCH_VERSION"[+-]*.whl; \
              [ -e "$1" ] || { echo "no torch-$TORCH_VERSION wheel in docker/wheels/" >&2; exit 2; }; \
              pip install --no-cache-dir --find-links /tmp/wheels "$1" ;; \
      *) echo "TORCH_SOURCE must be 'index' or 'wheels', not '$TORCH_SOURCE'" >&2; exit 2 ;; \
    esac; \
    echo "torch==$TORCH_VERSION" >/tmp/torch-constraint.txt

# The constraint keeps the torch above; torchvision must not come in (it breaks diffusers' imports).
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN set -eu; \
    pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/torch-constraint.txt; \
    python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is not None)"

# --- wheel: the project itself, built as a wheel ------------------------------------------------
FROM deps AS wheel
COPY pyproject.toml setup.cfg README.md /tmp/src/
COPY opea_media/ /tmp/src/opea_media/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist /tmp/src

# --- runtime ------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG OPEA_UID=1000
# /data/huggingface is what the compose volumes mount: the Hugging Face cache survives restarts.
# /data/opea-media holds the built-in tiny pipelines (rebuilt in about a second when missing).
# /data/outputs: the files handed out by URL (the compose files mount a volume there, which
# takes this folder's owner on first use). /data/jobs: the jobs API's jobs and inputs (a volume too).
RUN set -eu; \
    groupadd --gid "$OPEA_UID" opea; \
    useradd --uid "$OPEA_UID" --gid opea --create-home --home-dir /home/opea --shell /usr/sbin/nologin opea; \
    mkdir -p /data/huggingface /data/opea-media /data/outputs /data/jobs; \
    chown -R opea:opea /data

COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /tmp/dist/ /tmp/dist/
COPY docker/healthcheck.py /usr/local/bin/opea-media-healthcheck
RUN set -eu; \
    /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/dist/*.whl; \
    rm -rf /tmp/dist; \
    chmod 0755 /usr/local/bin/opea-media-healthcheck; \
    /opt/venv/bin/opea-media --version

ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/data/huggingface \
    OPEA_MEDIA_CACHE=/data/opea-media \
    TRANSFORMERS_VERBOSITY=error \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1

USER opea
WORKDIR /home/opea

EXPOSE 9379 9369

# 503 while the model loads: the start period covers a first download of several GB.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["opea-media-healthcheck"]

ENTRYPOINT ["opea-media"]
CMD ["serve"]
