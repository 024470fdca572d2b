"""API requests per 10,000 rows for a rotation over d1://, against the test suite's
Cloudflare API stand-in (real SQLite behind D1's REST rules; no network here).

    .venv/bin/python scripts/bench_d1.py --rows 10000,50000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keyrotate.dataplane.codec_refs import codec_from_refs  # noqa: E402
from keyrotate.dataplane.reencrypt import ReencryptOptions, reencrypt  # noqa: E402
from keyrotate.db.d1 import D1Store  # noqa: E402
from keyrotate.db.table_shape import resolve_target  # noqa: E402
from keyrotate.demo.build import build_reference_db  # noqa: E402
from keyrotate.secrets.keygen import generate  # noqa: E402
from tests.support.cf_api import CloudflareStandIn  # noqa: E402


def one(rows: int, workdir: Path) -> dict:
    db = workdir / f"d1-{rows}.db"
    os.environ["KR_OLD"], os.environ["KR_NEW"] = generate("base64"), generate("hex")
    build_reference_db(str(db), rows, os.environ["KR_OLD"])
    cf = CloudflareStandIn()
    try:
        os.environ["CLOUDFLARE_API_BASE_URL"] = cf.base_url
        os.environ["CLOUDFLARE_API_TOKEN"] = "bench"
        cf.d1["db"] = str(db)
        store = D1Store("d1://acct/db")
        codec = codec_from_refs("tminus-envelope", "env:KR_NEW", "env:KR_OLD")
        t = time.perf_counter()
        result = reencrypt(store, resolve_target(store, "accounts.encrypted_tokens", None), codec,
                           ReencryptOptions(workers=0))
        seconds = time.perf_counter() - t
        store.close()
    finally:
        cf.stop()
    return {"rows": rows, "requests": cf.d1_requests,
            "requests_per_10k_rows": round(cf.d1_requests * 10_000 / rows, 1),
            "rows_rewritten": result.counts.rows_rewritten, "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="10000,50000")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps([one(int(n), Path(tmp)) for n in args.rows.split(",")], indent=2))


if __name__ == "__main__":
    main()
