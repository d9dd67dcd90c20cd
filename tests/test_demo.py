"""The README's first command: a living demo homepage, served, and nothing left after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from exporter.demo.cluster import free_port, pgserver_bindir
from tests.harness import Scrape, http_get, wait_for

pytestmark = pytest.mark.slow

FLAVOURS = ["system"] + (["pgserver"] if pgserver_bindir() else [])


def postgres_processes(datadir: str) -> int:
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True)
    return sum(1 for line in out.stdout.splitlines() if datadir in line)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_demo_serves_a_living_homepage_and_cleans_up(flavour: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPAGE_EXPORTER_")}
    if flavour == "pgserver":
        env["HOMEPAGE_EXPORTER_PG_BINDIR"] = str(pgserver_bindir())
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "demo", "--listen-address", f"127.0.0.1:{port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"

            def ready() -> Scrape | None:
                assert proc.poll() is None, Path(log.name).read_text()
                status, _, body = http_get(url, timeout=1)
                scrape = Scrape(body.decode()) if status == 200 else None
                wanted = ("homepage_sections_live", "homepage_sections_visible_to_anon")
                if scrape and all(scrape.get(m, locale="fr") is not None for m in wanted):
                    return scrape
                return None

            scrape = wait_for(ready, 60, "the demo's metrics")
            assert isinstance(scrape, Scrape)
            output = Path(log.name).read_text()
            assert f"Homepage CMS exporter demo: {url}" in output
            # The database is printed, so that README step 1's psql can reach it.
            db_url = re.search(r"Database: (postgresql://\S+)", output)
            assert db_url is not None
            assert "/homepage" in db_url.group(1)
            if flavour == "pgserver":  # says plainly what stays empty without the extensions
                assert "demo_without_extensions" in output
                assert "missing=pg_cron,pg_stat_statements" in output
            assert scrape.get("homepage_sections_live", locale="en") == 12
            assert scrape.get("homepage_sections_visible_to_anon", locale="fr") == 12
            assert scrape.get("homepage_exporter_database_up") == 1
            datadir = re.search(r"datadir=(\S+)", output)
            assert datadir is not None
            assert postgres_processes(datadir.group(1)) > 0
            time.sleep(1)
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(20)
        output = Path(log.name).read_text()
    assert code == 0, output
    assert "Traceback" not in output
    assert postgres_processes(datadir.group(1)) == 0
    assert not Path(datadir.group(1)).exists()
    with socket.socket() as sock:
        # SO_REUSEADDR tolerates closed connections in TIME_WAIT, not a live listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


# Ctrl-C as a terminal delivers it to a foreground job: whatever the suite inherited (a job
# started in the background by a script has SIGINT ignored, and so would every process it
# starts, the demo included), the demo starts with SIGINT's default disposition; exec keeps
# the pid, so the demo's children are still this process's.
_FOREGROUND = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
    " os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def _demo(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _FOREGROUND, "-m", "exporter", "demo", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )


def _child(parent: int, program: str) -> str | None:
    """The command line of `parent`'s child running `program`, if there is one now."""
    out = subprocess.run(
        ["ps", "-ww", "-eo", "ppid=,args="], capture_output=True, text=True, check=True
    )
    for line in out.stdout.splitlines():
        ppid, _, args = line.strip().partition(" ")
        if ppid == str(parent) and program in args:
            return args
    return None


@pytest.mark.parametrize("moment", ["bin/initdb", "bin/pg_ctl", "bin/psql"])
def test_ctrl_c_while_the_demo_database_is_being_made_is_a_clean_stop(moment: str) -> None:
    """Once: Ctrl-C in the first second and a half printed an initdb error and exited 1.
    Ctrl-C lands while the demo runs initdb, starts the server, or loads the schema."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMEPAGE_EXPORTER_")}
    proc = _demo(env, "--listen-address", f"127.0.0.1:{free_port()}")
    seen: list[str] = []

    def at_the_moment() -> bool:
        args = _child(proc.pid, moment)
        if args is not None:
            seen.append(args)
        return args is not None

    try:
        wait_for(at_the_moment, 30, f"the demo running {moment}", step=0.005)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "initdb" not in output
    assert "Traceback" not in output
    base = re.search(r"\S*/homepage-pg-[A-Za-z0-9_]+", seen[0])  # the demo's folder
    assert base is not None, seen[0]
    assert postgres_processes(base.group(0)) == 0
    assert not Path(base.group(0)).exists()


def test_a_quick_restart_gets_the_default_port_again() -> None:
    """Once: the port check bound without SO_REUSEADDR, so a restart within a minute (the
    previous scrapes' connections in TIME_WAIT) landed on a random port."""
    from exporter.demo.run import _port_free

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    assert _port_free(port)


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [
        ("--listen-address", "nowhere", 'expected "host:port"'),
        ("--queries-file", "/nonexistent/queries.yaml", "/nonexistent/queries.yaml: no such file"),
    ],
    ids=["listen", "queries"],
)
def test_a_bad_flag_is_said_before_any_database_is_made(flag: str, value: str, said: str) -> None:
    """It started PostgreSQL, built the CMS, then refused the flag and removed it all again."""
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "demo", flag, value],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert said in result.stderr
    assert "demo_database_started" not in result.stderr
    assert "Traceback" not in result.stderr
