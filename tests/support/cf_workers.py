"""The Workers part of the Cloudflare API stand-in: scripts, immutable versions and
deployments, as wrangler 4.86 calls them and as Cloudflare's docs describe them.

What it follows, and from where (docs/cloudflare.md; workers-sdk's versions/api.ts and
versions/secrets/index.ts; workers-sdk#12392, PR #15283 and #10585):
- every upload (POST .../versions, multipart `metadata` + modules) and every secret
  change makes a new immutable version with its own bindings, secrets and code;
- an upload's `{"type": "inherit"}` bindings, and the binding types listed in
  `keep_bindings` (secrets when it is absent: they persist across deploys), come from the
  *latest* version unless a binding names a `version_id`;
- a deployment routes traffic to one version, or to several by percentage (0 allowed);
  GET .../deployments lists the 10 most recent, newest first;
- `secret put` (PUT .../secrets), `secret delete` and `secret bulk` (PATCH .../settings)
  make a version from the latest one and deploy it at once, and fail with 10215 (put,
  delete) or 10214 (bulk) when the latest version is not the one deployed at 100%;
- deploying a version that is older than every version now deployed and whose secrets
  differ from the newest deployed one's is a rollback across a secret change: 10220 with
  "The following secrets have changed: ...", unless ?force=true;
- secret values are never returned (list and version views show names only);
- GET .../content/v2?version=ID returns the version's modules as multipart form data
  with a `cf-entrypoint` header.
Settings (docs/cloudflare.md; workers-sdk's workers-utils create-worker-upload-form.ts
and versions/secrets/index.ts; cloudflare-typescript's versions.ts and settings.ts;
cloudflare-docs multipart-upload-metadata.mdx):
- per version: compatibility date and flags, limits (`cpu_ms`), usage model, placement
  and cache options come from the upload's metadata (`placement: {"mode": "smart"}`,
  only `usage_model: "standard"` is accepted); what the metadata leaves out is not
  inherited from any other version. GET .../versions/ID shows them where the API does:
  `resources.script_runtime` {compatibility_date, compatibility_flags, limits,
  usage_model}, `resources.script.placement_mode`, top-level `annotations`
  {workers/message, workers/tag, workers/triggered_by} and `cache_options`;
- assets: `assets: {"jwt": ...}` sets a version's asset set (the jwt stands for a
  completed asset upload); `keep_assets: true` keeps "assets which exist for a previously
  uploaded Worker version", read here as the latest version's (which one is not
  documented: the reading under which wrangler's copy of the latest version is right);
  neither: no assets. Versions do not show their assets (the tests read `Version.assets`);
- secret put / bulk / delete make a version from the latest with its settings;
- script-level, non-versioned settings (`logpush`, `tail_consumers`, `observability`,
  `tags`): GET .../script-settings, PATCH .../script-settings (JSON, merged). Wrangler's
  copy also sends the first three in the version upload; an upload that carries one sets
  it, one that does not leaves it (the docs call them script-upload-only; nothing says an
  upload can reset them).
Health endpoints (`/health/<worker>`, outside the API) and the application's keyrotate
route (`/keyrotate/<worker>`, ping only: the kids of that version's MASTER_KEY and
MASTER_KEY_PREVIOUS, behind its KEYROTATE_OBJECTS_TOKEN) answer for the version that
serves the request: the `Cloudflare-Workers-Version-Overrides: <worker>="<id>"` header
picks one, otherwise the deployment's percentages (a fixed cycle, so tests are
deterministic); `health_rule(version)` says whether that version is healthy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Callable

LIST_DEPLOYMENTS = 10
MSG_10215 = ("Secret edit failed. You attempted to modify a secret, but the latest version of your "
             "Worker isn't currently deployed. Please ensure that the latest version of your Worker "
             "is fully deployed (wrangler versions deploy) before modifying secrets. Alternatively, "
             "you can use the Cloudflare dashboard to modify secrets and deploy the version.")
MSG_10214 = ("Script edit failed. You attempted to deploy the latest version with modified settings, "
             "but the latest version isn't currently deployed. Either upload a new version to edit "
             "the version settings, or use the script-level settings API "
             "(/workers/scripts/{script}/script-settings) to edit non-versioned settings.")


def _now(skew: timedelta = timedelta(0)) -> str:
    """Cloudflare's clock, `skew` ahead of this machine's."""
    return (datetime.now(timezone.utc) + skew).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Raw:
    """A response that is not the API's JSON envelope."""

    body: bytes
    content_type: str


# what a version carries besides its code, bindings and annotations (see the docstring)
VERSION_SETTINGS = ("compatibility_date", "compatibility_flags", "limits", "usage_model",
                    "placement_mode", "cache_options", "assets")
# script-level settings, and their values before anything sets them
SCRIPT_SETTINGS = {"logpush": False, "tail_consumers": None, "observability": None, "tags": None}
UPLOADED_SCRIPT_SETTINGS = ("logpush", "tail_consumers", "observability")


@dataclass
class Version:
    id: str
    number: int
    bindings: dict[str, dict[str, Any]]          # name -> binding (secret_text has "text")
    modules: dict[str, tuple[str, bytes]]        # name -> (content type, bytes)
    main_module: str
    created_on: str
    message: str = ""
    compatibility_date: str = "2024-12-01"
    compatibility_flags: list[str] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)       # {"cpu_ms": N}
    usage_model: str = "standard"
    placement_mode: str | None = None                          # "smart"
    cache_options: dict[str, Any] | None = None
    assets: str | None = None                                  # the asset set (upload jwt)
    tag: str | None = None                                     # annotations workers/tag
    triggered_by: str = "upload"

    @property
    def secrets(self) -> dict[str, str]:
        return {n: b["text"] for n, b in self.bindings.items() if b["type"] == "secret_text"}

    @property
    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in VERSION_SETTINGS}

    def as_json(self) -> dict[str, Any]:
        bindings = [{k: v for k, v in b.items() if k != "text"} | {"name": n}
                    for n, b in sorted(self.bindings.items())]
        annotations = {"workers/message": self.message, "workers/triggered_by": self.triggered_by}
        script = {"etag": "etag-" + self.id, "handlers": ["fetch"], "last_deployed_from": "wrangler"}
        out = {"id": self.id, "number": self.number,
               "annotations": annotations | ({"workers/tag": self.tag} if self.tag else {}),
               "metadata": {"created_on": self.created_on, "modified_on": self.created_on,
                            "source": "wrangler", "author_email": "ci@example"},
               "resources": {"bindings": bindings,
                             "script": script | ({"placement_mode": self.placement_mode}
                                                 if self.placement_mode else {}),
                             "script_runtime": {"compatibility_date": self.compatibility_date,
                                                "compatibility_flags": list(self.compatibility_flags),
                                                "usage_model": self.usage_model,
                                                "limits": dict(self.limits)}}}
        return out | ({"cache_options": self.cache_options} if self.cache_options else {})


@dataclass
class Script:
    name: str
    versions: list[Version] = field(default_factory=list)
    deployments: list[dict[str, Any]] = field(default_factory=list)
    served: int = 0   # requests served, for the fixed traffic cycle
    skew: Callable[[], timedelta] = lambda: timedelta(0)   # Cloudflare's clock, ahead of ours
    settings: dict[str, Any] = field(default_factory=lambda: dict(SCRIPT_SETTINGS))

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    def version(self, vid: str) -> Version | None:
        return next((v for v in self.versions if v.id == vid), None)

    @property
    def traffic(self) -> list[tuple[Version, float]]:
        """(version, percentage) of the current deployment."""
        if not self.deployments:
            return []
        out = []
        for v in self.deployments[0]["versions"]:
            version = self.version(v["version_id"])
            assert version is not None
            out.append((version, float(v["percentage"])))
        return out

    @property
    def active(self) -> Version:
        """The version serving 100% (or the largest share)."""
        return max(self.traffic, key=lambda t: t[1])[0]

    @property
    def latest_fully_deployed(self) -> bool:
        return [(v.id, p) for v, p in self.traffic] == [(self.latest.id, 100.0)]

    def add_version(self, bindings: dict[str, dict[str, Any]], message: str,
                    modules: dict[str, tuple[str, bytes]] | None = None,
                    main_module: str | None = None, settings: dict[str, Any] | None = None,
                    **annotations: Any) -> Version:
        """A new version: code and, unless `settings` are given, settings of the latest."""
        base = self.versions[-1] if self.versions else None
        v = Version(uuid.uuid4().hex, len(self.versions) + 1, bindings,
                    modules if modules is not None else (base.modules if base else {
                        "index.js": ("application/javascript+module",
                                     b"export default { fetch() { return new Response('ok') } }")}),
                    main_module or (base.main_module if base else "index.js"), _now(self.skew()), message,
                    **(settings if settings is not None else base.settings if base else {}),
                    **annotations)
        self.versions.append(v)
        return v

    def deploy(self, traffic: list[tuple[str, float]], message: str = "") -> dict[str, Any]:
        """A deployment is stamped when it happens (a rollback's is new, its version old)."""
        d = {"id": uuid.uuid4().hex, "source": "api", "strategy": "percentage",
             "created_on": _now(self.skew()), "author_email": "ci@example",
             "versions": [{"version_id": vid, "percentage": p} for vid, p in traffic],
             "annotations": {"workers/message": message} if message else {}}
        self.deployments.insert(0, d)
        return d

    def secret_change(self, secrets: dict[str, str | None], message: str) -> Version:
        """secret put / bulk / delete: a version from the latest one, deployed at once."""
        bindings = {n: dict(b) for n, b in self.latest.bindings.items()}
        for name, text in secrets.items():
            if text is None:
                bindings.pop(name, None)
            else:
                bindings[name] = {"type": "secret_text", "text": text}
        v = self.add_version(bindings, message, triggered_by="secret")
        self.deploy([(v.id, 100.0)], message)
        return v

    def serve(self, override: str | None) -> Version:
        """The version that serves one request. An override reaches only a version of the
        current deployment (at any share, 0% too); otherwise it is ignored without an error
        and the shares decide (Cloudflare's gradual deployments docs)."""
        if override:
            m = re.search(rf'{re.escape(self.name)}="([^"]+)"', override)
            chosen = self.version(m.group(1)) if m else None
            if chosen is not None and any(v is chosen for v, _ in self.traffic):
                return chosen
        self.served += 1
        slot, edge = self.served % 100, 0.0
        for v, p in self.traffic:
            edge += p
            if slot < edge:
                return v
        return self.active


class Workers:
    """Routes under /accounts/{a}/workers/... and the health endpoints."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.health_rule: Callable[[Version], bool] = lambda v: True
        self.pings = 0
        # for the tests: scripts whose changes Cloudflare refuses (403, code 10000), hooks
        # called after each new version and each deployment, and one-shot 500s for
        # requests a predicate picks (method, path below the script, body)
        self.refusing: set[str] = set()
        self.on_version: list[Callable[[Script, Version], None]] = []
        self.on_deploy: list[Callable[[Script], None]] = []
        self.fail_once: list[Callable[[str, str, bytes], bool]] = []
        self.clock_skew = timedelta(0)   # how far Cloudflare's clock runs ahead of ours

    def script(self, name: str) -> Script:
        if name not in self.scripts:
            s = Script(name, skew=lambda: self.clock_skew)
            v = s.add_version({}, "created")
            s.deploy([(v.id, 100.0)], "created")
            self.scripts[name] = s
        return self.scripts[name]

    def health(self, name: str, override: str | None) -> tuple[int, Any, None]:
        s = self.script(name)
        v = s.serve(override)
        if self.health_rule(v):
            return 200, Raw(json.dumps({"ok": True, "data": {"status": "healthy",
                                                           "version": v.id}}).encode(),
                            "application/json"), None
        return 500, Raw(json.dumps({"ok": False, "error": "unhealthy"}).encode(), "application/json"), None

    def key_route(self, name: str, override: str | None, body: bytes,
                  authorization: str | None) -> tuple[int, Any, None]:
        """The application's keyrotate route, `ping` only (the wire protocol of
        examples/durable-objects/keyrotate-objects.js): the version serving the request
        answers the kids of its own MASTER_KEY and MASTER_KEY_PREVIOUS, after checking the
        bearer token against its own KEYROTATE_OBJECTS_TOKEN."""
        v = self.script(name).serve(override)
        self.pings += 1
        token = v.secrets.get("KEYROTATE_OBJECTS_TOKEN")
        given = (authorization or "").removeprefix("Bearer ")
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return 401, Raw(json.dumps({"v": 1, "error": "unauthorized"}).encode(), "application/json"), None
        try:
            request = json.loads(body)
        except ValueError:
            request = {}
        if request.get("v") != 1 or request.get("op") != "ping" or "MASTER_KEY" not in v.secrets:
            return 400, Raw(json.dumps({"v": 1, "error": "bad-request"}).encode(), "application/json"), None
        previous = v.secrets.get("MASTER_KEY_PREVIOUS")
        answer = {"v": 1, "ok": True, "kid": kid(v.secrets["MASTER_KEY"]),
                  "previous_kid": kid(previous) if previous else None}
        return 200, Raw(json.dumps(answer).encode(), "application/json"), None

    def route(self, method: str, s: Script, sub: str, query: str, body: bytes,
              ctype: str) -> tuple[int, Any, dict[str, str] | None]:
        for i, picks in enumerate(self.fail_once):
            if picks(method, sub, body):
                del self.fail_once[i]
                return 500, _err(10013, "An unknown error has occurred"), None
        if method != "GET" and s.name in self.refusing:
            return 403, _err(10000, "Authentication error"), None
        versions, deployments = len(s.versions), len(s.deployments)
        try:
            return self._route(method, s, sub, query, body, ctype)
        finally:
            for v in s.versions[versions:]:
                for hook in list(self.on_version):
                    hook(s, v)
            if len(s.deployments) != deployments:
                for deployed in list(self.on_deploy):
                    deployed(s)

    def _route(self, method: str, s: Script, sub: str, query: str, body: bytes,
               ctype: str) -> tuple[int, Any, dict[str, str] | None]:
        if sub == "secrets" and method == "PUT":
            if not s.latest_fully_deployed:
                return 400, _err(10215, MSG_10215), None
            data = json.loads(body)
            s.secret_change({data["name"]: data["text"]}, "secret put")
            return 200, _ok({"name": data["name"], "type": "secret_text"}), None
        if sub == "secrets" and method == "GET":
            return 200, _ok([{"name": n, "type": "secret_text"} for n in sorted(s.latest.secrets)]), None
        if sub.startswith("secrets/") and method == "DELETE":
            if not s.latest_fully_deployed:
                return 400, _err(10215, MSG_10215), None
            s.secret_change({sub.split("/", 1)[1]: None}, "secret delete")
            return 200, _ok({}), None
        if sub == "settings" and method == "GET":
            return 200, _ok({"bindings": [{"type": b["type"], "name": n}
                                          for n, b in sorted(s.latest.bindings.items())]}), None
        if sub == "settings" and method == "PATCH":
            if not s.latest_fully_deployed:
                return 400, _err(10214, MSG_10214), None
            settings = _multipart(body, ctype).get("settings", {})
            changes = {b["name"]: b["text"] for b in settings.get("bindings", [])
                       if b.get("type") == "secret_text" and "text" in b}
            s.secret_change(changes, "secret bulk")
            return 200, _ok({"bindings": []}), None
        if sub == "deployments" and method == "GET":
            return 200, _ok({"deployments": s.deployments[:LIST_DEPLOYMENTS]}), None
        if sub == "deployments" and method == "POST":
            return self._deploy(s, json.loads(body), "force=true" in query)
        if sub == "versions" and method == "GET":
            return 200, _ok({"items": [v.as_json() for v in reversed(s.versions)]}), None
        if sub.startswith("versions/") and method == "GET":
            v = s.version(sub.split("/", 1)[1])
            return (200, _ok(v.as_json()), None) if v else (404, _err(10007, "version not found"), None)
        if sub == "versions" and method == "POST":
            return self._upload(s, body, ctype)
        if sub == "content/v2" and method == "GET":
            vid = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("version")
            v = s.version(vid) if vid else s.active
            if v is None:
                return 404, _err(10007, "version not found"), None
            return 200, _form(v.modules), {"cf-entrypoint": v.main_module}
        if sub == "script-settings" and method == "GET":
            return 200, _ok(dict(s.settings)), None
        if sub == "script-settings" and method == "PATCH":
            s.settings.update({k: v for k, v in json.loads(body).items() if k in SCRIPT_SETTINGS})
            return 200, _ok(dict(s.settings)), None
        return 200, _ok({}), None  # schedules, subdomain, ...

    def _deploy(self, s: Script, data: dict[str, Any], force: bool):
        wanted = [(v.get("version_id"), float(v.get("percentage", 0))) for v in data.get("versions", [])]
        found = [s.version(str(vid)) for vid, _ in wanted]
        versions = [v for v in found if v is not None]
        if len(versions) != len(found):
            return 404, _err(10007, "version not found"), None
        if abs(sum(p for _, p in wanted) - 100.0) > 1e-9:
            return 400, _err(10219, "the percentages of a deployment must add up to 100"), None
        deployed = [v for v, _ in s.traffic]
        newest = max(deployed, key=lambda v: v.number)
        changed = sorted({n for v in versions if v not in deployed and v.number < newest.number
                          for n in set(v.secrets) | set(newest.secrets)
                          if v.secrets.get(n) != newest.secrets.get(n)})
        if changed and not force:
            return 400, _err(10220, "Secrets have changed since this version was deployed. The "
                             f"following secrets have changed: {', '.join(changed)}"), None
        d = s.deploy([(str(vid), p) for vid, p in wanted],
                     (data.get("annotations") or {}).get("workers/message", ""))
        return 200, _ok(d), None

    def _upload(self, s: Script, body: bytes, ctype: str):
        parts = _multipart_parts(body, ctype)
        meta = json.loads(parts.pop("metadata")[1])
        latest = s.latest
        bindings: dict[str, dict[str, Any]] = {}
        for b in meta.get("bindings", []):
            if b.get("type") == "inherit":
                source = s.version(b["version_id"]) if b.get("version_id") else latest
                if source is None or b["name"] not in source.bindings:
                    return 400, _err(10021, f"cannot inherit binding {b['name']}"), None
                bindings[b["name"]] = dict(source.bindings[b["name"]])
            else:
                bindings[b["name"]] = {k: v for k, v in b.items() if k != "name"}
        # secrets persist across uploads (from the latest version) unless keep_bindings
        # says which binding types to keep; keep_bindings = [] keeps none
        keep = meta.get("keep_bindings", ["secret_text", "secret_key"])
        for name, b in latest.bindings.items():
            if name not in bindings and b["type"] in keep:
                bindings[name] = dict(b)
        modules = {name: (ct, content) for name, (ct, content) in parts.items()}
        if meta.get("usage_model", "standard") != "standard":
            return 400, _err(10021, "usage_model: only standard can be set"), None
        assets = meta.get("assets") or {}
        settings = {"compatibility_date": meta.get("compatibility_date") or "2024-12-01",
                    "compatibility_flags": list(meta.get("compatibility_flags") or []),
                    "limits": dict(meta.get("limits") or {}), "usage_model": "standard",
                    "placement_mode": (meta.get("placement") or {}).get("mode"),
                    "cache_options": meta.get("cache_options"),
                    "assets": assets.get("jwt") if assets else
                    latest.assets if meta.get("keep_assets") else None}
        annotations = meta.get("annotations") or {}
        v = s.add_version(bindings, annotations.get("workers/message") or "upload", modules or None,
                          meta.get("main_module"), settings, tag=annotations.get("workers/tag"))
        s.settings.update({k: meta[k] for k in UPLOADED_SCRIPT_SETTINGS if k in meta})
        return 200, _ok({**v.as_json(), "deployment_id": None}), None


def kid(secret: str) -> str:
    """The key id a Worker computes for a MASTER_KEY value, by its definition (the raw 32
    bytes of a 64-hex secret, else SHA-256 of the string; then the first 12 hex characters
    of HMAC-SHA256(key, "keyrotate key id v1")). Written here from that definition, not
    taken from keyrotate: the workerd tests prove the JavaScript side agrees."""
    raw = bytes.fromhex(secret) if re.fullmatch(r"[0-9a-fA-F]{64}", secret) else \
        hashlib.sha256(secret.encode()).digest()
    return hmac.new(raw, b"keyrotate key id v1", hashlib.sha256).hexdigest()[:12]


def _ok(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def _err(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": [],
            "result": None}


def _multipart_parts(body: bytes, ctype: str) -> dict[str, tuple[str, bytes]]:
    msg = BytesParser(policy=HTTP).parsebytes(b"content-type: " + ctype.encode() + b"\r\n\r\n" + body)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[str(name)] = (part.get_content_type(), part.get_payload(decode=True) or b"")
    return out


def _multipart(body: bytes, ctype: str) -> dict[str, Any]:
    return {name: json.loads(content) for name, (ct, content) in _multipart_parts(body, ctype).items()
            if ct == "application/json" or name in ("metadata", "settings")}


def _form(modules: dict[str, tuple[str, bytes]]) -> Raw:
    boundary = "keyrotate-" + uuid.uuid4().hex
    chunks = []
    for name, (ct, content) in modules.items():
        chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                      f"filename=\"{name}\"\r\nContent-Type: {ct}\r\n\r\n".encode() + content + b"\r\n")
    return Raw(b"".join(chunks) + f"--{boundary}--\r\n".encode(),
               f"multipart/form-data; boundary={boundary}")
