"""Durable Object rewrap speed against local workerd (wrangler dev): objects per second
(the whole `objects rewrap` command: the pass and the census that proves it), Worker
requests per 1,000 objects and keyrotate's peak RSS, at each size, for a few
--concurrency values, --repeats times each (every run rotates to a fresh key, so it
rewraps every object; medians are reported). The Worker is the test suite's
(examples/durable-objects plus hooks); tokens are sealed by its own WebCrypto code.

    .venv/bin/python scripts/bench_objects.py --objects 2000 --concurrency 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Callable

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.objects_app import OLD_HEX, TOKEN, ObjectsApp, ObjectsWorker  # noqa: E402

NEW_HEX = "9f2c1e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa00112233"


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, float]:
    proc = psutil.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"keyrotate failed ({proc.returncode}): {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1]), peak / 1e6


def one(n: int, concurrencies: list[int], repeats: int = 1, batch: int = 50) -> list[dict]:
    runs = []
    with tempfile.TemporaryDirectory() as top:
        tmp = Path(top) / "app"
        tmp.mkdir()
        worker = ObjectsWorker(Path(top) / "worker")
        app = ObjectsApp(worker, tmp, n)
        try:
            app.serve(MASTER_KEY=OLD_HEX, KEYROTATE_OBJECTS_TOKEN=TOKEN)
            t = time.perf_counter()
            _seed(app)
            seeded = time.perf_counter() - t
            env = dict(os.environ, PYTHONPATH=str(ROOT), **app.env())
            subprocess.run([sys.executable, "-m", "keyrotate.cli", "migrations", "apply", "--env",
                            "staging"], env=env, cwd=tmp, check=True, capture_output=True)
            app.store.write_pending("MASTER_KEY", NEW_HEX)
            app.serve(MASTER_KEY=NEW_HEX, MASTER_KEY_PREVIOUS=OLD_HEX, KEYROTATE_OBJECTS_TOKEN=TOKEN)
            order = [c for _ in range(repeats) for c in concurrencies]
            chain = [NEW_HEX] + [secrets.token_hex(32) for _ in order]
            for i, c in enumerate(order):
                if i:  # each run rotates to a fresh key, so it rewraps every object
                    _swap(app, chain[i - 1], chain[i])
                result, peak = _run([sys.executable, "-m", "keyrotate.cli", "objects", "rewrap",
                                     "--env", "staging", "--target", "AccountDO", "--concurrency",
                                     str(c), "--batch", str(batch), "--json"], env, Path(tmp))
                assert result["objects_rewrapped"] == n, result
                assert result["status"] == "completed" and result["census"]["current"] == n, result
                time.sleep(IDLE)
                runs.append({"objects": n, "concurrency": c, "batch": batch,
                             "seconds": result["seconds"],
                             "objects_per_second": round(n / result["seconds"]),
                             "requests": result["requests"],
                             "requests_per_1000": round(result["requests"] * 1000 / n, 1),
                             "peak_rss_mb": round(peak, 1), "seed_seconds": round(seeded, 1)})
                print(json.dumps(runs[-1]), file=sys.stderr)
        finally:
            app.close()
            worker.stop()
    return [_median(n, c, [r for r in runs if r["concurrency"] == c]) for c in concurrencies]


def _median(n: int, c: int, runs: list[dict]) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    requests = statistics.median(r["requests"] for r in runs)
    return {"objects": n, "concurrency": c, "runs": len(runs), "median_seconds": seconds,
            "objects_per_second": round(n / seconds),
            "objects_per_second_runs": [r["objects_per_second"] for r in runs],
            "requests": requests, "requests_per_1000": round(requests * 1000 / n, 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


# Local workerd keeps each live Durable Object's SQLite files open (3 descriptors) and
# evicts an object about 10 s after its last use; this machine's hard limit is 20,000
# descriptors. So objects are seeded 4,000 at a time, letting each batch go idle first.
SEED_CHUNK, IDLE = 2_000, 12.0


def _seed(app: ObjectsApp) -> None:
    for i in range(0, len(app.ids), SEED_CHUNK):
        if i:
            time.sleep(IDLE)
        failed = {k: v for k, v in _again_if_restarted(
            lambda: app.each("/test/seed", app.ids[i:i + SEED_CHUNK], size=200)).items() if v}
        if failed:
            raise SystemExit(f"seeding failed for {len(failed)} objects: {next(iter(failed.values()))}")
    time.sleep(IDLE)


def _again_if_restarted(seed: Callable[[], dict]) -> dict:
    """wrangler dev reloads the Worker once it fails to fetch the `Request.cf` object (no
    network here), sometimes in the middle of the seeding: it answers 503 "Your worker
    restarted mid-request". Seeding is idempotent: send it again."""
    for _ in range(30):
        try:
            return seed()
        except urllib.error.HTTPError as e:
            if e.code != 503:
                raise
            time.sleep(2)
    return seed()


def _swap(app: ObjectsApp, old: str, new: str) -> None:
    """The store and the Worker move to the next rotation: current=old, pending=new."""
    from keyrotate.secrets.dotenv import DotenvStore

    path = app.store.path
    audit = app.store.read("KEYROTATE_AUDIT_KEY")   # the trail's key stays (issue 21)
    Path(path).unlink()
    store = DotenvStore(path)
    kept = [("KEYROTATE_AUDIT_KEY", audit)] if audit else []
    for name, value in (("MASTER_KEY", old), ("KEYROTATE_OBJECTS_TOKEN", TOKEN), *kept):
        store.write_pending(name, value)
        store.promote(name)
    store.write_pending("MASTER_KEY", new)
    app.store = store
    app.serve(MASTER_KEY=new, MASTER_KEY_PREVIOUS=old, KEYROTATE_OBJECTS_TOKEN=TOKEN)
    time.sleep(IDLE)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", default="2000,10000")
    ap.add_argument("--concurrency", default="4,8")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=50,
                    help="ids per request (keyrotate's default 50: a Worker on the free plan "
                         "may make 50 subrequests per invocation)")
    args = ap.parse_args()
    results = [r for n in args.objects.split(",")
               for r in one(int(n), [int(c) for c in args.concurrency.split(",")], args.repeats,
                            args.batch)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
