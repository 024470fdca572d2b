"""Secret names: what a Worker secret, an environment variable and a .env entry can all
be called. Checked strictly everywhere a name is taken, because a loose name is
dangerous: `MASTER_KEY ` or `export MASTER_KEY` would add an entry a .env reader then
takes as MASTER_KEY, and `BAD NAME` would make the whole file unreadable."""

from __future__ import annotations

import re

from keyrotate.errors import ConfigError

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RULE = "letters, digits and _, not starting with a digit"


def check_name(name: str, where: str) -> str:
    """The name, or ConfigError. The bad name is not echoed: it may be a pasted key."""
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}: the secret name must be {RULE} "
                          f"({'it is empty' if not name else 'it is not'})")
    return name
