"""A throwaway PostgreSQL cluster on a free loopback port, for tests and benchmarks: Debian's server
binaries (``initdb``, ``pg_ctl``), trust authentication, the cluster in a temporary folder.

``stop()`` and ``start()`` take the server down and up again on the same port and data, as an
operator's restart or a failover would (``pg_ctl stop -m fast`` ends every session, so clients see
their connections drop, then refused). PostgreSQL refuses to run as root, so as root the cluster
belongs to the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (newest version), else whatever initdb is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class ThrowawayPostgres:
    """``initdb`` on construction; ``start``/``stop`` the server; ``remove`` deletes everything."""

    def __init__(self, user: str = "flywheel"):
        self.bindir = postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
        self.root = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = self.root / "data"
        self.url = f"postgresql+psycopg://{user}@127.0.0.1:{self.port}"  # append /<database>
        self._run("initdb", "-D", str(self.data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> ThrowawayPostgres:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o", options, "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are ended and the server shuts down cleanly; ``immediate``: as after a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(self.root, ignore_errors=True)
