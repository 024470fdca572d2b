"""Side-by-side benchmark: keyrotate reencrypt vs the naive in-memory loop, as whole processes.

Builds one reference database per size, copies it for every run, and alternates the
contenders so machine noise hits both alike. Reports medians and ratios, never absolute
claims: the machines here are shared and noisy.

    .venv/bin/python scripts/bench.py --rows 300000,1000000 --repeats 3

Figures:
- rewrap ratio: naive seconds / keyrotate seconds (> 1 means keyrotate is faster). keyrotate
  ends with a census of the whole table, which the naive loop does not: the proven ratio
  compares with the naive loop followed by a check that opens every row again
  (naive_verified), and the census seconds are reported. keyrotate's census reads every
  row again, with its rowid witness (dataplane/verify.py), and opens those whose value
  its pass did not verify (dataplane/vouch.py)
- rewrap-phase ratio: naive seconds / (keyrotate seconds - its census seconds)
- fresh-dek ratio: naive rewrap seconds / keyrotate fresh-dek seconds
- journal overhead: keyrotate seconds / keyrotate-without-checkpoints seconds
- opens_all: keyrotate whose census opens every row again (no row taken on the pass's
  word, dataplane/vouch.py), its time over keyrotate's and its census share
- peak RSS: largest single process (wait4 maxrss) and the whole process tree (sampled)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keyrotate.demo.build import build_reference_db  # noqa: E402
from keyrotate.files import atomic_write_secret  # noqa: E402
from keyrotate.secrets.dotenv import read_dotenv  # noqa: E402
from keyrotate.secrets.keygen import generate  # noqa: E402

PY = sys.executable
TARGET = "accounts.encrypted_tokens"


def run_process(argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds, max RSS of the largest process, peak RSS of the whole tree (MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree = peak_one = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree, peak_one
        try:
            p = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    sizes = [c.memory_info().rss for c in [p] + p.children(recursive=True)]
                    peak_tree = max(peak_tree, sum(sizes))
                    peak_one = max(peak_one, max(sizes))
                except psutil.Error:
                    pass
                stop.wait(0.02)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode not in (0,):
        raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {err.decode()[-2000:]}")
    return {"seconds": seconds, "tree_mb": peak_tree / 2**20, "one_mb": peak_one / 2**20,
            "stdout": out.decode()}


def keyrotate_argv(db: Path, mode: str = "rewrap") -> list[str]:
    return [PY, "-m", "keyrotate.cli", "reencrypt", "--db", f"file:{db}", "--target", TARGET,
            "--old-key", "env:KR_OLD", "--new-key", "env:KR_NEW", "--mode", mode, "--json"]


NO_JOURNAL = """
import sys
from keyrotate.dataplane.journal import Journal
Journal.checkpoint = staticmethod(lambda run, delta, seconds, last_key, failures: [])
from keyrotate.cli import main
sys.argv = ["keyrotate"] + sys.argv[1:]
main()
"""


OPENS_ALL = """
import sys
import keyrotate.dataplane.reencrypt as r
r.Vouched = lambda offset: None   # the census opens every row again (as before issue 22's vouch)
from keyrotate.cli import main
sys.argv = ["keyrotate"] + sys.argv[1:]
main()
"""
CONTENDERS = ("keyrotate", "naive", "naive_verified", "fresh_dek", "no_journal", "opens_all")


def bench_size(rows: int, repeats: int, workdir: Path, env: dict[str, str],
               only: tuple[str, ...] = CONTENDERS) -> dict:
    master = workdir / f"ref-{rows}.db"
    if not master.exists():
        t = time.perf_counter()
        build_reference_db(str(master), rows, env["KR_OLD"])
        print(f"built {rows:,} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    contenders = {
        "keyrotate": lambda db: keyrotate_argv(db),
        "naive": lambda db: [PY, str(ROOT / "scripts" / "naive_rewrap.py"), str(db)],
        "naive_verified": lambda db: [PY, str(ROOT / "scripts" / "naive_rewrap.py"), str(db),
                                      "rewrap", "--verify"],
        "fresh_dek": lambda db: keyrotate_argv(db, "fresh-dek"),
        "no_journal": lambda db: [PY, "-c", NO_JOURNAL] + keyrotate_argv(db)[3:],
        "opens_all": lambda db: [PY, "-c", OPENS_ALL] + keyrotate_argv(db)[3:],
    }
    contenders = {k: v for k, v in contenders.items() if k in only}
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for rep in range(repeats):
        order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
        for name in order:
            db = workdir / f"run-{rows}.db"
            shutil.copy(master, db)
            res = run_process(contenders[name](db), env)
            runs[name].append(res)
            print(f"  {rows:,} {name:<10} {res['seconds']:7.2f} s  largest process "
                  f"{res['one_mb']:6.1f} MB  tree {res['tree_mb']:6.1f} MB",
                  file=sys.stderr)
            db.unlink()
    med = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    out: dict = {"rows": rows, "median_seconds": {k: round(v, 3) for k, v in med.items()},
                 "seconds": {k: [round(r["seconds"], 3) for r in rs] for k, rs in runs.items()}}

    def ratios(num: str, den: str) -> list[float]:
        return [n["seconds"] / k["seconds"] for n, k in zip(runs[num], runs[den], strict=True)]

    def put(name: str, values: list[float]) -> None:
        out[f"{name}_median"] = round(statistics.median(values), 3)
        out[name] = [round(v, 3) for v in values]

    k = runs["keyrotate"]
    census = _census_seconds(k)
    put("census_seconds", census)
    put("census_share", [c / r["seconds"] for c, r in zip(census, k, strict=True)])
    out["census_vouched"] = [_census(r)["vouched"] for r in k]
    if "naive" in runs:
        put("rewrap_ratio", ratios("naive", "keyrotate"))
        put("rewrap_phase_ratio", [n["seconds"] / (r["seconds"] - c) for n, r, c
                                   in zip(runs["naive"], k, census, strict=True)])
        out["keyrotate_rows_per_second"] = round(rows / med["keyrotate"])
        out["naive_rows_per_second"] = round(rows / med["naive"])
    if "naive_verified" in runs:
        put("proven_ratio", ratios("naive_verified", "keyrotate"))
    if "opens_all" in runs:
        put("opens_all_over_keyrotate", ratios("opens_all", "keyrotate"))
        put("opens_all_census_share", [c / r["seconds"] for c, r in zip(
            _census_seconds(runs["opens_all"]), runs["opens_all"], strict=True)])
    if "fresh_dek" in runs and "naive" in runs:
        out["fresh_dek_ratio_vs_naive_rewrap"] = round(med["naive"] / med["fresh_dek"], 3)
    if "no_journal" in runs:
        out["journal_overhead"] = round(med["keyrotate"] / med["no_journal"], 3)
    out["peak_tree_mb"] = {k: round(max(r["tree_mb"] for r in rs), 1) for k, rs in runs.items()}
    out["peak_process_mb"] = {k: round(max(r["one_mb"] for r in rs), 1) for k, rs in runs.items()}
    return out


def _census(run: dict) -> dict:
    return json.loads(run["stdout"].strip().splitlines()[-1])["census"]  # type: ignore[no-any-return]


def _census_seconds(runs: list[dict]) -> list[float]:
    return [_census(r)["seconds"] for r in runs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="300000,1000000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="keep databases here (default: a temp dir)")
    ap.add_argument("--only", default=",".join(CONTENDERS),
                    help="contenders to run, comma-separated (keyrotate always runs)")
    args = ap.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="keyrotate-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys.env"  # databases kept in workdir are sealed under these (0600)
    if not keys.exists():
        atomic_write_secret(str(keys), f"KR_OLD={generate('base64')}\nKR_NEW={generate('hex')}\n")
    env = dict(os.environ, **read_dotenv(str(keys)), PYTHONPATH=str(ROOT))
    load_before = os.getloadavg()   # the machine is shared: how busy it was, around the run
    only = tuple({"keyrotate", *args.only.split(",")})
    results = [bench_size(int(n), args.repeats, workdir, env, only) for n in args.rows.split(",")]
    print(json.dumps({"machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
                                  "load_average_after": os.getloadavg()},
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
