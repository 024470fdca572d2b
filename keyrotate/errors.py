"""The one exception hierarchy of keyrotate.

Every error a user can cause or meet derives from KeyrotateError and carries an exit code,
so the CLI can print one clear line instead of a traceback. Messages never contain key
material: they name references, tables and row ids, never values.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
RUN_AGAIN = "this may be temporary: run the same command again (it resumes)"


class KeyrotateError(Exception):
    """Root of every keyrotate error."""

    exit_code = EXIT_USAGE


class Resumable(KeyrotateError):
    """Mixed into errors that may pass later (busy, unreachable): exit 3, and the
    message says to run the same command again."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str):
        super().__init__(f"{message}; {RUN_AGAIN}")


class ConfigError(KeyrotateError):
    """Bad arguments, references, URLs or configuration (exit 2)."""


class SecretStoreError(KeyrotateError):
    """A secret reference could not be read or written (exit 2)."""


class InvalidEnvelope(KeyrotateError):
    """A stored value is malformed or opens under none of the keys tried.

    Raised for hostile or corrupt data, never for programmer errors (those are
    ValueError / TypeError). `reason` is a short, value-free explanation.
    """

    exit_code = EXIT_FAILURES

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StoreError(KeyrotateError):
    """The database could not be opened, read or written."""


class StoreUnavailable(Resumable, StoreError):
    """The database is busy, full or unreachable for now: resumable (exit 3)."""


class SecretStoreUnavailable(Resumable, SecretStoreError):
    """The secret store is unreachable or sealed for now: resumable (exit 3)."""


class EndpointError(KeyrotateError):
    """A Worker endpoint refused or misanswered (exit 2): names the endpoint, never the token."""


class EndpointUnavailable(Resumable, EndpointError):
    """A Worker endpoint kept failing (429, 5xx, dropped): resumable (exit 3)."""


class DeployError(KeyrotateError):
    """A wrangler or Cloudflare operation failed."""

    exit_code = EXIT_FAILURES


class DeployUnavailable(Resumable, DeployError):
    """Cloudflare kept failing (5xx, rate limits, dropped connections) or a wrangler call
    was cut short: the change may or may not have been applied; resumable (exit 3)."""


class WorkerLost(Resumable):
    """A crypto worker process died mid-run (killed, out of memory): the pages it held were
    never written, and the run resumes from its last checkpoint (exit 3)."""

    def __init__(self) -> None:
        super().__init__("a crypto worker process died (killed by a signal, or out of "
                         "memory); nothing it held was written")


class Interrupted(KeyrotateError):
    """The work stopped before finishing; running the same command again resumes it."""

    exit_code = EXIT_INCOMPLETE


class Failures(KeyrotateError):
    """Work that cannot pass while some rows are broken (listed by id): exit 1. Fix or
    remove those rows, then run the same command again."""

    exit_code = EXIT_FAILURES


class Incomplete(KeyrotateError):
    """A resumable operation stopped at a step that cannot pass yet (a failed health
    check, rows still under the old key); running the same command again resumes it."""

    exit_code = EXIT_INCOMPLETE
