"""MLflow for the tests: the local store's config the CLI would resolve, and a real ``mlflow server``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from model.core.config import RegistryConfig


def local_registry(work: Path, **fields) -> RegistryConfig:
    """The registry config the CLI would resolve for ``work``: a SQLite MLflow store inside it."""
    return RegistryConfig(tracking_uri=f"sqlite:///{Path(work) / 'mlflow.db'}", **fields)


@contextmanager
def mlflow_server(folder: Path, *server_args: str) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port (its store a SQLite file in ``folder``) for the block;
    yields its URL."""
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    store = f"sqlite:///{folder / 'server.db'}"
    proc = subprocess.Popen(
        [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--backend-store-uri", store]
        + list(server_args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow on a busy machine
                pass
            if proc.poll() is not None:
                pytest.fail("mlflow server exited during start-up")
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
