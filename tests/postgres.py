"""A throw-away PostgreSQL server for the tests: Debian's server binaries, a data folder in a temporary
folder, listening on 127.0.0.1 and a free port, with a password; stopped and deleted after.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (runuser).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "spiral"


def server_bin() -> Path | None:
    """The newest installed server's bin folder (with initdb and pg_ctl), or None."""
    folders = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name.split(".")[0])
    )
    for folder in reversed(folders):
        if all(os.access(Path(folder) / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def why_not() -> str | None:
    """Why no server can be started here, or None when one can."""
    if server_bin() is None:
        return "PostgreSQL server binaries not found (Debian: apt-get install -y postgresql; .ci/run does)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as the postgres user"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_server(password: str) -> Iterator[str]:
    """Start a server; yield its URL (postgresql://spiral:PASSWORD@127.0.0.1:PORT/postgres)."""
    bin_dir = server_bin()
    folder = Path(tempfile.mkdtemp(prefix="spiralctl-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, pwfile = folder / "data", folder / "server.log", folder / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, cwd=folder, timeout=120)

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--no-sync",
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
        try:
            yield f"postgresql://{USER}:{password}@127.0.0.1:{port}/postgres"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
