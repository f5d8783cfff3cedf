"""What guards the service: loopback by default, a bearer token otherwise, a body size limit.

Both checks are plain ASGI middleware, so they run before any route reads the body.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any

OPEN_PATHS = ("/healthz",)
PAGE_PATHS = ("/", "/static/")
"""The page's HTML, script and style hold no data; the script sends the token with every API call."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str | None:
    """Why binding ``host`` is refused (None when it is allowed)."""
    if is_loopback(host) or token:
        return None
    return (
        f"refusing to listen on {host} without a token: anyone who can reach it could read and change the store; "
        "set --token or CLUSTERER_TOKEN (clients then send 'Authorization: Bearer <token>'), "
        "or bind 127.0.0.1"
    )


async def send_json(send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class TokenAuth:
    """Every request except /healthz (and the page's static files) needs ``Authorization: Bearer <token>``."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in OPEN_PATHS or path == PAGE_PATHS[0] or path.startswith(PAGE_PATHS[1]):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                given = value
                break
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
            return await send_json(
                send,
                401,
                {"error": "missing or wrong bearer token"},
                [(b"www-authenticate", b'Bearer realm="clusterer"')],
            )
        return await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 when a request body is larger than ``limit`` bytes, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = {"error": f"request body larger than {self.limit} bytes", "field": "body"}
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await send_json(send, 400, {"error": "invalid Content-Length header", "field": "body"})
                if declared > self.limit:
                    return await send_json(send, 413, message)
        seen = 0
        exceeded = answered = False

        async def limited_receive():
            nonlocal seen, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise BodyTooLarge()
            return msg

        async def guarded_send(msg):
            nonlocal answered
            if not exceeded:
                await send(msg)
            elif not answered:
                answered = True
                await send_json(send, 413, message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not answered:
                await send_json(send, 413, message)
