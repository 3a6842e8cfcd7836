# litellm-budget-sidecar: the sidecar alone. Settings only via SIDECAR_* environment variables.
#   docker build -t litellm-budget-sidecar .
#   docker run -p 4001:4001 -e SIDECAR_UPSTREAM_URL=http://litellm:4000 -e SIDECAR_ADMIN_KEY=sk-... litellm-budget-sidecar

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# Wheels only: the final image needs no compiler, and none is installed here either.
RUN python -m venv /opt/sidecar \
 && /opt/sidecar/bin/pip install --only-binary=:all: . \
 && find /opt/sidecar -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sidecar
COPY --from=build /opt/sidecar /opt/sidecar
ENV PATH=/opt/sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_HOST=0.0.0.0 \
    SIDECAR_PORT=4001
USER 10001
EXPOSE 4001
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIDECAR_PORT', '4001'), timeout=2)"]
ENTRYPOINT ["litellm-budget-sidecar"]
