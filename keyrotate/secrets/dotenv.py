"""A .env file: lines NAME=value, comments and blank lines kept exactly as they are.

Parsing follows what wrangler's and python-dotenv's users write: optional `export `,
single quotes (literal), double quotes (with \\n, \\", \\\\ escapes), unquoted values with
a trailing ` # comment` removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from keyrotate.errors import SecretStoreError

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*?)\s*$")
_DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class DotenvLine:
    raw: str            # the line as in the file, without its newline
    name: str | None    # None for comments, blank and unparsable lines
    value: str | None


def _unquote(raw: str, where: str) -> str:
    if raw.startswith("'"):
        if len(raw) < 2 or not raw.endswith("'"):
            raise SecretStoreError(f"{where}: unterminated single quote")
        return raw[1:-1]
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise SecretStoreError(f"{where}: unterminated double quote")
        body, out, i = raw[1:-1], [], 0
        while i < len(body):
            ch = body[i]
            if ch == "\\" and i + 1 < len(body):
                out.append(_DQ_ESCAPES.get(body[i + 1], "\\" + body[i + 1]))
                i += 2
            else:
                out.append(ch)
                i += 1
        return "".join(out)
    return re.split(r"\s+#", raw, maxsplit=1)[0].rstrip()


def parse_lines(text: str, source: str) -> list[DotenvLine]:
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            lines.append(DotenvLine(raw, None, None))
            continue
        m = _LINE.match(raw)
        if not m:
            raise SecretStoreError(f"{source} line {n} is not NAME=value")
        lines.append(DotenvLine(raw, m.group(1), _unquote(m.group(2), f"{source} line {n}")))
    return lines


def read_dotenv(path: str) -> dict[str, str]:
    """NAME -> value; the last assignment of a name wins, as in a shell."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretStoreError(f"dotenv file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SecretStoreError(f"cannot read dotenv file {path}: {type(e).__name__}") from None
    return {ln.name: ln.value for ln in parse_lines(text, path)
            if ln.name is not None and ln.value is not None}


def add_new_entry(path: str, name: str, value: str) -> None:
    """Add NAME=value to a .env file (created 0600 if missing), every other byte unchanged.

    Refuses if NAME is already set: replacing a key is a rotation, not a keygen.
    """
    from keyrotate.secrets.files import atomic_write_secret

    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.exists() else ""
    if any(ln.name == name for ln in parse_lines(text, path)):
        raise SecretStoreError(f"dotenv:{path}#{name} is already set; refusing to overwrite a key")
    if text and not text.endswith("\n"):
        text += "\n"
    atomic_write_secret(path, text + f"{name}={quote_value(value)}\n")


def quote_value(value: str) -> str:
    """Unquoted when safe (base64 and hex keys are), else double-quoted with escapes."""
    if re.fullmatch(r"[A-Za-z0-9+/=_.:@-]*", value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
