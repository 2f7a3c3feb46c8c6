"""Child processes this project starts and waits for (servers on loopback): one way to start one with
its output in a log file, wait until it answers, and stop it (SIGTERM, then SIGKILL if it hangs)."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from model.core.config import PROJECT_ROOT
from model.core.errors import FlywheelError


class Supervised:
    """One child process: started with ``start``, ready once ``wait_ready`` saw its URL answer 200."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, env: dict | None = None, cwd: Path = PROJECT_ROOT):
        self.name, self.cmd, self.log, self.env, self.cwd = name, list(cmd), Path(log), env, cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Supervised:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, url: str, timeout_s: float = 180) -> Supervised:
        """Poll ``url`` until it answers 200; FlywheelError with the log's tail if the process exits or
        the deadline passes (a deadline only for a process that is broken, not slow)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FlywheelError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise FlywheelError(f"{self.name} not ready at {url} within {timeout_s:.0f} s (log: {self.log})")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        """Send ``sig`` and wait; kill it if it has not exited within ``timeout_s``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
