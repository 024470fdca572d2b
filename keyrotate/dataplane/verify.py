"""The census: how many rows open under the key, under the old key, are NULL, or fail.

Reads only. Opens the payload too, not just the DEK: a row is only 'ok' if a Worker
holding the key could actually read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from keyrotate.crypto.codecs import Codec
from keyrotate.dataplane.workers import CryptoRunner, PageResult, default_workers
from keyrotate.errors import EXIT_FAILURES, Interrupted
from keyrotate.dataplane.progress import NoProgress, Progress
from keyrotate.dataplane.pipeline import page_results, page_size
from keyrotate.db.base import RowStore, Target, count_after

LISTED = 100


@dataclass
class Census:
    target: str
    rows: int = 0
    ok: int = 0
    old: int = 0
    null: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    key_kid: str = ""
    old_kid: str | None = None

    @property
    def clean(self) -> bool:
        """Nothing depends on the old key and nothing is broken."""
        return self.failed == 0 and self.old == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else EXIT_FAILURES

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": self.rows, "ok": self.ok, "old": self.old,
                "null": self.null, "failed": self.failed, "clean": self.clean,
                "seconds": round(self.seconds, 3), "kid": self.key_kid,
                "old_kid": self.old_kid, "failures": self.failures}

    def tally(self, page: PageResult) -> None:
        self.rows += page.rows
        self.null += page.null
        self.ok += page.ok
        self.old += page.old
        self.failed += len(page.failures)
        for key, reason in page.failures[:LISTED - len(self.failures)]:
            self.failures.append({"id": str(key), "reason": reason})


def verify(store: RowStore, target: Target, codec: Codec, batch_size: int | None = None,
           workers: int | None = None, progress: Progress | None = None) -> Census:
    started = time.monotonic()
    census = Census(target.name, key_kid=codec.new_kid, old_kid=codec.old_kid)
    total = count_after(store, target, None, True)
    progress = progress or NoProgress()
    progress.start(total)
    runner = CryptoRunner(codec, "census", workers if workers is not None else default_workers(total))
    try:
        for page in page_results(store, target, runner, page_size(store, batch_size)):
            census.tally(page)
            progress.advance(page.rows)
    except KeyboardInterrupt:
        runner.close(cancel=True)
        raise Interrupted("verify interrupted; nothing was written") from None
    finally:
        runner.close()
        progress.close()
    census.seconds = time.monotonic() - started
    return census
