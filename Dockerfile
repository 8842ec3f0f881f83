# syntax=docker/dockerfile:1
# One image per CRM service, chosen at build time:
#   docker build --build-arg SERVICE=leads -t crm-leads .
# SERVICE is one of: leads, opportunities, campaigns, reporting.
# Pin PYTHON_IMAGE to a digest (python:3.11-slim@sha256:...) in release builds.
ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_VERSION=0.13.8

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
RUN case "${SERVICE}" in \
      leads|opportunities|campaigns|reporting) ;; \
      *) echo "build arg SERVICE must be leads|opportunities|campaigns|reporting, got '${SERVICE}'" >&2; exit 1 ;; \
    esac
COPY --from=uv /uv /usr/local/bin/uv
# Compile bytecode at build time: the runtime root filesystem is read-only.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Third-party dependencies first, from the lock file alone, so that this layer is reused
# until uv.lock or a pyproject changes. Every workspace member's pyproject.toml is needed for
# uv to read the workspace.
COPY pyproject.toml uv.lock ./
COPY shared/contracts/pyproject.toml shared/contracts/
COPY shared/runtime/pyproject.toml shared/runtime/
COPY deploy/local/pyproject.toml deploy/local/
COPY services/leads/pyproject.toml services/leads/
COPY services/opportunities/pyproject.toml services/opportunities/
COPY services/campaigns/pyproject.toml services/campaigns/
COPY services/reporting/pyproject.toml services/reporting/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package "crm-${SERVICE}"

# Then the service and the shared packages it depends on, installed non-editable so that the
# final image needs /app/.venv only.
COPY shared/contracts/src shared/contracts/src
COPY shared/runtime/src shared/runtime/src
COPY services/${SERVICE}/src services/${SERVICE}/src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "crm-${SERVICE}"

FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE
ENV CRM_SERVICE_MODULE=crm_${SERVICE} \
    PATH=/app/.venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CRM_HTTP_HOST=0.0.0.0 \
    CRM_HTTP_PORT=8000
LABEL org.opencontainers.image.title="crm-${SERVICE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 crm \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin crm
# Owned by root and not writable by the service user.
COPY --from=builder /app/.venv /app/.venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('CRM_HTTP_PORT', '8000'), timeout=2)"]
# exec: python becomes PID 1 and receives SIGTERM itself (uvicorn shuts down gracefully).
CMD exec python -m "${CRM_SERVICE_MODULE}"
