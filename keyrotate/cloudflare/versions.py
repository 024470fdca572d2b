"""A new Worker version made from a version keyrotate chooses, with the secrets it
chooses, through Cloudflare's API: what `wrangler versions secret put|bulk` do, but from a
given version instead of the latest one (workers-sdk#10585).

As wrangler's copyWorkerVersionWithNewSecrets does: read the version, its modules
(content/v2) and the script's settings, and upload them again with the new secrets. Unlike
it, every inherited binding names the version it comes from and `keep_bindings` is empty,
because an upload otherwise inherits from the *latest* version. Non-secret bindings, the
code and the version's own settings come from `code_from`; secrets keyrotate does not
manage come from `secrets_from` (the version serving now). Secret values travel only in
the request body, over TLS.

Settings, field by field as wrangler copies them (docs/cloudflare.md):
compatibility date and flags and limits from `resources.script_runtime`; placement when
`resources.script.placement_mode` is "smart" (the only placement an upload can set: any
other is refused rather than dropped); `cache_options`; `keep_assets: true`; logpush, tail
consumers and observability from GET .../script-settings (script-level: sent as they are).
Beyond wrangler: the source's `workers/tag` annotation is kept (it names the code). Not
sent, as by wrangler: `usage_model` (an upload can only set "standard", every new
version's model) and migrations (a version upload cannot carry them). Which version
`keep_assets` keeps the assets of is not documented: for a source that is not the latest
version, they may be the latest version's.
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from keyrotate.cloudflare_api import CloudflareClient, account_id
from keyrotate.errors import DeployError

SECRET_TYPES = ("secret_text", "secret_key")


WHY = ("making or deploying a Worker version keyrotate chooses (--from-deployed, rollback, "
       "canary)")


class VersionsApi:
    """Connected on first use: a command that needs no version made never needs the
    account id or a token."""

    def __init__(self) -> None:
        self._api: CloudflareClient | None = None
        self._account: str | None = None

    @property
    def api(self) -> CloudflareClient:
        if self._api is None:
            self._account = account_id(WHY)
            self._api = CloudflareClient("Cloudflare Workers API", WHY)
        return self._api

    def _path(self, worker: str, rest: str) -> str:
        self.api  # noqa: B018 (connects, and so knows the account)
        return f"/accounts/{self._account}/workers/scripts/{worker}/{rest}"

    def version(self, worker: str, version_id: str) -> dict[str, Any]:
        return dict(self.api.call("GET", self._path(worker, f"versions/{version_id}")))

    def modules(self, worker: str, version_id: str) -> tuple[str, list[tuple[str, str, bytes]]]:
        """(entry point, [(name, content type, bytes)]) of a version's code."""
        resp = self.api.request("GET", self._path(worker, "content/v2"), params={"version": version_id})
        entry = resp.headers.get("cf-entrypoint")
        ctype = resp.headers.get("content-type", "")
        if resp.status_code != 200 or not entry or not ctype.startswith("multipart/form-data"):
            raise DeployError(f"cannot read the code of {worker} version {version_id} "
                              f"(HTTP {resp.status_code})")
        msg = BytesParser(policy=HTTP).parsebytes(b"content-type: " + ctype.encode() + b"\r\n\r\n"
                                                  + resp.content)
        parts = [(str(p.get_param("name", header="content-disposition")), p.get_content_type(),
                  p.get_payload(decode=True) or b"") for p in msg.iter_parts()]
        return entry, parts

    def copy(self, worker: str, code_from: str, secrets_from: str,
             secrets: dict[str, str | None], message: str) -> str:
        """Upload (not deploy) a version: `code_from`'s code and bindings, `secrets_from`'s
        secrets, and `secrets` set (None: removed). Returns the new version's id."""
        base = self.version(worker, code_from)
        live = base if secrets_from == code_from else self.version(worker, secrets_from)
        bindings: list[dict[str, Any]] = []
        for source, take_secrets in ((base, False), (live, True)):
            for b in source["resources"]["bindings"]:
                if (b["type"] in SECRET_TYPES) == take_secrets and b["name"] not in secrets:
                    bindings.append({"name": b["name"], "type": "inherit", "version_id": source["id"]})
        bindings += [{"name": n, "type": "secret_text", "text": v} for n, v in secrets.items()
                     if v is not None]
        entry, modules = self.modules(worker, code_from)
        metadata = {"main_module": entry, "bindings": bindings, "keep_bindings": [],
                    **version_settings(worker, base), **self.script_settings(worker),
                    "annotations": {"workers/message": message}
                    | {k: v for k, v in (base.get("annotations") or {}).items()
                       if k == "workers/tag" and v}}
        files = [("metadata", ("metadata.json", json.dumps(metadata).encode(), "application/json"))]
        files += [(name, (name, content, ctype)) for name, ctype, content in modules]
        result = self.api.call("POST", self._path(worker, "versions"), files=files)
        return str(result["id"])

    def deploy(self, worker: str, traffic: list[tuple[str, float]], message: str,
               force: bool = False) -> None:
        """One deployment of versions by percentage. `force` passes Cloudflare's 10220
        (secrets changed since that version): keyrotate uses it only to put a version at 0%
        beside the serving one, so that it can be asked which keys it holds before any
        traffic reaches it."""
        self.api.call("POST", self._path(worker, "deployments") + ("?force=true" if force else ""),
                      json={"strategy": "percentage",
                            "versions": [{"version_id": v, "percentage": p} for v, p in traffic],
                            "annotations": {"workers/message": message}})

    def script_settings(self, worker: str) -> dict[str, Any]:
        """The script-level settings an upload re-sends, as wrangler's copy does."""
        found = dict(self.api.call("GET", self._path(worker, "script-settings")) or {})
        out: dict[str, Any] = {}
        if found.get("logpush") is not None:
            out["logpush"] = found["logpush"]
        for key in ("tail_consumers", "observability"):
            if found.get(key):
                out[key] = found[key]
        return out

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


def version_settings(worker: str, version: dict[str, Any]) -> dict[str, Any]:
    """A version's own settings, as upload metadata (create-worker-upload-form.ts)."""
    resources = version.get("resources") or {}
    runtime, script = resources.get("script_runtime") or {}, resources.get("script") or {}
    out: dict[str, Any] = {"compatibility_date": runtime.get("compatibility_date"),
                           "compatibility_flags": runtime.get("compatibility_flags") or [],
                           "keep_assets": True}
    if runtime.get("limits"):
        out["limits"] = runtime["limits"]
    placement = script.get("placement_mode")
    if placement == "smart":
        out["placement"] = {"mode": "smart"}
    elif placement:
        raise DeployError(f"{worker} version {version.get('id')} has placement mode {placement!r}, "
                          "which a version upload cannot set: a copy would drop it, so keyrotate "
                          "refuses to make one (nothing was changed)")
    if version.get("cache_options"):
        out["cache_options"] = version["cache_options"]
    return out
