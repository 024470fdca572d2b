"""A local stand-in for the Cloudflare API, for real wrangler and keyrotate's d1:// store.

It is the one thing in the test suite that is not the real component (there is no
network here). What it follows, and from where:
- D1 query API (Cloudflare D1 REST docs; docs/cloudflare.md): POST .../d1/database/{id}/query with
  {"sql","params"} or {"batch": [...]}; a batch is one transaction; results carry
  meta.changes; at most 100 bound parameters and 100 KB per statement; BEGIN/COMMIT are
  refused; errors come back as {"success": false, "errors": [{"code": 7500, ...}]}.
- the API rate limit (1,200 requests / 5 minutes per user): a configurable window,
  answered with 429 and Retry-After.
- Workers endpoints as wrangler 4.86 calls them (recorded from the real CLI here):
  secret put = PUT .../scripts/{name}/secrets; secret bulk = GET then PATCH
  .../scripts/{name}/settings (multipart "settings" with bindings); secret list = GET
  .../secrets; deploy = GET .../services/{name}, POST .../versions (multipart), POST
  .../deployments; rollback = GET .../deployments, GET .../versions/{id}, POST
  .../deployments. Every secret change deploys a new version at once (docs/cloudflare.md); a
  version keeps the secret values it was made with, so deploying an old version
  restores old values, and that is refused with code 10220 unless ?force=true.
Faults for the tests: 429, 500, slow answers and dropped connections, each for the next
N D1 requests.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_PARAMS = 100
MAX_STATEMENT_BYTES = 100_000


@dataclass
class Version:
    id: str
    number: int
    secrets: dict[str, str]
    created_on: str
    message: str = ""


@dataclass
class Script:
    name: str
    versions: list[Version] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def active(self) -> Version:
        vid = self.deployments[0]["versions"][0]["version_id"]
        return next(v for v in self.versions if v.id == vid)

    def new_version(self, secrets: dict[str, str], message: str = "") -> Version:
        v = Version(uuid.uuid4().hex, len(self.versions) + 1, dict(secrets), _now(), message)
        self.versions.append(v)
        self.deploy(v, message)
        return v

    def deploy(self, v: Version, message: str = "") -> dict[str, Any]:
        """A deployment is stamped when it happens (a rollback's is new, its version old)."""
        d = {"id": uuid.uuid4().hex, "source": "api", "strategy": "percentage",
             "created_on": _now(), "versions": [{"version_id": v.id, "percentage": 100}],
             "annotations": {"workers/message": message} if message else {}}
        self.deployments.insert(0, d)
        return d


class CloudflareStandIn:
    def __init__(self, rate_limit: int = 1200, rate_window: float = 300.0):
        self.d1: dict[str, str] = {}          # database id -> SQLite path
        self.scripts: dict[str, Script] = {}
        self.log: list[tuple[str, str, bytes]] = []   # method, path, body
        self.faults: deque[str] = deque()     # for D1 requests: "429", "500", "slow", "drop"
        # (fault, needle) for the next D1 request whose body holds needle: "commit-drop"
        # commits it, then drops the connection unanswered (a lost answer, to the client)
        self.matching_faults: deque[tuple[str, bytes]] = deque()
        self.worker_faults: deque[str] = deque()  # for Workers script requests: "500"
        self.rate_limit, self.rate_window = rate_limit, rate_window
        self.d1_times: deque[float] = deque()
        self.d1_requests = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, name: str) -> Script:
        with self.lock:
            if name not in self.scripts:
                s = Script(name)
                s.new_version({}, "created")
                self.scripts[name] = s
            return self.scripts[name]

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
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
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
                    status, payload, headers = standin.route(self.command, path, query, body,
                                                              self.headers.get("content-type", ""))
                except _Drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(status, payload, headers)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _route

        return Handler

    def route(self, method: str, path: str, query: str, body: bytes, ctype: str):
        m = re.match(r"^/client/v4/accounts/([^/]+)/(.*)$", path)
        if not m:
            return 404, _err(10000, "not found"), None
        rest = m.group(2)
        d1 = re.match(r"^d1/database/([^/]+)/query$", rest)
        if d1 and method == "POST":
            return self._d1(d1.group(1), body)
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
        if w:
            return self._workers(method, self.script(w.group(1)), w.group(2) or "", query, body, ctype)
        return 200, _ok({}), None  # account-level lookups wrangler makes (subdomain, ...)

    # -- D1 ---------------------------------------------------------------------------------
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
        if fault == "429":
            return 429, _err(971, "rate limited"), {"retry-after": "1"}
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
                raise _Drop
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return 400, _err(7500, f"{e}: SQLITE_ERROR"), None
        finally:
            conn.close()
        return 200, _ok(results), None

    # -- Workers ----------------------------------------------------------------------------
    def _workers(self, method: str, s: Script, sub: str, query: str, body: bytes, ctype: str):
        with self.lock:
            if sub == "secrets" and method == "PUT":
                data = json.loads(body)
                s.new_version({**s.active.secrets, data["name"]: data["text"]}, "secret put")
                return 200, _ok({"name": data["name"], "type": "secret_text"}), None
            if sub == "secrets" and method == "GET":
                return 200, _ok([{"name": n, "type": "secret_text"} for n in sorted(s.active.secrets)]), None
            if sub.startswith("secrets/") and method == "DELETE":
                name = sub.split("/", 1)[1]
                secrets = dict(s.active.secrets)
                secrets.pop(name, None)
                s.new_version(secrets, "secret delete")
                return 200, _ok({}), None
            if sub == "settings" and method == "GET":
                return 200, _ok({"bindings": [{"type": "secret_text", "name": n}
                                              for n in sorted(s.active.secrets)]}), None
            if sub == "settings" and method == "PATCH":
                settings = _multipart_field(body, ctype, "settings")
                secrets = dict(s.active.secrets)
                for b in settings.get("bindings", []):
                    if b.get("type") == "secret_text" and "text" in b:
                        secrets[b["name"]] = b["text"]
                s.new_version(secrets, "secret bulk")
                return 200, _ok({"bindings": []}), None
            if sub == "deployments" and method == "GET":
                return 200, _ok({"deployments": s.deployments}), None
            if sub == "deployments" and method == "POST":
                data = json.loads(body)
                vid = data["versions"][0].get("version_id")
                target = next((v for v in s.versions if v.id == vid), None)
                if target is None:
                    return 404, _err(10007, "version not found"), None
                if target.secrets != s.active.secrets and "force=true" not in query:
                    return 400, _err(10220, "Secrets have changed since this version was "
                                     "deployed; rolling back would restore old values"), None
                d = s.deploy(target, (data.get("annotations") or {}).get("workers/message", ""))
                return 200, _ok(d), None
            if sub == "versions" and method == "GET":
                return 200, _ok({"items": [_version_json(v) for v in reversed(s.versions)]}), None
            if sub.startswith("versions/") and method == "GET":
                v = next((v for v in s.versions if v.id == sub.split("/", 1)[1]), None)
                if v is None:
                    return 404, _err(10007, "version not found"), None
                return 200, _ok(_version_json(v)), None
            if sub == "versions" and method == "POST":  # wrangler deploy uploads a version
                v = Version(uuid.uuid4().hex, len(s.versions) + 1, dict(s.active.secrets), _now(), "upload")
                s.versions.append(v)
                return 200, _ok(_version_json(v)), None
        return 200, _ok({}), None  # script-settings, subdomain, schedules, ...


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Drop(Exception):
    pass


def _ok(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def _err(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": [], "result": None}


def _version_json(v: Version) -> dict[str, Any]:
    return {"id": v.id, "number": v.number, "annotations": {"workers/message": v.message},
            "metadata": {"created_on": v.created_on, "source": "wrangler", "author_email": "ci@example"},
            "resources": {"bindings": [{"type": "secret_text", "name": n} for n in sorted(v.secrets)],
                          "script": {"etag": "etag-" + v.id, "handlers": ["fetch"]},
                          "script_runtime": {"usage_model": "standard"}}}


def _multipart_field(body: bytes, ctype: str, name: str) -> dict[str, Any]:
    msg = BytesParser(policy=HTTP).parsebytes(b"content-type: " + ctype.encode() + b"\r\n\r\n" + body)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            return json.loads(part.get_content())
    return {}
