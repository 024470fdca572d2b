"""Writing files that hold secrets: mode 0600 from the first byte, replaced atomically."""

from __future__ import annotations

import os
import tempfile


def atomic_write_secret(path: str, text: str) -> None:
    """Replace `path` with `text`: temp file (0600) in the same folder, fsync, rename, fsync dir.

    A crash leaves either the old file or the new one, never a torn or world-readable one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".keyrotate-", suffix=".tmp", dir=folder)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
