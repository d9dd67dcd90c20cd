#!/bin/sh
# docker-entrypoint-initdb.d: the reference CMS schema, demo data and the exporter's role.
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f /sql/schema.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f /sql/seed.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
     -c "SET homepage_exporter.password = '$EXPORTER_PASSWORD'" -f /sql/exporter_role.sql
