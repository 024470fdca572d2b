"""What `secrets show` tells about a secret: fingerprints, never the value (unless asked)."""

from __future__ import annotations

from typing import Any

from keyrotate.crypto.keys import MasterKey, is_raw_hex_key
from keyrotate.refs import parse_ref, resolve
from keyrotate.secrets.base import fingerprint


def describe(ref_text: str, reveal: bool = False) -> dict[str, Any]:
    ref = parse_ref(ref_text, "REF")
    value = resolve(ref_text, "REF")
    info: dict[str, Any] = {
        "ref": str(ref),
        "fingerprint": fingerprint(value),
        # the kid this value gets as a MASTER_KEY: matches the "kid" of envelopes it wrote
        "master_key_kid": MasterKey.from_secret(value).kid,
        "length": len(value),
        "derivation": "raw 32 bytes (64 hex)" if is_raw_hex_key(value) else "SHA-256 of the string",
    }
    if reveal:
        info["value"] = value
    return info

