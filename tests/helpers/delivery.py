"""The delivery tests' configs (one registry config every delivery test shares, its tracking URI set by
the ``registry_dir`` fixture in tests/servers/conftest.py), a drift report as `flywheel drift` writes
it, a local HTTP server for the stand-ins of GitHub and Prometheus, and the images a manifest names."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from model.core.config import DeliveryConfig, RegistryConfig

REG = RegistryConfig()  # its tracking URI is set by `registry_dir`, the store every test here shares
DCFG = DeliveryConfig()
ISVC = "manifests/{env}/inferenceservice.yaml"


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server answering with ``handler`` for the block; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def drift_report(tmp_path: Path, drift: bool) -> Path:
    report = tmp_path / "drift.json"
    report.write_text(
        json.dumps(
            {
                "drift": drift,
                "reasons": ["fallback rate 9% -> 21%"],
                "window": {"start": "2026-11-20T00:00:00Z", "end": "2026-11-27T00:00:00Z"},
            }
        )
    )
    report.with_suffix(".md").write_text("## Drift report\n\nfallback rate 9% -> 21%\n")
    return report


def images_in(text: str) -> list[str]:
    """Every container image named in a manifest file, in order."""
    from model.deploy.images import containers, round_trip

    return [str(c.get("image", "")) for doc in round_trip().load_all(text) for c in containers(doc)]
