"""A terminal progress bar (rows/s, ETA) on stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm

from keyrotate.progress import NoProgress, Progress


class TqdmProgress:
    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def start(self, total: int) -> None:

        self.bar = tqdm(total=total, desc=self.label, unit="rows", unit_scale=True,
                        file=sys.stderr, dynamic_ncols=True, leave=False)

    def advance(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.update(rows)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_for(label: str) -> Progress:
    return TqdmProgress(label) if sys.stderr.isatty() else NoProgress()
