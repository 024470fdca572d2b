"""Writing files that hold secrets: never readable by others while written, replaced
atomically.

A new file is 0600 from its first byte. An existing file keeps its mode and group (an
operator may have given a .env to a group on purpose), and a symlink is followed: the
file it points to is replaced, the link stays.

A public file (metrics for node_exporter) is different: it is 0644 whatever was there,
and a symlink at its path is replaced by the file, never followed (a link planted there
must not make keyrotate overwrite the file it points to).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from contextlib import contextmanager
from typing import Iterator, TextIO

from keyrotate.errors import ConfigError, KeyrotateError, SecretStoreError, SecretStoreUnavailable

log = logging.getLogger("keyrotate.files")


def atomic_write_secret(path: str, text: str) -> None:
    """Replace `path` with `text`: temp file (0600) in the same folder, fsync, rename, fsync dir.

    A crash leaves either the old file or the new one, never a torn or world-readable one.
    """
    _atomic_write(path, text, 0o600, SecretStoreError)


def atomic_write_public(path: str, text: str) -> None:
    """The same for a file with nothing secret that other users read (a metrics file for
    node_exporter's textfile collector): always 0644, a reader never sees it half written,
    and a symlink at `path` is replaced, not followed."""
    _atomic_write(path, text, 0o644, ConfigError, public=True)


def _atomic_write(path: str, text: str, new_mode: int, error: type[KeyrotateError],
                  public: bool = False) -> None:
    with atomic_file(path, new_mode, error, public) as fh:
        fh.write(text)


@contextmanager
def atomic_file(path: str, new_mode: int = 0o644, error: type[KeyrotateError] = ConfigError,
                public: bool = False) -> Iterator[TextIO]:
    """Write `path` as a stream (a list too long to hold in memory): into a temp file in
    the same folder, which replaces `path` only when the block ends without an error.
    The folder is checked before the block runs, so a long job never ends on a bad path."""
    # a secret file: through a symlink to the file it names; a public one: the path itself
    real = os.path.abspath(path) if public else os.path.realpath(path)
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise error(f"cannot write {path}: the folder {folder} does not exist")
    if public and os.path.isdir(real) and not os.path.islink(real):
        raise error(f"cannot write {path}: it is a folder")
    try:
        existing = None if public else os.stat(real)
    except FileNotFoundError:
        existing = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".keyrotate-", suffix=".tmp", dir=folder)  # 0600
    except OSError as e:
        raise error(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if existing is not None:
            _keep_mode_and_group(tmp, existing, path, warn=new_mode == 0o600)
        elif new_mode != 0o600:
            os.chmod(tmp, new_mode)
        os.replace(tmp, real)
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


def _keep_mode_and_group(tmp: str, existing: os.stat_result, path: str, warn: bool) -> None:
    mode = stat.S_IMODE(existing.st_mode)
    try:
        os.chown(tmp, -1, existing.st_gid)
    except PermissionError:
        pass  # not in that group: the file keeps ours, and its mode still applies
    os.chmod(tmp, mode)
    if warn and mode & stat.S_IROTH:
        log.warning("%s is readable by every user (mode %o); it holds secrets", path, mode)


@contextmanager
def changing(path: str) -> Iterator[None]:
    """One read-change-write of `path` at a time, across processes: an exclusive lock on
    its folder (an advisory flock, held until the block ends). The file itself cannot
    carry the lock: each write replaces it with a new one. Two keyrotate commands (a
    person's rotation and a schedule's, each appending to the trail and keeping its head
    in the store) otherwise read the same old file and the later write drops the
    earlier's change: a pending key, a promote."""
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        raise SecretStoreError(f"cannot write {path}: the folder {folder} does not exist")
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise SecretStoreError(f"cannot lock {path}: {e.strerror}") from None
    try:
        _wait_for_lock(fd, path)
        yield
    finally:
        os.close(fd)   # closing the last descriptor lets the lock go


LOCK_PATIENCE = 30.0   # seconds: a change holds the lock for milliseconds


def _wait_for_lock(fd: int, path: str) -> None:
    """The lock, tried again every 50 ms (a signal still stops the wait), said after a
    second, given up after LOCK_PATIENCE: a holder stopped (Ctrl-Z, SIGSTOP) must not
    hang every other command silently."""
    import fcntl  # POSIX only, like the flock it takes
    import time

    started = time.monotonic()
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as e:   # a file system without flock (some network mounts)
            raise SecretStoreError(f"cannot lock {path}: {e.strerror}") from None
        waited = time.monotonic() - started
        if waited >= LOCK_PATIENCE:
            raise SecretStoreUnavailable(f"{path} stayed locked by another keyrotate command for "
                                         f"{LOCK_PATIENCE:.0f} s (is one stopped?): run the same "
                                         "command again once it has finished")
        if waited >= 1.0 and not said:
            log.warning("waiting for another keyrotate command to finish changing %s", path)
            said = True
        time.sleep(0.05)
