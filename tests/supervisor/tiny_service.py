"""A tiny HTTP service for supervisor tests: answers /readyz and /healthz with 200.

Usage: python tiny_service.py PORT [--fail] [--ignore-term]
  --fail          print a few lines and exit 1 before listening (a start-up failure)
  --ignore-term   ignore SIGTERM (so the supervisor has to SIGKILL it)
  --never-ready   answer /readyz with 503 forever
  --exit-after S  serve for S seconds, then exit with code 4 (a process that keeps dying)
  --config-error-after S  serve for S seconds, then log a JSON error record and exit
                  with 78, as ``microhive serve`` does on a configuration error
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/readyz" and "--never-ready" in sys.argv:
            body = b"not ready\n"
            self.send_response(503)
        elif self.path in ("/readyz", "/healthz"):
            body = f"ok {os.getpid()}\n".encode()
            self.send_response(200)
        else:
            body = b"not found\n"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"request {format % args}", flush=True)


def _config_error() -> None:
    record = {"level": "error", "logger": "tiny", "msg": "the variable FROB_KEY is not set"}
    print(json.dumps(record), flush=True)
    os._exit(78)


def main() -> int:
    port = int(sys.argv[1])
    if "--fail" in sys.argv:
        for i in range(30):
            print(f"boot step {i}", flush=True)
        print("fatal: cannot open the frobnicator", flush=True)
        return 1
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if "--exit-after" in sys.argv:
        seconds = float(sys.argv[sys.argv.index("--exit-after") + 1])
        signal.signal(signal.SIGALRM, lambda *_: os._exit(4))
        signal.setitimer(signal.ITIMER_REAL, seconds)
    if "--config-error-after" in sys.argv:
        seconds = float(sys.argv[sys.argv.index("--config-error-after") + 1])
        signal.signal(signal.SIGALRM, lambda *_: _config_error())
        signal.setitimer(signal.ITIMER_REAL, seconds)
    service = os.environ.get("MICROHIVE_SERVICE")
    print(f"listening on {port} as {service} pid {os.getpid()}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
