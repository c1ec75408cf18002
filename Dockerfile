# One image for every service of docker-compose.yml: Dagster webserver, daemon, code location, Datasette.
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH
RUN pip install --no-cache-dir "uv==0.13.9"
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY candlestick_pipeline ./candlestick_pipeline
COPY datasette ./datasette
COPY workspace.yaml dagster.yaml ./
COPY deploy ./deploy
RUN uv sync --frozen --no-dev
ENV DAGSTER_HOME=/app/deploy/postgres
