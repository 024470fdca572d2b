"""D1 API requests for keyrotate's commands over d1://, against the test suite's
Cloudflare API stand-in (real SQLite behind D1's REST rules; the test suite's wrangler
for the pushes, or with --real-wrangler wrangler 4.86 itself; no network here). Requests
are counted where the API answers them, so nothing keyrotate does is left out.

    .venv/bin/python scripts/bench_d1.py --rows 50,10000,50000

Per size, each on a fresh copy of the reference database (keyrotate's own tables are
created on the way, as on a first run):
- rotate: `keyrotate rotate MASTER_KEY` with overlap (stage, push, validate, reencrypt,
  verify): D1 query requests, census included; D1 Time Travel reads (the restore point)
  are counted apart
- finish: its `--finish`; rotate_again: the next rotation on the same database (its
  tables there, keyrotate 0.1's table gone: what every rotation after the first costs)
- reencrypt: the data-plane command alone, ending with its census
- rerun: the same reencrypt again with nothing left to do, and how many of its requests
  wrote anything (none should)
- tokens_3kb (--tokens-kb 3): reencrypt over values of about 3 KB
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keyrotate.demo.build import token_payload  # noqa: E402
from keyrotate.secrets.keygen import generate  # noqa: E402
from tests.support.cloudflare_project import (  # noqa: E402
    api_env,
    build_project,
    edit_manifest,
    with_overlap,
)
from tests.support.helpers import OLD_SECRET, last_json, run_cli  # noqa: E402

REAL_WRANGLER = False   # --real-wrangler: pushes through wrangler 4.86 (no D1 request differs)
WRITES = tuple(f'"sql":{sp}"{verb}'.encode() for sp in ("", " ")
               for verb in ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER"))


class Project:
    """A fresh project over d1://acct/staging in its own folder."""

    def __init__(self, workdir: Path, name: str, rows: int, value_bytes: int = 0):
        self.root = workdir / name
        self.root.mkdir()
        payload = token_payload
        if value_bytes:   # the envelope adds about a third (base64) and 100 bytes of fields
            payload = lambda i: token_payload(i).ljust(int(value_bytes * 0.75) - 80, b" ")  # noqa: E731
        self.cf, self.health, self.store = build_project(self.root, rows, payload, REAL_WRANGLER)
        edit_manifest(self.root, 'database = "file:staging.db"', 'database = "d1://acct/staging"')
        with_overlap(self.root)
        os.environ.update(api_env(self.cf, self.root / "wrangler-logs"), KR_OLD=OLD_SECRET,
                          KR_NEW=generate("hex"))
        os.chdir(self.root)

    def run(self, *args: str) -> dict:
        since, queries, gets = len(self.cf.log), self.cf.d1_requests, self._gets()
        res = run_cli(*args, "--json")
        if res.exit_code != 0:
            raise SystemExit(f"{args} exited {res.exit_code}: {res.output[-2000:]}")
        d1 = [body for _, path, body in self.cf.log[since:] if path.endswith("/query")]
        return {"requests": self.cf.d1_requests - queries, "time_travel_reads": self._gets() - gets,
                "writing_requests": sum(1 for b in d1 if any(w in b for w in WRITES)),
                "result": last_json(res.output)}

    def _gets(self) -> int:
        return sum(1 for m, path, _ in self.cf.log if m == "GET" and "/d1/database/" in path)

    def close(self) -> None:
        os.chdir(ROOT)
        self.cf.stop()
        self.health.stop()


def per_10k(n: int, rows: int) -> float:
    return round(n * 10_000 / rows, 1)


def reencrypt_args() -> list[str]:
    return ["reencrypt", "--db", "d1://acct/staging", "--target", "accounts.encrypted_tokens",
            "--old-key", "env:KR_OLD", "--new-key", "env:KR_NEW"]


def one(rows: int, workdir: Path, tokens_kb: int) -> dict:
    out: dict = {"rows": rows}
    p = Project(workdir, f"rotate-{rows}", rows)
    try:
        r = p.run("rotate", "MASTER_KEY", "--env", "staging")
        assert r["result"]["state"] == "awaiting-finish", r["result"]
        out["rotate"] = {"requests": r["requests"], "per_10k_rows": per_10k(r["requests"], rows),
                         "time_travel_reads": r["time_travel_reads"]}
        f = p.run("rotate", "MASTER_KEY", "--env", "staging", "--finish")
        assert f["result"]["state"] == "finished", f["result"]
        out["finish"] = {"requests": f["requests"]}
        again = p.run("rotate", "MASTER_KEY", "--env", "staging")
        assert again["result"]["state"] == "awaiting-finish", again["result"]
        out["rotate_again"] = {"requests": again["requests"],
                               "per_10k_rows": per_10k(again["requests"], rows)}
    finally:
        p.close()
    p = Project(workdir, f"reencrypt-{rows}", rows)
    try:
        first = p.run(*reencrypt_args())
        assert first["result"]["status"] == "completed", first["result"]
        again = p.run(*reencrypt_args())
        assert again["result"]["status"] == "completed", again["result"]
        out["reencrypt"] = {"requests": first["requests"],
                            "per_10k_rows": per_10k(first["requests"], rows)}
        out["rerun"] = {"requests": again["requests"], "per_10k_rows": per_10k(again["requests"], rows),
                        "writing_requests": again["writing_requests"]}
    finally:
        p.close()
    if tokens_kb:
        p = Project(workdir, f"tokens-{rows}", rows, tokens_kb * 1000)
        try:
            heavy = p.run(*reencrypt_args())
            assert heavy["result"]["status"] == "completed", heavy["result"]
            out[f"tokens_{tokens_kb}kb"] = {"requests": heavy["requests"],
                                            "per_10k_rows": per_10k(heavy["requests"], rows)}
        finally:
            p.close()
    print(json.dumps(out), file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="50,10000,50000")
    ap.add_argument("--tokens-kb", type=int, default=3, help="0: skip the heavy-value run")
    ap.add_argument("--real-wrangler", action="store_true",
                    help="push with the real wrangler instead of the test suite's fake")
    args = ap.parse_args()
    global REAL_WRANGLER
    REAL_WRANGLER = args.real_wrangler
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps([one(int(n), Path(tmp), args.tokens_kb) for n in args.rows.split(",")],
                         indent=2))


if __name__ == "__main__":
    main()
