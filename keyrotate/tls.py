"""One TLS context for every HTTP client keyrotate makes.

Loading the CA bundle costs about 20 ms a context, and a command makes a client for each
Worker route it asks and each API it calls (dozens in a canary). The context is the one
httpx would build for each client by itself (its defaults: certifi's bundle, or
SSL_CERT_FILE / SSL_CERT_DIR when set), built once per process."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
