# coframe server image: `docker compose up` runs it against PostgreSQL (docker-compose.yml).

# The dashboards' browser packages (@perspective-dev/*, pinned by package-lock.json).
FROM node:20-slim AS web
WORKDIR /web
COPY client/web/package.json client/web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COFRAME_WEB_DIR=/app/client/web

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY server ./server
COPY client ./client
COPY --from=web /web/node_modules ./client/web/node_modules
RUN pip install . \
    && useradd --system --create-home --uid 10001 coframe \
    && mkdir -p /data \
    && chown coframe /data

USER coframe
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# The catalog defaults to SQLite in /data; compose passes --catalog postgresql://...
CMD ["coframe", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
