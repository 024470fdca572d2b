"""A real local HTTP receiver for keyrotate's notifications, written the way a security
team would write theirs against the README, and independent of keyrotate's code: the
HMAC is `cryptography`'s (OpenSSL), not Python's `hmac` that keyrotate signs with.

It accepts a `json` body only with a valid `X-Keyrotate-Signature` over "<t>.<raw body>",
a `t` within five minutes, and a (t, signature) pair it has not seen: a replay is
refused (409). Modes for the failure tests: "ok", "500" (answers 500), "hang" (accepts
the connection and never answers until stopped), "trickle" (a whole 200 answer, sent one
byte every `gap` seconds: every read gets something, so no per-read timeout ever fires)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

TOLERANCE = 300


def independent_signature(secret: str, t: str, body: bytes) -> str:
    mac = HMAC(secret.encode(), hashes.SHA256())
    mac.update(t.encode() + b"." + body)
    return mac.finalize().hex()


class Receiver:
    def __init__(self, secret: str | None = None, mode: str = "ok", gap: float = 0.25):
        self.secret = secret
        self.mode = mode
        self.gap = gap
        self.trickles_cut = 0        # trickled answers the client hung up on before the end
        self.trickles_done = 0       # trickled answers sent to their last byte
        self.accepted: list[dict[str, Any]] = []     # parsed bodies, in order
        self.raw: list[tuple[dict[str, str], bytes]] = []   # (headers, body) accepted
        self.refused: list[str] = []
        self.requests = 0
        self._seen: set[tuple[str, str]] = set()
        self._release = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        # shutdown() waits for the next poll: 0.02 s, not 0.5 s, per stop
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def check(self, headers: dict[str, str], body: bytes) -> str | None:
        """Why this request is refused, or None: the receiver's whole security check."""
        if self.secret is None:
            return None
        header = headers.get("x-keyrotate-signature", "")
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        t, v1 = parts.get("t", ""), parts.get("v1", "")
        if not t.isdigit() or abs(time.time() - int(t)) > TOLERANCE:
            return "stale or missing timestamp"
        if independent_signature(self.secret, t, body) != v1:
            return "bad signature"
        if (t, v1) in self._seen:
            return "replay"
        self._seen.add((t, v1))
        return None

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.requests += 1
                if receiver.mode == "hang":
                    receiver._release.wait()
                    return
                if receiver.mode == "500":
                    return self._answer(500, b"oops")
                if receiver.mode == "trickle":
                    return self._trickle(b"HTTP/1.1 200 OK\r\ncontent-length: 32\r\n\r\n" + b"k" * 32)
                with receiver.lock:
                    why = receiver.check(headers, body)
                    if why:
                        receiver.refused.append(why)
                    else:
                        receiver.accepted.append(json.loads(body))
                        receiver.raw.append((headers, body))
                self._answer(409 if why == "replay" else 401 if why else 200,
                             (why or "ok").encode())

            def _trickle(self, answer: bytes) -> None:
                try:
                    for i in range(len(answer)):
                        self.wfile.write(answer[i:i + 1])
                        self.wfile.flush()
                        time.sleep(receiver.gap)
                except OSError:
                    with receiver.lock:
                        receiver.trickles_cut += 1
                    return
                with receiver.lock:
                    receiver.trickles_done += 1

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
