# syntax=docker/dockerfile:1
# claude-sidecar image: locked runtime dependencies only, bytecode compiled at build time,
# numeric non-root user, read-only root filesystem friendly (writes nothing outside /tmp).
#
#   docker build -t claude-sidecar .
#   docker run --rm --read-only --tmpfs /tmp -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/config/minimal.yaml:/etc/claude-sidecar/sidecar.yaml:ro" claude-sidecar

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: a self-contained venv
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
# The venv must use the interpreter the runtime stage has at the same path, never a download;
# copy (not hardlink) out of uv's cache so the venv can be copied to the next stage.
ENV UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/sidecar/venv
WORKDIR /src
# Dependencies first (cached while only the source changes), exactly as uv.lock pins them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project --no-editable --compile-bytecode
# Then the project itself, installed as a wheel (not editable): the runtime stage has no /src.
COPY sidecar ./sidecar
COPY config/minimal.yaml ./config/minimal.yaml
RUN uv sync --locked --no-dev --no-editable --compile-bytecode

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="claude-sidecar" \
      org.opencontainers.image.description="Auth, CORS, prompt screening, quotas and OpenTelemetry for Claude streams and the app beside it" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/sidecar/venv /opt/sidecar/venv
COPY config/sidecar.example.yaml /etc/claude-sidecar/sidecar.example.yaml
# PYTHONDONTWRITEBYTECODE: the bytecode is already compiled and the root filesystem may be
# read-only. HOME points at /tmp, the one writable place (an emptyDir/tmpfs in Kubernetes).
ENV PATH=/opt/sidecar/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SIDECAR_CONFIG=/etc/claude-sidecar/sidecar.yaml
# Bake in the embedded default so the image starts without a mount; a ConfigMap mounted at
# /etc/claude-sidecar replaces it. Container configs must listen on 0.0.0.0, not loopback.
RUN printf '%s\n' \
      '# Default in-container config: built-in fake Claude, no auth. Mount your own over it.' \
      'server:' \
      '  listen: "0.0.0.0:8080"' \
      '  admin_listen: "0.0.0.0:9090"' \
      'claude:' \
      '  base_url: "builtin:fake"' \
      > /etc/claude-sidecar/sidecar.yaml \
 && chmod 0444 /etc/claude-sidecar/sidecar.yaml
# Numeric UID:GID so Kubernetes can verify runAsNonRoot without a passwd entry.
USER 10001:10001
WORKDIR /tmp
# 8080 traffic, 9090 admin (/healthz /readyz /metrics).
EXPOSE 8080 9090
# Docker / Compose health: the sidecar's own liveness endpoint, asked by its own CLI (the
# image has no curl); Kubernetes ignores this and uses its probes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["sidecar", "health", "--timeout", "3"]
# Exec form: the sidecar is PID 1 and receives SIGTERM itself, then drains for
# server.shutdown_grace_seconds.
ENTRYPOINT ["sidecar", "run"]
