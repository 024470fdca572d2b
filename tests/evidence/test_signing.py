"""`keyrotate.evidence.signing.verify`, the check receivers may import: False for every
malformed input, never an exception (fuzzed with Hypothesis), True only for a signature
it made."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from keyrotate.evidence.signing import sign, verify

SECRET = "whsec-test-signing-secret-0123456789"
BODY = b'{"v":1,"event":"notify.test"}'


def test_the_inputs_that_used_to_raise_are_simply_invalid():
    now = int(time.time())
    good = sign(SECRET, BODY, now)
    assert verify(SECRET, good, BODY)
    for header in (f"t={now},v1=\u00e9" + "0" * 63,          # a non-ASCII v1
                   f"t={'9' * 5000},v1=" + "0" * 64,         # a huge t
                   f"t={'9' * 400},v1=" + "0" * 64,          # int, but no float holds it
                   f"t=-{now},v1=" + good[-64:],             # a sign
                   f"t={now}",                               # no v1
                   "", "garbage", "=,=,", f"t={now},t={now},{good}"):
        assert verify(SECRET, header, BODY) is False, header
    assert verify(SECRET, None, BODY) is False                # type: ignore[arg-type]
    assert verify(SECRET, good, "not bytes") is False         # type: ignore[arg-type]
    assert verify("", good, BODY) is False


@settings(max_examples=600, deadline=None)
@given(header=st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                        st.builds(lambda t, v: f"t={t},v1={v}",
                                  st.one_of(st.integers(), st.text()), st.text()),
                        st.none(), st.integers()),
       body=st.one_of(st.binary(max_size=64), st.text(max_size=64), st.none()),
       secret=st.one_of(st.text(max_size=40), st.none()),
       now=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_verify_never_raises(header, body, secret, now):
    assert verify(secret, header, body, now=now) in (True, False)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=256), skew=st.integers(-300, 300))
def test_verify_accepts_what_sign_made_within_tolerance(body, skew):
    t = int(time.time())
    header = sign(SECRET, body, t)
    assert verify(SECRET, header, body, now=t + skew)
    assert not verify(SECRET, header, body + b"x", now=t)
    assert not verify(SECRET, header, body, now=t + 301)
