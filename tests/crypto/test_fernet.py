"""The fernet codec rotates as MultiFernet.rotate does, and the old key no longer opens."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from keyrotate.crypto.codecs import make_codec
from keyrotate.errors import InvalidEnvelope


def test_rotate_matches_multifernet_and_retires_old_key():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = Fernet(old).encrypt(b"secret payload").decode()
    codec = make_codec("fernet", new, old)
    rotated = codec.rotate(token)
    assert Fernet(new).decrypt(rotated.encode()) == b"secret payload"
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(rotated.encode())
    # the same result MultiFernet.rotate would give, as far as any reader can tell
    assert MultiFernet([Fernet(new)]).decrypt(rotated.encode()) == b"secret payload"
    assert codec.rotate(rotated) is None
    assert codec.census(rotated) == codec.new_kid and codec.census(token) == codec.old_kid


@pytest.mark.parametrize("value,reason", [("", "empty"), ("gAAAA-junk", "neither"),
                                          (b"blob", "BLOB"), ("ключ", "non-ASCII"), (7, "int")])
def test_bad_tokens(value, reason):
    codec = make_codec("fernet", Fernet.generate_key().decode(), Fernet.generate_key().decode())
    with pytest.raises(InvalidEnvelope, match=reason):
        codec.rotate(value)


def test_not_a_fernet_key_is_a_value_error():
    with pytest.raises(ValueError):
        make_codec("fernet", "not-a-key", None)


def test_rotation_keeps_the_token_timestamp():
    """Apps that decrypt with ttl= must not see an expired token come back to life."""
    import time

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    issued = int(time.time()) - 3 * 86400
    token = Fernet(old).encrypt_at_time(b"expired three days ago", issued).decode()
    rotated = make_codec("fernet", new, old).rotate(token)
    assert Fernet(new).extract_timestamp(rotated.encode()) == issued
    with pytest.raises(InvalidToken):
        Fernet(new).decrypt(rotated.encode(), ttl=86400)
    fresh = make_codec("fernet", new, old, "fresh-dek").rotate(token)
    assert Fernet(new).extract_timestamp(fresh.encode()) == issued


@pytest.mark.parametrize("spelling", [lambda k: k + "=", lambda k: k + "\n",
                                      lambda k: k.replace("-", "+").replace("_", "/")],
                         ids=["extra padding", "newline", "standard alphabet"])
def test_one_key_spelled_two_ways_is_the_same_key(spelling):
    """Issue 20 item 9: Fernet accepts a key with extra padding, a newline or the standard
    base64 alphabet as the same 32 bytes: an "old" and "new" key that are one key is refused."""
    from keyrotate.crypto.codecs import SameKey

    key = Fernet.generate_key().decode()
    while "-" not in key and "_" not in key:   # so the alphabet variant differs in text
        key = Fernet.generate_key().decode()
    other = spelling(key)
    assert other != key and Fernet(other.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"
    with pytest.raises(SameKey):
        make_codec("fernet", other, key)
