"""A throwaway PostgreSQL cluster on loopback: initdb, start, stop, as an unprivileged user.

Used by the demo and by the test suite. It prefers the system's PostgreSQL (Debian's
/usr/lib/postgresql/N/bin, with pg_cron when installed) and falls back to the `pgserver`
wheel's binaries. PostgreSQL refuses to run as root, so as root it runs as `postgres`
(or `nobody`) through `setpriv`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60


class ClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message carries the server log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on loopback that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_bindir() -> Path:
    """The newest PostgreSQL server binaries on this machine."""
    env = os.environ.get("HOMEPAGE_EXPORTER_PG_BINDIR")
    candidates = [Path(env)] if env else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted(
            (p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True
        )
        candidates += [v / "bin" for v in versions]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    wheel = pgserver_bindir()
    if wheel is not None:
        candidates.append(wheel)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "postgres").is_file():
            return candidate
    raise ClusterError(
        "no PostgreSQL server binaries found: install postgresql (apt-get install postgresql-15)"
        " or the pgserver wheel (pip install pgserver)"
    )


def pgserver_bindir() -> Path | None:
    """PostgreSQL binaries of the `pgserver` wheel, if installed (no root or apt needed)."""
    # find_spec, not import: importing pgserver has side effects (it warns about XDG dirs).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").is_file() else None


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ClusterError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class Cluster:
    """One initdb'd data directory and its server process."""

    port: int = field(default_factory=free_port)
    password: str = "postgres-test-password"  # noqa: S105 - a loopback throwaway cluster
    preload: tuple[str, ...] = ("pg_cron", "pg_stat_statements")
    cron_database: str = "cms"
    settings: dict[str, str] = field(default_factory=dict)
    hba: tuple[str, ...] = ()
    base: Path | None = None
    bindir: Path = field(default_factory=find_bindir)
    # The bootstrap superuser initdb creates (Supabase's is `supabase_admin`).
    superuser: str = SUPERUSER

    def __post_init__(self) -> None:
        self._owned_base = self.base is None
        self.base = Path(self.base or tempfile.mkdtemp(prefix="homepage-pg-"))
        self.datadir = self.base / "data"
        self.logfile = self.base / "server.log"
        self._user = _unprivileged_user()
        if self._user is not None:
            self.bindir = _reachable_copy(self.bindir)
        libdir = self.bindir.parent / "lib"
        self.preload = tuple(p for p in self.preload if self._has_library(libdir, p))

    @staticmethod
    def _has_library(libdir: Path, name: str) -> bool:
        candidates = [libdir / f"{name}.so", libdir / "postgresql" / f"{name}.so"]
        return any(c.exists() for c in candidates)

    @property
    def major_version(self) -> int:
        out = self._run([str(self.bindir / "postgres"), "--version"], capture=True)
        return int(out.split()[-1].split(".")[0])

    def url(
        self,
        user: str | None = None,
        password: str | None = None,
        database: str = "postgres",
        host: str = "127.0.0.1",
    ) -> str:
        user = user or self.superuser
        secret = self.password if password is None and user == self.superuser else password
        auth = f"{user}:{secret}" if secret else user
        shown_host = f"[{host}]" if ":" in host else host
        return f"postgresql://{auth}@{shown_host}:{self.port}/{database}"

    def _run(
        self,
        argv: list[str],
        *,
        capture: bool = False,
        stdin: str | None = None,
        stderr: bool = False,
    ) -> str:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **as_user(self._user),
            env=env,
            cwd="/",
            # Not in the terminal's process group: Ctrl-C reaches only us, and we stop the
            # server and clean up, rather than initdb dying half-way with an error of its own.
            start_new_session=True,
        )
        try:
            out, err = process.communicate(stdin)
        except BaseException:
            # Interrupted (Ctrl-C): the whole group goes, initdb's bootstrap backend too, or it
            # would go on writing into the folder that destroy() is removing.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        stdout, errors = str(out), str(err)
        if process.returncode != 0:
            tail = ""
            if self.logfile.exists():
                tail = "\n".join(self.logfile.read_text(errors="replace").splitlines()[-20:])
            raise ClusterError(f"{' '.join(argv[:2])} failed: {errors.strip()}\n{tail}")
        return stdout + (errors if stderr else "")

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _folder(self) -> Path:
        if self.base is None:  # set by __post_init__; None only if someone reset it
            raise ClusterError("the cluster has no folder")
        return self.base

    def write_private(self, name: str, content: str | bytes) -> Path:
        """A file in the cluster's folder that only the server's user can read (keys, certs)."""
        path = self._folder() / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(0o600)
        self._chown(path)
        return path

    def init(self) -> Cluster:
        base = self._folder()
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        self._chown(base)
        pwfile = base / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1,::1'" if _has_ipv6() else "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
            "track_functions": "'all'",
            "track_io_timing": "on",
        }
        if self.preload:
            conf["shared_preload_libraries"] = "'" + ",".join(self.preload) + "'"
        if "pg_cron" in self.preload:
            conf["cron.database_name"] = f"'{self.cron_database}'"
            conf["cron.use_background_workers"] = "on"
            conf["max_worker_processes"] = "16"
        conf.update(self.settings)
        if self.hba:
            hba_file = self.datadir / "pg_hba.conf"
            rules = "\n".join(self.hba) + "\n"
            hba_file.write_text(rules + hba_file.read_text())
        with (self.datadir / "postgresql.conf").open("a") as handle:
            handle.write("\n# homepage-cms-exporter test cluster\n")
            handle.writelines(f"{k} = {v}\n" for k, v in conf.items())
        return self

    def start(self) -> Cluster:
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "start",
            ]
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"]
            )

    @property
    def psql_binary(self) -> Path:
        """This server's psql, or the system's (some server-only builds ship none; a newer
        server talks to an older psql just as well)."""
        own = self.bindir / "psql"
        if own.exists():
            return own
        system = shutil.which("psql")
        if system is None:
            raise ClusterError(f"no psql in {self.bindir} or on PATH")
        return Path(system)

    def _psql(self, database: str, user: str | None = None) -> list[str]:
        """psql over the cluster's socket, stopping at the first error."""
        return [
            str(self.psql_binary), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.base), "-p", str(self.port), "-U", user or self.superuser,
            "-d", database,
        ]  # fmt: skip

    def psql_session(self, sql: str, database: str = "postgres") -> subprocess.Popen[bytes]:
        """A psql session running `sql` in the background (a lock holder, a slow client)."""
        return subprocess.Popen(
            [*self._psql(database), "-c", sql],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            **as_user(self._user),
        )

    def psql(self, sql: str, database: str = "postgres", user: str | None = None) -> str:
        """Run SQL and return its rows, unaligned (-At)."""
        return self._run([*self._psql(database, user), "-At", "-c", sql], capture=True)

    def psql_log(self, sql: str, database: str = "postgres") -> str:
        """Run SQL and return what the server said besides results (NOTICE, LOG: stderr)."""
        return self._run([*self._psql(database), "-At", "-c", sql], capture=True, stderr=True)

    def psql_file(
        self, path: Path, database: str = "postgres", user: str | None = None, **variables: str
    ) -> None:
        """Run a SQL file through psql (so \\gexec and \\if work), with psql variables."""
        self.psql_file_text(path.read_text(), database, user, **variables)

    def psql_file_text(
        self, sql: str, database: str = "postgres", user: str | None = None, **variables: str
    ) -> None:
        """Run a script (several statements, transactions, VACUUM) as psql runs a file."""
        argv = self._psql(database, user)
        for key, value in variables.items():
            argv += ["-v", f"{key}={value}"]
        # Through stdin: the unprivileged server user may not be able to read the file.
        self._run([*argv, "-f", "-"], stdin=sql)

    def destroy(self) -> None:
        with contextlib.suppress(ClusterError):
            self.stop("immediate")
        if self._owned_base and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.init().start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a child as `user` (servers that refuse root); unlike a
    preexec_fn, these are safe while other threads run."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def unprivileged_user() -> pwd.struct_passwd | None:
    """Who to run servers as: None when we are not root."""
    return _unprivileged_user()


def _reachable_copy(bindir: Path) -> Path:
    """Binaries the unprivileged server user can run: system paths as they are, anything else
    (a wheel inside a venv under /root, say) copied once to a world-readable temp folder, with
    the sibling folders its RPATH ($ORIGIN/../../../pgserver.libs) points at."""
    if str(bindir).startswith(("/usr/", "/opt/")):
        return bindir
    install = bindir.parent  # .../site-packages/pgserver/pginstall
    root = install.parent.parent  # .../site-packages
    relative = install.relative_to(root)
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"homepage-pg-bin-{digest}"
    if not (target / relative / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="homepage-pg-stage-"))
        shutil.copytree(install, staging / relative, symlinks=True)
        for libs in root.glob("*.libs"):
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        staging.chmod(0o755)
        for path in staging.rglob("*"):
            mode = path.lstat().st_mode
            if not path.is_symlink():
                path.chmod(mode | (0o755 if path.is_dir() else 0o444))
        with contextlib.suppress(OSError):
            staging.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target / relative / "bin"


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True
