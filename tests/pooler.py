"""PgBouncer in transaction mode on loopback, as Supabase's Supavisor (port 6543) or any pooler."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from exporter.demo.cluster import Cluster, as_user, free_port, unprivileged_user
from tests.harness import self_signed_cert, wait_for

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)


@contextlib.contextmanager
def pgbouncer(
    cluster: Cluster,
    database: str,
    users: dict[str, str],
    *,
    tls: bool = False,
    max_client_conn: int = 50,
    pool_size: int = 4,
) -> Iterator[int]:
    """PgBouncer in transaction mode in front of `database`; yields its port. With `tls`,
    TLS to clients (required) and to the server, as Supavisor does. `max_client_conn`,
    `pool_size`: the clients it accepts and the server connections it opens (bench/fleet.py
    connects hundreds of clients)."""
    assert PGBOUNCER is not None
    user = unprivileged_user()
    folder = Path(tempfile.mkdtemp(prefix="homepage-pgbouncer-"))
    port = free_port()
    tls_lines = ""
    if tls:
        cert, key = self_signed_cert(folder)
        tls_lines = (
            f"client_tls_sslmode = require\nclient_tls_cert_file = {cert}\n"
            f"client_tls_key_file = {key}\nserver_tls_sslmode = require\n"
        )
    (folder / "userlist.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in users.items()))
    (folder / "pgbouncer.ini").write_text(f"""
[databases]
{database} = host=127.0.0.1 port={cluster.port} dbname={database}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {folder}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_client_conn}
{tls_lines}logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
""")
    if user is not None:
        for path in [folder, *folder.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    proc = subprocess.Popen(
        [PGBOUNCER, str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        **as_user(user),
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, (folder / "pgbouncer.log").read_text()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 10, "pgbouncer to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
