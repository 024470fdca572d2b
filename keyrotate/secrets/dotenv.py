"""A .env file: lines NAME=value, comments and blank lines kept exactly as they are.

Parsing follows what wrangler's and python-dotenv's users write: optional `export `,
single quotes (literal), double quotes (with \\n, \\", \\\\ escapes), unquoted values with
a trailing ` # comment` removed.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ContextManager

from keyrotate.errors import SecretStoreError
from keyrotate.secrets.base import (
    PENDING_SUFFIX,
    PREVIOUS_SUFFIX,
    SLOTS,
    Slot,
    StoredCopy,
    now_utc,
    pending_name,
    previous_name,
    same_value,
    slot_name,
)
from keyrotate.secrets.refs import required
from keyrotate.secrets.schemes import Scheme

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*?)\s*$")
_DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class DotenvLine:
    raw: str            # the line as in the file, without its newline
    name: str | None    # None for comments, blank and unparsable lines
    value: str | None


def _after_quote(rest: str, where: str) -> None:
    """After a closing quote: nothing, or a ` # comment`."""
    if rest.strip() and not re.match(r"\s+#", rest):
        raise SecretStoreError(f"{where}: text after the closing quote")


def _unquote(raw: str, where: str) -> str:
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0:
            raise SecretStoreError(f"{where}: unterminated single quote")
        _after_quote(raw[end + 1:], where)
        return raw[1:end]
    if raw.startswith('"'):
        out, i = [], 1
        while i < len(raw):
            ch = raw[i]
            if ch == "\\" and i + 1 < len(raw):
                out.append(_DQ_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
                i += 2
            elif ch == '"':
                _after_quote(raw[i + 1:], where)
                return "".join(out)
            else:
                out.append(ch)
                i += 1
        raise SecretStoreError(f"{where}: unterminated double quote")
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


class DotenvStore:
    """Secrets as lines of a .env file: NAME, NAME_PENDING, NAME_PREVIOUS.

    Every rewrite is atomic (temp file, fsync, rename, mode 0600) and leaves every other
    line and comment byte-identical. When a value becomes current, a comment line
    `# keyrotate: NAME set <ISO time>` above it records its age.
    """

    def __init__(self, path: str):
        self.path = path
        self.base = f"dotenv:{path}"

    def _changing(self) -> ContextManager[None]:
        """Each change reads the file and writes it whole: one at a time (files.changing)."""
        from keyrotate.files import changing

        return changing(self.path)

    def ref(self, name: str, slot: Slot = "current") -> str:
        return f"dotenv:{self.path}#{slot_name(name, slot)}"

    def _lines(self) -> list[DotenvLine]:
        p = Path(self.path)
        if not p.exists():
            return []
        try:
            return parse_lines(p.read_text(encoding="utf-8"), self.path)
        except (OSError, UnicodeDecodeError) as e:
            raise SecretStoreError(f"cannot read dotenv file {self.path}: {type(e).__name__}") from None

    def read(self, name: str, slot: Slot = "current") -> str | None:
        want = slot_name(name, slot)
        values = [ln.value for ln in self._lines() if ln.name == want]
        return values[-1] if values else None

    def write_pending(self, name: str, value: str) -> None:
        with self._changing():
            existing = self.read(name, "pending")
            if existing is not None and not hmac.compare_digest(existing.encode(), value.encode()):
                raise SecretStoreError(f"{self.ref(name, 'pending')} already holds a different "
                                       "pending value: finish or abort that rotation first")
            if existing is None:
                self._rewrite(self._lines(), {pending_name(name): value}, after=name)

    def promote(self, name: str) -> None:
        with self._changing():
            lines = self._lines()
            pending = self.read(name, "pending")
            if pending is None:
                raise SecretStoreError(f"nothing pending at {self.ref(name, 'pending')}")
            current = self.read(name)
            updates: dict[str, str | None] = {name: pending, pending_name(name): None}
            if current is not None:
                updates[previous_name(name)] = current
            self._rewrite(lines, updates, after=name, stamp=name)

    def discard_pending(self, name: str) -> None:
        with self._changing():
            if self.read(name, "pending") is not None:
                self._rewrite(self._lines(), {pending_name(name): None}, after=name)

    def write_new(self, name: str, value: str) -> None:
        """keygen --to: NAME=value (with its age stamp), the file created 0600 if missing,
        every other byte unchanged. Refuses if NAME is set: replacing a key is a rotation."""
        with self._changing():
            lines = self._lines()
            if any(ln.name == name for ln in lines):
                raise SecretStoreError(f"{self.ref(name)} is already set; refusing to overwrite "
                                       "a key")
            self._rewrite(lines, {name: value}, after=name, stamp=name)

    def write_state(self, name: str, value: str) -> None:
        """NAME=value replaced in place (added at the end if missing); no age stamp."""
        with self._changing():
            self._rewrite(self._lines(), {name: value}, after=name)

    def copies(self, name: str) -> list[StoredCopy]:
        """Every line holding a value of NAME, NAME_PENDING or NAME_PREVIOUS: a line
        shadowed by a later one of the same name is a copy too."""
        slots = {slot_name(name, slot): slot for slot in SLOTS}
        lines = [ln for ln in self._lines() if ln.name in slots and ln.value is not None]
        last = {ln.name: i for i, ln in enumerate(lines)}
        return [StoredCopy(f"dotenv:{self.path}#{ln.name}", slots[str(ln.name)]
                           + ("" if last[ln.name] == i else " (a line shadowed by a later one)"),
                           str(ln.value))
                for i, ln in enumerate(lines)]

    def destroy(self, name: str, value: str) -> list[str]:
        """Remove every NAME_PREVIOUS (or shadowed) line holding `value`; every other
        byte of the file stays. Refuses if it is the current or pending value."""
        with self._changing():
            for slot in ("current", "pending"):
                held = self.read(name, slot)
                if held is not None and same_value(held, value):
                    raise SecretStoreError(f"{self.ref(name, slot)} holds that value: it is in use")
            names = {slot_name(name, slot) for slot in SLOTS}
            lines = self._lines()
            gone = {i for i, ln in enumerate(lines) if ln.name in names and ln.value is not None
                    and same_value(ln.value, value)}
            if gone:
                self._write([ln.raw for i, ln in enumerate(lines) if i not in gone])
        return [f"dotenv:{self.path}#{lines[i].name}" for i in sorted(gone)]

    def names(self) -> list[str]:
        seen = [ln.name for ln in self._lines() if ln.name]
        return [n for n in dict.fromkeys(seen)
                if not n.endswith((PENDING_SUFFIX, PREVIOUS_SUFFIX))]

    def set_at(self, name: str) -> datetime | None:
        stamp = _STAMP.format(name=name)
        for ln in self._lines():
            if ln.name is None and ln.raw.startswith(stamp):
                try:
                    return datetime.fromisoformat(ln.raw[len(stamp):].strip())
                except ValueError:
                    return None
        return None

    def _rewrite(self, lines: list[DotenvLine], updates: dict[str, str | None], after: str,
                 stamp: str | None = None) -> None:
        """Replace lines in place, delete them (None), and insert names the file lacks right
        after the line of `after` (else at the end). Every other line is kept byte-identical."""
        stamp_prefix = _STAMP.format(name=stamp) if stamp else None

        def emit(name: str, value: str) -> list[str]:
            head = [f"{stamp_prefix}{now_utc().isoformat()}"] if name == stamp else []
            return head + [f"{name}={quote_value(value)}"]

        present = {ln.name for ln in lines if ln.name}
        inserts = [ln for n, v in updates.items() if v is not None and n not in present
                   for ln in emit(n, v)]
        out: list[str] = []
        for ln in lines:
            if stamp_prefix and ln.name is None and ln.raw.startswith(stamp_prefix):
                continue  # the stamp moves with its value
            if ln.name in updates:
                value = updates[ln.name]
                if value is not None:
                    out += emit(ln.name, value)
            else:
                out.append(ln.raw)
            if ln.name == after and inserts:
                out += inserts
                inserts = []
        out += inserts
        self._write(out)

    def _write(self, out: list[str]) -> None:
        """The file as these lines, its newline style and final newline kept."""
        from keyrotate.files import atomic_write_secret

        original = Path(self.path).read_bytes() if Path(self.path).exists() else b""
        newline = "\r\n" if b"\r\n" in original else "\n"
        final = newline if out and (not original or original.endswith(b"\n")) else ""
        atomic_write_secret(self.path, newline.join(out) + final)


_STAMP = "# keyrotate: {name} set "


def quote_value(value: str) -> str:
    """Unquoted when safe (base64 and hex keys are), else double-quoted with escapes."""
    if re.fullmatch(r"[A-Za-z0-9+/=_.:@-]*", value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def read_dotenv_ref(body: str) -> str:
    path, _, name = body.rpartition("#")
    return required(f"dotenv:{body}:", read_dotenv(path).get(name), f"{name} is not set in {path}")


def write_new_dotenv_ref(body: str, value: str) -> None:
    path, _, name = body.rpartition("#")
    DotenvStore(path).write_new(name, value)


SCHEMES = {"dotenv": Scheme("dotenv", read_dotenv_ref, write_new_dotenv_ref, DotenvStore)}
