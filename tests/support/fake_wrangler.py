"""A fake `wrangler` 4.86 for keyrotate's tests: the command lines keyrotate runs, the
same Cloudflare API requests, the output keyrotate reads, in a tenth of the time.

Run as `python tests/support/fake_wrangler.py ARGS...` (the `project` fixture puts that in
the manifest's `wrangler = [...]`). It stands in for a third-party program, so it imports
nothing from keyrotate. Like wrangler it reads CLOUDFLARE_API_BASE_URL,
CLOUDFLARE_API_TOKEN and CLOUDFLARE_ACCOUNT_ID, and it only ever talks to the API at
CLOUDFLARE_API_BASE_URL (in the tests, the stand-in in tests/support/cf_api.py).

The facts it follows were read off the real wrangler 4.86 (node_modules/wrangler,
wrangler-dist/cli.js) and its requests as the stand-in logs them. Those not marked (†)
are checked by tests/cloudflare/test_wrangler_contract.py, which runs this program and the real
wrangler against two stand-ins in the same state and compares the requests (method, path,
query, JSON and multipart fields), the resulting state and what keyrotate parses of the
output, failures and retries included. (†) marks what was read in wrangler's source but
is not exercised there (neither keyrotate nor the stand-in's faults lead to it).
Paths below are under /accounts/{account}/workers/scripts/{W}.

- `secret put K --name W`: the value is stdin with trailing whitespace trimmed (trimEnd);
  one PUT .../secrets {"name","text","type":"secret_text"}; no retry. On Cloudflare's
  10215 wrangler prints its own message *without* the code ("Secret edit failed. ...
  latest version of your Worker isn't currently deployed.").
- `secret bulk --name W`: stdin's lines joined without newlines, parsed as JSON; GET
  .../settings, then PATCH .../settings, multipart with one `settings` field
  {"bindings": [every existing binding not overwritten, as {"type","name"} only] +
  [{"type":"secret_text","name","text"} per key]}. On failure it prints
  "🚨 Secrets failed to upload" and the API error with its code (10214).
- `secret delete K --name W`: DELETE .../secrets/{encodeURIComponent(K)}?url_encoded=true;
  a non-interactive run confirms by itself; errors carry their code (10215).
- `secret list --name W --format json`: GET .../secrets; prints the result as JSON.
- `deploy --env E` (cwd holds wrangler.toml): the Worker is [env.E].name (or
  "{name}-{E}"); GET /workers/services/W; GET .../deployments, and when the latest one
  has two or more versions, GET .../versions/{id} for each of them; GET .../settings
  (failure ignored †); POST .../versions?bindings_inherit=strict, multipart `metadata`
  {"main_module","bindings":[],"compatibility_date","compatibility_flags"} (no
  keep_bindings: secrets persist) + the module as application/javascript+module, retried
  on a 5xx at once (and a third time after 1 s †, as after no answer at all †); POST
  .../deployments
  {"strategy":"percentage","versions":[{new id, 100}],"annotations":{}}; PATCH
  .../script-settings {"observability":{"enabled":false},"tags":["cf:service={top-level
  name}","cf:environment=E"]} (failure ignored †); GET /workers/subdomain; GET
  .../subdomain; POST .../subdomain {"enabled":true} (retried like the upload †).
- `deployments list --name W --json`: GET .../deployments; prints them oldest first
  (sorted by created_on).
- `versions list --name W --json`: GET .../versions?deployable=true; prints the items
  oldest first (sorted by metadata.created_on).
- `versions deploy V@P% ... --name W --yes --message M`: GET .../deployments; GET
  .../versions/{id} for each version of the latest deployment, then for each named
  version not already fetched; at most 2 versions, percentages summing to 100 (±0.001) †;
  POST .../deployments {"strategy":"percentage","versions":[{"version_id","percentage"}],
  "annotations":{"workers/message":M}}; no retry and no ?force=true on 10220; then GET
  /workers/services/W (failure ignored †).
- `rollback V --name W --yes --message M`: GET .../deployments; GET .../versions/{id}
  for each version of the latest deployment; GET .../versions/V; POST .../deployments
  {..., [{V, 100}], "annotations":{"workers/message":M}}; on 10220 ("The following
  secrets have changed: ...") a non-interactive run confirms by itself and POSTs again
  to .../deployments?force=true.
- API failures print "✘ [ERROR] A request to the Cloudflare API ({path}) failed." and
  "{message} [code: {code}]" on stderr and exit 1 (a stand-in 500 reads "An unknown error
  has occurred [code: 10013]"); list commands print no banner.

What it does not do (the tests' projects need none of it): it refuses bindings, routes,
triggers or any other wrangler.toml key, json configs, dotenv input to `secret bulk`,
options keyrotate does not pass and commands it does not run. It does not bundle: it
uploads the `main` module as written, where wrangler uploads esbuild's output (the
contract compares module names and types, not bytes). It does not create a missing Worker
(the stand-in never answers 10007), sync non-versioned settings from a wrangler.toml found
above the cwd of `versions deploy` (the test projects have none there), prompt, or write
debug logs to WRANGLER_LOG_PATH. It never prints a secret value.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import time
import tomllib
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

BANNER = " ⛅️ wrangler 4.86.0 (fake: tests/support/fake_wrangler.py)\n" + "─" * 46
BUG_NOTE = ("If you think this is a bug, please open an issue at: "
            "https://github.com/cloudflare/workers-sdk/issues/new/choose")
MSG_PUT_10215 = (
    "Secret edit failed. You attempted to modify a secret, but the latest version of your Worker "
    "isn't currently deployed.\nThis limitation exists to prevent accidental deployment when using "
    "Worker versions and secrets together.\nTo resolve this, you have two options:\n(1) use the "
    "`wrangler versions secret put` instead, which allows you to update secrets without deploying; "
    "or\n(2) deploy the latest version first, then modify secrets.\nAlternatively, you can use the "
    "Cloudflare dashboard to modify secrets and deploy the version.")
CONFIG_KEYS = {"name", "main", "compatibility_date", "compatibility_flags"}


class UserError(Exception):
    """A failure wrangler reports in its own words (no API error code)."""


class APIError(Exception):
    """A Cloudflare API answer with success false, rendered as wrangler renders it."""

    def __init__(self, resource: str, status: int, payload: dict[str, Any]) -> None:
        self.resource, self.status = resource, status
        self.errors: list[dict[str, Any]] = list(payload.get("errors") or [])
        self.messages = [m if isinstance(m, str) else str(m.get("message", m))
                         for m in payload.get("messages") or []]
        super().__init__(self.render())

    @property
    def code(self) -> int | None:
        return self.errors[0].get("code") if self.errors else None

    def notes(self) -> list[str]:
        return [f"{e.get('message')} [code: {e['code']}]" if e.get("code") else str(e.get("message"))
                for e in self.errors] + self.messages

    def render(self) -> str:
        """Title, then the notes (printed indented under it), as throwFetchError builds them."""
        return "\n".join([f"A request to the Cloudflare API ({self.resource}) failed.",
                          *self.notes(), "", BUG_NOTE])


class Proc:
    """What a program takes from its process: stdin, stdout, stderr, the environment and the
    working folder. The real ones when this file runs as a program; given by
    run_in_process when the tests run it inside their own process."""

    def __init__(self, stdin: TextIO, out: TextIO, err: TextIO, env: Mapping[str, str],
                 cwd: Path | None = None) -> None:
        self.stdin, self.out, self.err, self.env, self._cwd = stdin, out, err, env, cwd

    @property
    def cwd(self) -> Path:
        return self._cwd or Path.cwd()


PROC = Proc(sys.stdin, sys.stdout, sys.stderr, os.environ)
_IN_PROCESS = threading.Lock()


def run_in_process(argv: list[str], stdin: str, env: Mapping[str, str],
                   cwd: Path) -> tuple[int, str, str]:
    """main(argv) as a child process would run it (exit code, stdout, stderr), without the
    process: for the tests, where two Python start-ups (keyrotate's guard and this program)
    are most of a command's time. An exception that would end the program with a traceback
    exits 1 with the traceback on stderr, as Python does."""
    global PROC
    out, err = io.StringIO(), io.StringIO()
    with _IN_PROCESS:
        saved, PROC = PROC, Proc(io.StringIO(stdin), out, err, dict(env), cwd)
        try:
            code = main(argv)
        except Exception:
            err.write(traceback.format_exc())
            code = 1
        finally:
            PROC = saved
    return code, out.getvalue(), err.getvalue()


class NetworkError(Exception):
    """No answer at all: undici's `fetch failed`, which wrangler retries where it retries 5xx."""


class Api:
    """fetchResult: one request, the envelope's `result` or an APIError. No retries here."""

    def __init__(self) -> None:
        self.base = PROC.env.get("CLOUDFLARE_API_BASE_URL", "https://api.cloudflare.com/client/v4")
        self.token = PROC.env.get("CLOUDFLARE_API_TOKEN", "")
        account = PROC.env.get("CLOUDFLARE_ACCOUNT_ID")
        if not account:
            raise UserError("fake wrangler: set CLOUDFLARE_ACCOUNT_ID (it never looks accounts up)")
        self.account = account

    def script(self, worker: str, sub: str = "") -> str:
        return f"/accounts/{self.account}/workers/scripts/{worker}" + (f"/{sub}" if sub else "")

    def call(self, method: str, resource: str, *, query: dict[str, str] | None = None,
             json_body: Any = None, form: dict[str, tuple[str | None, str | None, bytes]] | None = None,
             headers: dict[str, str] | None = None) -> Any:
        url = self.base + resource + ("?" + urllib.parse.urlencode(query) if query else "")
        head = {"Authorization": f"Bearer {self.token}", "User-Agent": "wrangler/4.86.0 (fake)",
                **(headers or {})}
        data = None
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":")).encode()
            head["Content-Type"] = "application/json"
        elif form is not None:
            data, head["Content-Type"] = _multipart(form)
        req = urllib.request.Request(url, data=data, method=method, headers=head)
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                status, text = res.status, res.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise NetworkError(f"fetch failed ({e})") from None
        if not text and status in (204, 205):
            return {}
        try:
            payload = json.loads(text)
        except ValueError:
            raise APIError(resource, status, {"errors": [{"message": "Received a malformed response "
                                                          "from the API"}]}) from None
        if not payload.get("success"):
            raise APIError(resource, status, payload)
        return payload.get("result")


def retry_on_api_failure(action: Callable[[], Any]) -> Any:
    """wrangler's retryOnAPIFailure: 3 attempts on a 5xx or no answer, after 0 s then 1 s."""
    for backoff in (0.0, 1.0):
        try:
            return action()
        except APIError as e:
            if not str(e.status).startswith("5"):
                raise
        except NetworkError:
            pass
        time.sleep(backoff)  # wrangler's own backoff, not synchronisation
    return action()


def _multipart(form: dict[str, tuple[str | None, str | None, bytes]]) -> tuple[bytes, str]:
    """FormData as undici sends it: a plain field has no Content-Type, a file part has one."""
    boundary = "----formdata-fake-wrangler-" + uuid.uuid4().hex
    out = b""
    for name, (filename, ctype, content) in form.items():
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        head += f"Content-Type: {ctype}\r\n" if ctype else ""
        out += head.encode() + b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _js(value: Any) -> Any:
    """JSON as JavaScript prints it: no float/int distinction, so 100.0 is 100."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_js(v) for v in value]
    if isinstance(value, dict):
        return {k: _js(v) for k, v in value.items()}
    return value


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True, file=PROC.out)


def print_json(value: Any) -> None:
    say(json.dumps(_js(value), indent=2, ensure_ascii=False))


def fetch_versions(api: Api, worker: str, ids: list[str], cache: dict[str, Any]) -> None:
    """fetchVersions: GET .../versions/{id} for each id not in the cache, in order."""
    for vid in ids:
        if vid not in cache:
            cache[vid] = api.call("GET", api.script(worker, f"versions/{vid}"))


def latest_deployment(api: Api, worker: str) -> dict[str, Any] | None:
    """fetchLatestDeployment: the first of GET .../deployments (the API lists newest first)."""
    deployments = api.call("GET", api.script(worker, "deployments"))["deployments"]
    return deployments[0] if deployments else None


def create_deployment(api: Api, worker: str, traffic: list[tuple[str, float]], message: str | None,
                      force: bool = False) -> Any:
    """createDeployment; an absent message is dropped, as JSON.stringify drops undefined."""
    body = {"strategy": "percentage",
            "versions": [{"version_id": vid, "percentage": _js(pct)} for vid, pct in traffic],
            "annotations": {} if message is None else {"workers/message": message}}
    return api.call("POST", api.script(worker, "deployments"), json_body=body,
                    query={"force": "true"} if force else None)


# -- commands ------------------------------------------------------------------------------

def secret_put(api: Api, key: str, worker: str) -> None:
    value = PROC.stdin.read().rstrip()
    say(BANNER, f'🌀 Creating the secret for the Worker "{worker}" ')
    try:
        api.call("PUT", api.script(worker, "secrets"),
                 json_body={"name": key, "text": value, "type": "secret_text"})
    except APIError as e:
        if e.code == 10215:
            raise UserError(MSG_PUT_10215) from None
        raise
    say(f"✨ Success! Uploaded secret {key}")


def secret_bulk(api: Api, worker: str) -> None:
    piped = "".join(PROC.stdin.read().splitlines())
    try:
        content = json.loads(piped)
    except ValueError:
        content = None
    if not isinstance(content, dict):
        raise UserError("fake wrangler: `secret bulk` here reads a JSON object on stdin only")
    say(BANNER, f'🌀 Creating the secrets for the Worker "{worker}" ')
    existing = api.call("GET", api.script(worker, "settings"))["bindings"]
    inherit = [{"type": b["type"], "name": b["name"]} for b in existing
               if b["type"] != "secret_text" or b["name"] not in content]
    upsert = [{"type": "secret_text", "name": k, "text": v} for k, v in content.items()]
    settings = json.dumps({"bindings": inherit + upsert}, separators=(",", ":")).encode()
    try:
        api.call("PATCH", api.script(worker, "settings"), form={"settings": (None, None, settings)})
    except Exception:
        say("", "🚨 Secrets failed to upload")
        raise
    say(*(f"✨ Successfully created secret for key: {b['name']}" for b in upsert), "",
        "Finished processing secrets file:", f"✨ {len(upsert)} secrets successfully uploaded")


def secret_delete(api: Api, key: str, worker: str) -> None:
    say(BANNER, f"? Are you sure you want to permanently delete the secret {key} on the Worker {worker}?",
        "🤖 Using fallback value in non-interactive context: yes",
        f"🌀 Deleting the secret {key} on the Worker {worker}")
    encoded = urllib.parse.quote(key, safe="!'()*")  # encodeURIComponent
    api.call("DELETE", api.script(worker, f"secrets/{encoded}"), query={"url_encoded": "true"})
    say(f"✨ Success! Deleted secret {key}")


def secret_list(api: Api, worker: str) -> None:
    print_json(api.call("GET", api.script(worker, "secrets")))


def deploy(api: Api, env: str | None) -> None:
    config = _read_config(PROC.cwd, env)
    worker, main = config["name"], Path(config["main"])
    content = (PROC.cwd / main).read_bytes()
    say(BANNER)
    service = api.call("GET", f"/accounts/{api.account}/workers/services/{worker}")
    script = service["default_environment"]["script"]
    if script.get("last_deployed_from") == "dash":
        raise UserError("fake wrangler: a Worker last deployed from the dashboard needs a config diff")
    latest = latest_deployment(api, worker)
    if latest and len(latest["versions"]) >= 2:  # confirmLatestDeploymentOverwrite shows them
        fetch_versions(api, worker, [v["version_id"] for v in latest["versions"]], {})
        say("Your last deployment has multiple versions: deploying over it (non-interactive: yes)")
    try:
        api.call("GET", api.script(worker, "settings"))  # resource provisioning; failure ignored
    except (APIError, NetworkError):
        pass
    metadata = {"main_module": main.name, "bindings": [],
                "compatibility_date": config["compatibility_date"],
                "compatibility_flags": config.get("compatibility_flags", [])}
    form = {"metadata": (None, None, json.dumps(metadata, separators=(",", ":")).encode()),
            main.name: (main.name, "application/javascript+module", content)}
    say(f"Total Upload: {len(content) / 1024:.2f} KiB")
    start = time.monotonic()
    version = retry_on_api_failure(lambda: api.call(
        "POST", api.script(worker, "versions"), query={"bindings_inherit": "strict"}, form=form))
    create_deployment(api, worker, [(version["id"], 100)], None)
    tags = [t for t in script.get("tags") or [] if not t.startswith(("cf:service=", "cf:environment="))]
    if config["has_envs"]:
        tags += [f"cf:service={config['top_name']}"] + ([f"cf:environment={env}"] if env else [])
    try:
        api.call("PATCH", api.script(worker, "script-settings"),
                 json_body={"observability": {"enabled": False}, "tags": tags})
    except (APIError, NetworkError):
        say("Could not apply service and environment tags.")
    say(f"Uploaded {worker} ({time.monotonic() - start:.2f} sec)")
    subdomain = api.call("GET", f"/accounts/{api.account}/workers/subdomain").get("subdomain", "undefined")
    api.call("GET", api.script(worker, "subdomain"))
    retry_on_api_failure(lambda: api.call(
        "POST", api.script(worker, "subdomain"), json_body={"enabled": True},
        headers={"Cloudflare-Workers-Script-Api-Date": "2025-08-01"}))
    vid = version["id"]
    if re.fullmatch(r"[0-9a-f]{32}", vid):
        vid = str(uuid.UUID(vid))  # parseNonHyphenedUuid
    say(f"Deployed {worker} triggers", f"  https://{worker}.{subdomain}.workers.dev",
        f"Current Version ID: {vid}")


def deployments_list(api: Api, worker: str) -> None:
    deployments = api.call("GET", api.script(worker, "deployments"))["deployments"]
    print_json(sorted(deployments, key=lambda d: d["created_on"]))


def versions_list(api: Api, worker: str) -> None:
    items = api.call("GET", api.script(worker, "versions"), query={"deployable": "true"})["items"]
    print_json(sorted(items, key=lambda v: v["metadata"]["created_on"]))


def versions_deploy(api: Api, specs: list[str], worker: str, message: str | None) -> None:
    traffic: dict[str, float] = {}
    for spec in specs:
        vid, _, pct = spec.partition("@")
        number = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", pct)  # parseFloat
        if not number:
            raise UserError(f"fake wrangler: give every version a percentage ({spec!r})")
        if not 0 <= float(number.group(0)) <= 100:
            raise UserError(f'Percentage value ({_js(float(number.group(0)))}%) parsed from '
                            f'version-spec positional arg "{spec}" must be between 0 and 100.')
        traffic[vid] = float(number.group(0))
    say(BANNER, "╭ Deploy Worker Versions by splitting traffic between multiple versions")
    cache: dict[str, Any] = {}
    latest = latest_deployment(api, worker)
    fetch_versions(api, worker, [v["version_id"] for v in latest["versions"]] if latest else [], cache)
    fetch_versions(api, worker, list(traffic), cache)
    if not traffic:
        raise UserError("You must select at least 1 version to deploy.")
    if len(traffic) > 2:
        raise UserError("You must select at most 2 versions to deploy.")
    subtotal = sum(traffic.values())
    if abs(subtotal - 100) > 1e-3:
        raise UserError(f"Sum of specified percentages ({_js(subtotal)}%) must be 100%")
    create_deployment(api, worker, list(traffic.items()), message)
    say("│ No non-versioned settings to sync. Skipping...")
    try:
        api.call("GET", f"/accounts/{api.account}/workers/services/{worker}")
    except (APIError, NetworkError):
        pass
    shares = " and ".join(f"version {vid} at {_js(pct)}%" for vid, pct in traffic.items())
    say(f"╰  SUCCESS  Deployed {worker} {shares}")


def rollback(api: Api, version_id: str, worker: str, message: str | None) -> None:
    say(BANNER)
    latest = latest_deployment(api, worker)
    fetch_versions(api, worker, [v["version_id"] for v in latest["versions"]] if latest else [], {})
    message = "Rollback" if message is None else message
    fetch_versions(api, worker, [version_id], {})  # wrangler fetches the target uncached
    say(f"├  WARNING  You are about to rollback to Worker Version {version_id}.", "Performing rollback...")
    try:
        create_deployment(api, worker, [(version_id, 100)], message)
    except APIError as e:
        if e.code != 10220:
            raise
        changed = e.notes()[0].replace(" [code: 10220]", "")
        changed = changed[changed.find("The following secrets have changed:") + 36:]
        say(f"? The following secrets have changed since version {version_id} was deployed. "
            "Please confirm you wish to continue with the rollback",
            *(f"  * {name}" for name in changed.split(", ")),
            "🤖 Using fallback value in non-interactive context: yes")
        create_deployment(api, worker, [(version_id, 100)], message, force=True)
    say(f"╰  SUCCESS  Worker Version {version_id} has been deployed to 100% of traffic.", "",
        f"Current Version ID: {version_id}")


def _read_config(folder: Path, env: str | None) -> dict[str, Any]:
    """The few wrangler.toml keys the fake models; anything else is refused, not ignored."""
    path = folder / "wrangler.toml"
    if not path.exists():
        raise UserError(f"fake wrangler: no wrangler.toml in {folder} (json configs not modelled)")
    top = tomllib.loads(path.read_text())
    envs = top.get("env", {})
    unknown = set(top) - CONFIG_KEYS - {"env"} | {k for e in envs.values() for k in set(e) - CONFIG_KEYS}
    if unknown:
        raise UserError(f"fake wrangler: wrangler.toml keys it does not model: {sorted(unknown)}; "
                        "use the real wrangler (@pytest.mark.real_wrangler)")
    if env is not None and env not in envs:
        raise UserError(f"fake wrangler: no [env.{env}] in {path}")
    section = envs.get(env, {}) if env else {}
    merged = {**{k: v for k, v in top.items() if k != "env"}, **section}
    if env and "name" not in section:
        merged["name"] = f"{top['name']}-{env}"
    for key in ("name", "main", "compatibility_date"):
        if key not in merged:
            raise UserError(f"fake wrangler: wrangler.toml needs `{key}`")
    return {**merged, "top_name": top.get("name"), "has_envs": bool(envs)}


# -- command line --------------------------------------------------------------------------

def _options(args: list[str], flags: set[str], valued: set[str]) -> tuple[list[str], dict[str, Any]]:
    """yargs, as far as keyrotate's command lines need it: positionals and --opts."""
    positional: list[str] = []
    opts: dict[str, Any] = {}
    it = iter(args)
    for arg in it:
        key = arg[2:] if arg.startswith("--") else None
        if key is None:
            positional.append(arg)
        elif key in flags:
            opts[key] = True
        elif key in valued:
            value = next(it, None)
            if value is None:
                raise UserError(f"Not enough arguments following: {key}")
            opts[key] = value
        else:
            raise UserError(f"fake wrangler: unsupported option {arg!r}")
    return positional, opts


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["--version"]:
            say("4.86.0")
            return 0
        words = argv[:2]
        rest = argv[2:] if words and words[0] in ("secret", "deployments", "versions") else argv[1:]
        if words[:1] == ["secret"] and words[1:] == ["put"]:
            key, o = _options(rest, set(), {"name"})
            secret_put(Api(), _one(key), _need(o, "name"))
        elif words == ["secret", "bulk"]:
            _, o = _options(rest, set(), {"name"})
            secret_bulk(Api(), _need(o, "name"))
        elif words == ["secret", "delete"]:
            key, o = _options(rest, set(), {"name"})
            secret_delete(Api(), _one(key), _need(o, "name"))
        elif words == ["secret", "list"]:
            _, o = _options(rest, set(), {"name", "format"})
            if o.get("format", "json") != "json":
                raise UserError("fake wrangler: only `--format json` is modelled")
            secret_list(Api(), _need(o, "name"))
        elif words[:1] == ["deploy"]:
            _, o = _options(rest, set(), {"env"})
            deploy(Api(), o.get("env"))
        elif words == ["deployments", "list"]:
            _, o = _options(rest, {"json"}, {"name"})
            _need(o, "json")
            deployments_list(Api(), _need(o, "name"))
        elif words == ["versions", "list"]:
            _, o = _options(rest, {"json"}, {"name"})
            _need(o, "json")
            versions_list(Api(), _need(o, "name"))
        elif words == ["versions", "deploy"]:
            specs, o = _options(rest, {"yes"}, {"name", "message"})
            _need(o, "yes")
            versions_deploy(Api(), specs, _need(o, "name"), o.get("message"))
        elif words[:1] == ["rollback"]:
            vid, o = _options(rest, {"yes"}, {"name", "message"})
            _need(o, "yes")
            rollback(Api(), _one(vid), _need(o, "name"), o.get("message"))
        else:
            raise UserError(f"fake wrangler: command not modelled: {' '.join(argv[:3])!r}; "
                            "use the real wrangler (@pytest.mark.real_wrangler)")
    except (UserError, APIError, NetworkError) as e:
        title, *body = str(e).splitlines()
        PROC.err.write(f"✘ [ERROR] {title}\n\n" + "".join(f"  {line}\n" for line in body) + "\n")
        return 1
    return 0


def _one(positional: list[str]) -> str:
    if len(positional) != 1:
        raise UserError(f"fake wrangler: expected one positional argument, got {positional}")
    return positional[0]


def _need(opts: dict[str, Any], key: str) -> Any:
    if key not in opts:
        raise UserError(f"fake wrangler: needs --{key} (keyrotate always passes it)")
    return opts[key]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
