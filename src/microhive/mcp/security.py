"""Who may talk to an MCP endpoint: the Origin check and the bearer token.

An MCP server on ``127.0.0.1`` is reachable from every web page the user opens:
a page on ``evil.example`` can POST to ``http://127.0.0.1:8100/mcp``, or rebind
its own name to ``127.0.0.1`` (DNS rebinding) and call it "same-origin". Browsers
always send an ``Origin`` header on such requests; non-browser clients (agents,
the gateway, the SDK's client) send none. So:

* no ``Origin`` -- allowed (a program, not a page);
* ``Origin`` whose host is a loopback name *and* equals the request's ``Host``
  (a page served by this very service on loopback) -- allowed; a rebound name is
  not a loopback name, so a rebinding page is refused;
* ``Origin`` listed in ``security.allowed_origins`` (``scheme://host[:port]``;
  ``:*`` matches any port) -- allowed;
* anything else -- **403**.

When a token is configured, requests must also carry ``Authorization: Bearer
<token>`` (compared in constant time), else **401**.

:class:`McpGuard` is plain ASGI middleware, so the tool services and the gateway
wrap their MCP routes with the same code.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LOOPBACK_HOSTS", "McpGuard", "bearer_ok", "origin_allowed"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _normalise(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _host_of(netloc: str) -> str:
    """The host part of ``host[:port]`` (IPv6 brackets kept off)."""
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str] = ()) -> bool:
    """Whether a request with this ``Origin`` (and ``Host``) header may proceed."""
    if origin is None:
        return True
    wanted = _normalise(origin)
    if wanted == "null":
        return False
    for entry in allowed:
        entry = _normalise(entry)
        if entry == wanted:
            return True
        if entry.endswith(":*"):
            base = entry[:-2]
            prefix = base + ":"
            if wanted.startswith(prefix) and wanted[len(prefix) :].isdigit():
                return True
    parts = urlsplit(wanted)
    if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
        return False
    if _host_of(parts.netloc) not in LOOPBACK_HOSTS:
        return False
    return parts.netloc == host.strip().lower()


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time compare)."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class McpGuard:
    """ASGI middleware: refuse foreign browser origins (403) and missing tokens (401).

    ``paths`` limits the checks to those path prefixes (default: everything), so a
    service can keep ``/healthz`` open while guarding ``/mcp``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_origins: Iterable[str] = (),
        token: str | None = None,
        paths: Iterable[str] | None = None,
    ) -> None:
        self.app = app
        self.allowed_origins = tuple(allowed_origins)
        self.token = token or None
        self.paths = tuple(paths) if paths is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if not origin_allowed(origin, headers.get("host"), self.allowed_origins):
            await _deny(send, 403, "forbidden_origin", f"Origin {origin!r} is not allowed")
            return
        if self.token is not None and not bearer_ok(headers.get("authorization"), self.token):
            await _deny(
                send,
                401,
                "unauthorized",
                "a valid 'Authorization: Bearer <token>' header is required",
                extra=[(b"www-authenticate", b'Bearer realm="microhive"')],
            )
            return
        await self.app(scope, receive, send)

    def _guarded(self, scope: Scope) -> bool:
        if self.paths is None:
            return True
        path: str = scope.get("path", "")
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths)


async def _deny(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
