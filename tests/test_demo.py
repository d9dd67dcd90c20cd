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
