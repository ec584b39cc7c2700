"""A webhook receiver for the demo: verifies Standard Webhooks signatures as a user's would."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["WebhookReceiver"]


class WebhookReceiver:
    """An HTTP server on a free loopback port recording verified deliveries.

    ``secret`` is set once the subscription is made (the workspace shows it once);
    a delivery whose signature does not verify is answered 401 and recorded as such.
    """

    def __init__(self) -> None:
        self.secret: str | None = None
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                ok, payload = receiver._verify(body, dict(self.headers.items()))
                self.send_response(204 if ok else 401)
                self.end_headers()
                with receiver._lock:
                    if ok:
                        receiver.received.append(payload)
                    else:
                        receiver.rejected += 1

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/workspace"

    def _verify(self, body: bytes, headers: dict[str, str]) -> tuple[bool, dict[str, Any]]:
        from standardwebhooks.webhooks import Webhook

        if self.secret is None:
            return False, {}
        try:
            Webhook(self.secret).verify(body, {k.lower(): v for k, v in headers.items()})
        except Exception:  # the library raises its own verification error
            return False, {}
        return True, json.loads(body)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
