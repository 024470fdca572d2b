"""Database URLs: the one list of schemes, used both to open a --db URL and to validate a
manifest's `database`, and the refusal of credentials in a URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from keyrotate.errors import ConfigError

FILE_SCHEME = "file:"
LIBSQL_SCHEMES = ("libsql://", "http://", "https://", "ws://", "wss://")
D1_SCHEME = "d1://"
DB_SCHEMES = (FILE_SCHEME, *LIBSQL_SCHEMES, D1_SCHEME)
DB_URL_HELP = "file:PATH, libsql://, http(s)://, ws(s)://, d1://ACCOUNT_ID/DATABASE_ID"


CREDENTIAL_PARAMS = ("authtoken", "auth_token", "token", "password", "jwt", "secret", "key")


def has_credentials(url: str) -> bool:
    """A user, password or token in the URL (any URL keyrotate is given). A URL that
    does not parse is refused here too, without echoing it."""
    try:
        parsed = urlparse(url)
    except ValueError:
        raise ConfigError("a URL does not parse (it is not repeated here: it may hold a "
                          "credential)") from None
    params = {k.lower() for k in parse_qs(parsed.query)}
    return bool(parsed.username or parsed.password or "@" in parsed.netloc
                or params & set(CREDENTIAL_PARAMS))


def refuse_credentials(url: str) -> None:
    """A credential in a URL lands in argv, shell history, CI logs and error messages: it
    is refused, and the URL is not echoed."""
    if has_credentials(url):
        raise ConfigError("a database URL must not carry credentials (they would end up in "
                          "argv, shell history and logs; the URL is not repeated here): give "
                          "libSQL's token in LIBSQL_AUTH_TOKEN and D1's in CLOUDFLARE_API_TOKEN")


def is_database_url(url: object) -> bool:
    return isinstance(url, str) and url.startswith(DB_SCHEMES)
