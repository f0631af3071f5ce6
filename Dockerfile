# syntax=docker/dockerfile:1.7
# One image for every Montage service. The Deployment picks the process:
#   python -m montage_gateway | montage_orchestrator | montage_ragnarok
#   python -m montage_stages --stage <stage>
#   python -m montage_orchestrator.migrate (the migration Job)
# ffmpeg comes from the imageio-ffmpeg wheel (a static binary inside site-packages).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# --- build: resolve the locked dependencies into /app/.venv -----------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# 1. Dependencies only, from the lockfile and every shipped workspace member's pyproject.toml:
#    this layer is rebuilt when those change, not on every source edit. What is installed is the
#    root project's dependencies (the shipped packages) without the dev group: not
#    --all-packages, which would take in the development package (tests/dev: the local launcher,
#    the stand-ins, the embedded Redis and PostgreSQL), absent from this build context.
COPY uv.lock pyproject.toml ./
COPY libs/contracts/pyproject.toml libs/contracts/
COPY libs/common/pyproject.toml libs/common/
COPY libs/streams/pyproject.toml libs/streams/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/orchestrator/pyproject.toml services/orchestrator/
COPY services/ragnarok-proxy/pyproject.toml services/ragnarok-proxy/
COPY services/stage-workers/pyproject.toml services/stage-workers/
COPY clients/cli/pyproject.toml clients/cli/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace
# 2. The workspace's own packages. Non-editable: the venv holds real copies, so the runtime
#    stage needs nothing but /app/.venv.
COPY libs libs
COPY services services
COPY clients clients
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
    && /app/.venv/bin/python -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())"

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 montage \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin montage
COPY --from=build /app/.venv /app/.venv
# The root filesystem is read-only in Kubernetes: no bytecode writes, caches and HOME in /tmp.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HOST=0.0.0.0 \
    LOG_FORMAT=json
WORKDIR /app
USER 10001:10001
# PORT (the API of gateway, orchestrator, ragnarok-proxy) and OPS_PORT (/metrics, /healthz,
# /readyz of every service), as the Kubernetes manifests set them.
EXPOSE 8080 9090
CMD ["python", "-m", "montage_gateway"]
