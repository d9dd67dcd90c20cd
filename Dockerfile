# homepage-cms-exporter: a small, non-root image. Configure it with HOMEPAGE_EXPORTER_* and
# DATABASE_URL environment variables (see README.md).

# --- build: a virtual environment with the package and its dependencies ----------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md queries.yaml ./
COPY exporter ./exporter
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/venv/bin/homepage-cms-exporter --version

# --- runtime: the venv only, as an unprivileged user --------------------------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOMEPAGE_EXPORTER_LISTEN_ADDRESS=:10187 \
    HOMEPAGE_EXPORTER_LOG_FORMAT=json
USER 10001:10001
EXPOSE 10187
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["homepage-cms-exporter", "healthcheck"]
ENTRYPOINT ["homepage-cms-exporter"]
CMD ["run"]
