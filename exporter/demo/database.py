"""Loading the reference CMS into a database: schema, pg_cron job, the exporter's role."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from exporter.demo.cluster import Cluster

EXPORTER_ROLE = "homepage_exporter"


def sql_file(name: str) -> Path:
    """A SQL file shipped in the package (exporter/sql/NAME)."""
    return Path(str(resources.files("exporter.sql").joinpath(name)))


def create_cms_database(
    cluster: Cluster, database: str, *, exporter_password: str, extensions: bool = True
) -> None:
    """A database with the reference schema, the exporter role, and (optionally) pg_cron and
    pg_stat_statements, as a Supabase project has them."""
    cluster.psql(f'CREATE DATABASE "{database}"')
    if extensions and "pg_stat_statements" in cluster.preload:
        cluster.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database=database)
    cluster.psql_file(sql_file("schema.sql"), database=database)
    if extensions and "pg_cron" in cluster.preload and database == cluster.cron_database:
        cluster.psql_file(sql_file("cron.sql"), database=database)
    load_exporter_role(cluster, database, exporter_password)


def role_script(password: str) -> str:
    """exporter_role.sql preceded by the session setting it reads the password from."""
    literal = "'" + password.replace("'", "''") + "'"
    return (
        f"SET homepage_exporter.password = {literal};\n" + sql_file("exporter_role.sql").read_text()
    )


def load_exporter_role(
    cluster: Cluster, database: str, password: str, user: str | None = None
) -> None:
    """Create or repair the exporter's role and objects, as the README says to."""
    cluster.psql_file_text(role_script(password), database, user)
