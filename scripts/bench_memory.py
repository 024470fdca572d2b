"""Peak memory of `keyrotate reencrypt` on heavy rows: the whole process tree, sampled.

Builds a reference database of N rows whose payloads are M bytes each (5 MB makes each
stored envelope about 6.7 MB of base64), then runs keyrotate as a whole process with
`--workers W` in both modes and prints the peak RSS of the largest process and of the
tree (main process, crypto workers), summed at each sample.

    .venv/bin/python scripts/bench_memory.py --rows 40 --payload-mb 5 --workers 2

The README's bound ("Speed and memory") is checked by tests/dataplane/
test_done_means_done_round2.py::test_heavy_rows_keep_the_process_tree_under_250_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import PY, TARGET, run_process  # noqa: E402

from keyrotate.demo.build import build_reference_db, token_payload  # noqa: E402

OLD = "q3Jt1vQ0o5mYgJt4l8cQk1m4mR9W1yq8b9N2q2y3H0U="
NEW = "9f2c1e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa00112233"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--payload-mb", type=float, default=5.0)
    ap.add_argument("--workers", default="2")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    size = int(args.payload_mb * 1_000_000)
    env = dict(os.environ, KR_OLD=OLD, KR_NEW=NEW, KR_THIRD="ab" * 32, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        master = Path(tmp) / "heavy.db"
        build_reference_db(str(master), args.rows, OLD,
                           payload=lambda i: token_payload(i).ljust(size, b" "))
        results = []
        for repeat in range(args.repeats):
            for mode, old, new in (("rewrap", "env:KR_OLD", "env:KR_NEW"),
                                   ("fresh-dek", "env:KR_OLD", "env:KR_THIRD")):
                db = Path(tmp) / f"run-{repeat}-{mode}.db"
                shutil.copy(master, db)
                argv = [PY, "-m", "keyrotate.cli", "reencrypt", "--db", f"file:{db}", "--target",
                        TARGET, "--old-key", old, "--new-key", new, "--mode", mode,
                        "--workers", args.workers, "--json"]
                r = run_process(argv, env)
                results.append({"mode": mode, "tree_mb": round(r["tree_mb"], 1),
                                "largest_process_mb": round(r["one_mb"], 1),
                                "seconds": round(r["seconds"], 2)})
                print(json.dumps(results[-1]), file=sys.stderr)
                db.unlink()
        print(json.dumps({"rows": args.rows, "payload_mb": args.payload_mb,
                          "workers": args.workers, "runs": results,
                          "peak_tree_mb": max(r["tree_mb"] for r in results)}))


if __name__ == "__main__":
    main()
