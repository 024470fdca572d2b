"""A local stand-in for the Cloudflare API, for real wrangler and keyrotate's d1:// store.

It is the one thing in the test suite that is not the real component (there is no
network here). What it follows, and from where:
- D1 query API (Cloudflare D1 REST docs; docs/cloudflare.md): POST .../d1/database/{id}/query with
  {"sql","params"} or {"batch": [...]}; a batch is one transaction; results carry
  meta.changes; at most 100 bound parameters and 100 KB per statement; BEGIN/COMMIT are
  refused; errors come back as {"success": false, "errors": [{"code": 7500, ...}]}.
- D1 Time Travel (Cloudflare API reference, "Get D1 database bookmark"): GET
  .../d1/database/{id}/time_travel/bookmark answers {"bookmark": "<4 hex groups>"}, the
  groups lexicographically sortable (oldest first); GET .../d1/database/{id} answers the
  database's {"uuid", "name", ...}.
- the API rate limit (1,200 requests / 5 minutes per user): a configurable window,
  answered with 429 and Retry-After.
- Workers scripts, versions and deployments: tests/support/cf_workers.py says which
  facts it follows.
Faults for the tests: 429, 500, slow answers and dropped connections, each for the next
N D1 requests; 500s and slow answers for Workers script requests.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from tests.support.cf_workers import Raw, Script, Workers, _err, _ok

MAX_PARAMS = 100
MAX_STATEMENT_BYTES = 100_000


class CloudflareStandIn:
    def __init__(self, rate_limit: int = 1200, rate_window: float = 300.0):
        self.d1: dict[str, str] = {}          # database id -> SQLite path
        self.d1_names: dict[str, str] = {}    # database id -> name (default: the id)
        self.workers = Workers()
        self.log: list[tuple[str, str, bytes]] = []   # method, path, body
        self.faults: deque[str] = deque()     # for D1 requests: "429" (or "429:<Retry-After>"),
                                              # "500", "slow", "drop"
        # (fault, needle) for the next D1 request whose body holds needle: "commit-drop"
        # commits it, then drops the connection unanswered (a lost answer, to the client)
        self.matching_faults: deque[tuple[str, bytes]] = deque()
        # run after a "commit-drop" committed, before its answer is dropped: what another
        # client does before this one sends the request again
        self.on_commit_drop: list[Callable[[], None]] = []
        self.worker_faults: deque[str] = deque()  # for Workers script requests: "500"
        # seconds to hold each Workers script change (PUT/PATCH/POST/DELETE) before it is
        # applied: Cloudflare being slow to answer; slow_requests counts the held ones
        self.worker_delay = 0.0
        self.slow_requests = 0
        self.rate_limit, self.rate_window = rate_limit, rate_window
        self.d1_times: deque[float] = deque()
        self.d1_requests = 0
        self.d1_bookmarks = 0
        self.lock = threading.RLock()   # reentrant: test hooks run inside a request and read state
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"
        # shutdown() waits for the next poll: 0.02 s, not 0.5 s, per stop
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, name: str) -> Script:
        with self.lock:
            return self.workers.script(name)

    def deployed(self, name: str) -> list[tuple[dict[str, str], float]]:
        """What serves a Worker: (secrets, percentage) per deployed version."""
        with self.lock:
            return [(dict(v.secrets), p) for v, p in self.workers.script(name).traffic]

    def health_url(self, worker: str) -> str:
        """A health endpoint answered by whichever version of `worker` serves the request."""
        return self.base_url.replace("/client/v4", f"/health/{worker}")

    def key_route_url(self, worker: str) -> str:
        """keyrotate's route (ping) on `worker`, answered by the version serving the request."""
        return self.base_url.replace("/client/v4", f"/keyrotate/{worker}")

    def inject(self, *faults: str) -> None:
        self.faults.extend(faults)

    # -- HTTP ------------------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("content-length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                raw = payload if isinstance(payload, Raw) else Raw(json.dumps(payload).encode(),
                                                                   "application/json")
                data = raw.body
                self.send_response(status)
                self.send_header("content-type", raw.content_type)
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> None:
                body = self._body()
                path, _, query = self.path.partition("?")
                standin.log.append((self.command, self.path, body))
                try:
                    status, payload, headers = standin.route(
                        self.command, path, query, body, self.headers.get("content-type", ""),
                        self.headers.get("Cloudflare-Workers-Version-Overrides"),
                        self.headers.get("Authorization"))
                except _Drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                try:
                    self._send(status, payload, headers)
                except (BrokenPipeError, ConnectionResetError):
                    # the client is gone (a push killed while its request was held): the
                    # change stands, nobody hears the answer. Left to socketserver, the
                    # traceback would go to whatever sys.stderr is then, a CliRunner's
                    # output mid-test when the hold outlasts a slow machine's next command.
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _route

        return Handler

    def route(self, method: str, path: str, query: str, body: bytes, ctype: str,
              override: str | None = None, authorization: str | None = None):
        health = re.match(r"^/health/([^/]+)$", path)
        if health:
            with self.lock:
                return self.workers.health(health.group(1), override)
        route = re.match(r"^/keyrotate/([^/]+)$", path)
        if route and method == "POST":
            with self.lock:
                return self.workers.key_route(route.group(1), override, body, authorization)
        m = re.match(r"^/client/v4/accounts/([^/]+)/(.*)$", path)
        if not m:
            return 404, _err(10000, "not found"), None
        rest = m.group(2)
        d1 = re.match(r"^d1/database/([^/]+)/query$", rest)
        if d1 and method == "POST":
            return self._d1(d1.group(1), body)
        tt = re.match(r"^d1/database/([^/]+)(/time_travel/bookmark)?$", rest)
        if tt and method == "GET":
            return self._d1_info(tt.group(1), bool(tt.group(2)))
        svc = re.match(r"^workers/services/([^/]+)$", rest)
        if svc:
            s = self.script(svc.group(1))
            return 200, _ok({"id": s.name, "default_environment": {"environment": "production",
                             "script": {"id": s.name, "last_deployed_from": "wrangler",
                                        "tag": "t", "etag": "e", "handlers": ["fetch"]}}}), None
        w = re.match(r"^workers/scripts/([^/]+)(?:/(.*))?$", rest)
        if w and self.worker_faults:
            self.worker_faults.popleft()
            return 500, _err(10013, "An unknown error has occurred"), None
        if w and method != "GET" and self.worker_delay:
            with self.lock:
                self.slow_requests += 1
            time.sleep(self.worker_delay)
        if w:
            return self._workers(method, self.script(w.group(1)), w.group(2) or "", query, body, ctype)
        return 200, _ok({}), None  # account-level lookups wrangler makes (subdomain, ...)

    # -- D1 ---------------------------------------------------------------------------------
    def _d1_info(self, db_id: str, bookmark: bool):
        if db_id not in self.d1:
            return 404, _err(7404, "database not found"), None
        if not bookmark:
            return 200, _ok({"uuid": db_id, "name": self.d1_names.get(db_id, db_id),
                             "version": "production", "num_tables": 0}), None
        with self.lock:
            self.d1_bookmarks += 1
            n = self.d1_requests   # a write counter: later bookmarks sort later
        mark = f"{int(time.time()):08x}-{n:08x}-{self.d1_bookmarks:08x}-{uuid.uuid4().hex}"
        return 200, _ok({"bookmark": mark}), None

    def _d1(self, db_id: str, body: bytes):
        with self.lock:
            self.d1_requests += 1
            now = time.monotonic()
            while self.d1_times and now - self.d1_times[0] >= self.rate_window:
                self.d1_times.popleft()
            if len(self.d1_times) >= self.rate_limit:
                retry = max(1, int(self.rate_window - (now - self.d1_times[0])) + 1)
                return 429, _err(971, "Please wait and consider throttling your request speed"), \
                    {"retry-after": str(retry)}
            self.d1_times.append(now)
            fault = self.faults.popleft() if self.faults else None
            if fault is None and self.matching_faults and self.matching_faults[0][1] in body:
                fault = self.matching_faults.popleft()[0]
        if fault is not None and fault.startswith("429"):   # "429", or "429:<Retry-After>"
            return 429, _err(971, "rate limited"), {"retry-after": fault.partition(":")[2] or "1"}
        if fault == "500":
            return 500, _err(7500, "internal error"), None
        if fault == "drop":
            raise _Drop
        if fault == "slow":
            time.sleep(2.5)
        if db_id not in self.d1:
            return 404, _err(7404, "database not found"), None
        req = json.loads(body)
        stmts = req["batch"] if "batch" in req else [req]
        for st in stmts:
            params = st.get("params") or []
            if len(params) > MAX_PARAMS:
                return 400, _err(7500, f"too many SQL variables (max {MAX_PARAMS})"), None
            if len(st["sql"].encode()) + sum(len(str(p).encode()) for p in params) > MAX_STATEMENT_BYTES:
                return 400, _err(7500, "statement too long"), None
            if re.match(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", st["sql"], re.I):
                return 400, _err(7500, "not authorized: use batch for transactions"), None
        conn = sqlite3.connect(self.d1[db_id], isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = []
            for st in stmts:
                cur = conn.execute(st["sql"], st.get("params") or [])
                cols = [d[0] for d in cur.description or ()]
                rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
                results.append({"results": rows, "success": True,
                                "meta": {"changes": max(cur.rowcount, 0),
                                         "rows_read": len(rows), "duration": 0.1}})
            conn.execute("COMMIT")
            if fault == "commit-drop":
                for meanwhile in self.on_commit_drop:
                    meanwhile()
                raise _Drop
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return 400, _err(7500, f"{e}: SQLITE_ERROR"), None
        finally:
            conn.close()
        return 200, _ok(results), None

    def _workers(self, method: str, s: Script, sub: str, query: str, body: bytes, ctype: str):
        with self.lock:
            return self.workers.route(method, s, sub, query, body, ctype)


class _Drop(Exception):
    pass


