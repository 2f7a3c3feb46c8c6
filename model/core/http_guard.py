"""An ASGI middleware that refuses over-size bodies before any handler reads them.

It reads the body once (up to the limit) and replays it to the application, so neither the
predictor nor the collector ever parses, logs or stores a body above the limit. An optional
``check(path, headers, body)`` returns a reason to answer 400 with before the application sees the
request (for decoding the framework would otherwise fail on with a 500). It also reports every
response status to a callback, which the servers use for their error counters.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable

from model.core.errors import FlywheelError

StatusCallback = Callable[[str, int], None]
BodyCheck = Callable[[str, dict[bytes, bytes], bytes], str | None]


class BodyLimit:
    def __init__(
        self, app, max_body_bytes: int, on_status: StatusCallback | None = None, check: BodyCheck | None = None
    ):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.on_status = on_status
        self.check = check

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._refuse(path, send, 413, f"request body too large: {declared.decode('latin-1')} bytes")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._refuse(path, send, 413, f"request body too large: more than {len(body)} bytes")
                return
            if not message.get("more_body", False):
                break
        problem = self.check(path, headers, bytes(body)) if self.check else None
        if problem:
            await self._refuse(path, send, 400, problem)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        async def observe(message):
            if message["type"] == "http.response.start" and self.on_status:
                self.on_status(path, int(message["status"]))
            await send(message)

        await self.app(scope, replay, observe)

    async def _refuse(self, path: str, send: Callable[[dict], Awaitable[None]], status: int, reason: str) -> None:
        if self.on_status:
            self.on_status(path, status)
        if status == 413:
            reason += f", the limit is {self.max_body_bytes}"
        payload = json.dumps({"error": reason}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def ensure_can_listen(host: str, port: int) -> None:
    """Fail with a clear message before loading anything when the address is taken or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise FlywheelError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
