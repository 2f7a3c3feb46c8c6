"""``flywheel serve`` (the kserve ModelServer) as a process on a free loopback port, as the tests start it;
and the records its prediction log keeps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from model.artifact.manifest import verify
from model.core.config import PROJECT_ROOT

NAME = "intent-test"  # the endpoint name every test server answers on


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], work: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    work.mkdir(parents=True, exist_ok=True)
    output = open(work / "server.log", "w")  # a file, not a pipe: a full pipe would block the server's logging
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scripts.cli",
            "serve",
            "--http_port",
            str(port),
            "--endpoint",
            NAME,
            "--work-dir",
            str(work),
            *args,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, as Kubernetes stops a pod: the server drains and writes its report; killed if it hangs."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def server_output(work: Path) -> str:
    return (work / "server.log").read_text()


def wait_ready(proc: subprocess.Popen, base: str, work: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server_output(work)}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"server not ready within {timeout}s:\n{server_output(work)}")


def version_of(artifact: str) -> str:
    """The version a model served from a folder reports: its artifact digest."""
    return f"sha-{verify(artifact)[:12]}"


def read_prediction_log(path: Path) -> list[dict]:
    """Every record the predictor's log still keeps, the rotated files included, oldest first."""
    from model.serve.prediction_log import prediction_log_files

    return [json.loads(line) for p in prediction_log_files(path) for line in p.read_text().splitlines() if line]
