"""Health endpoints for the control-plane tests: each Worker's answer is set by the test."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HealthServer:
    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, Any]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                worker = self.path.strip("/").split("/")[0]
                status, body = server.answers.get(worker, (200, {"ok": True, "data": {"status": "healthy"}}))
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # shutdown() waits for the next poll: 0.02 s, not 0.5 s, per stop
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    def url(self, worker: str) -> str:
        return f"{self.base}/{worker}/health"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
