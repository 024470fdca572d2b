"""Notifications: each event to every sink that wants it, as a signed JSON body or a
Slack message.

Delivery never changes a command's outcome: each try has a whole deadline (`timeout`
seconds from the first byte sent to the last byte of the answer: a receiver trickling its
answer cannot hold a command), a sink gets up to three tries with backoff, and a sink that failed them all is not tried
again in the same command (a rotation must not wait on a dead receiver at every step).
Every failure is logged and returned, for the audit trail. Sink URLs are credentials:
they are resolved from their references only to be used, and never appear in a message,
a log line or the audit trail (the reference names the sink).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlparse

import httpx

from keyrotate.config.manifest import NotifyConfig, NotifySink
from keyrotate.errors import ConfigError, KeyrotateError
from keyrotate.evidence.event import ChainHead, Event
from keyrotate.evidence.signing import HEADER, check_signing_secret, sign
from keyrotate.tls import tls_context

log = logging.getLogger("keyrotate.notify")
TRIES = 3
FIRST_BACKOFF = 0.5
USER_AGENT = "keyrotate-notify/1"


@dataclass(frozen=True)
class Delivery:
    sink: str            # the sink's label: format and URL reference, never the URL
    event: str
    ok: bool
    tries: int
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class DeadlinePassed(Exception):
    """A try did not get its whole answer within the deadline."""


def slack_text(event: Event, head: ChainHead | None = None) -> str:
    """One short sentence; Slack's three control characters escaped, no links; the
    event's place in the audit trail at the end."""
    text = f"keyrotate [{event.env}] {event.summary}"
    if head is not None:
        text += f" (audit #{head.seq} {head.mac[:16]})"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def json_body(event: Event, head: ChainHead | None = None) -> bytes:
    return json.dumps(event.body(head), sort_keys=True, separators=(",", ":")).encode()


def _check_url(url: str, ref: str) -> None:
    """https, or http to this machine only (a receiver on localhost, a sidecar)."""
    try:
        parsed = urlparse(url)
        host = parsed.hostname
    except ValueError:   # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"the URL {ref} names cannot be parsed") from None
    if parsed.scheme == "https" and host:
        return
    if parsed.scheme == "http" and host:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return
    raise ConfigError(f"the URL {ref} names is not an https:// URL (http:// only to localhost)")


class Notifier:
    def __init__(self, config: NotifyConfig, resolve: Callable[[str], str]):
        self.config = config
        self._resolve = resolve
        self._down: dict[str, str] = {}
        self._targets: dict[str, tuple[str, str | None]] = {}
        self._http: httpx.Client | None = None
        self.deliveries: list[Delivery] = []

    @property
    def failures(self) -> list[Delivery]:
        return [d for d in self.deliveries if not d.ok]

    def wants(self, event: Event) -> bool:
        return event.notifies and any(event.event in s.events for s in self.config.sinks)

    def send(self, event: Event, head: ChainHead | None = None) -> list[Delivery]:
        """Deliver to every sink that wants this event; never raises."""
        if not event.notifies:
            return []
        out = [self._deliver(s, event, head) for s in self.config.sinks if event.event in s.events]
        self.deliveries += out
        return out

    def _client(self) -> httpx.Client:
        if self._http is None:
            # a new connection per try: the deadline cuts the socket the try opened
            self._http = httpx.Client(follow_redirects=False, verify=tls_context(),
                                      headers={"User-Agent": USER_AGENT},
                                      limits=httpx.Limits(max_keepalive_connections=0))
        return self._http

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """One try, within the whole deadline: when it passes, the try's socket is shut
        down, which ends whatever read or write the try is blocked in."""
        sockets: list[socket.socket] = []
        expired = threading.Event()

        def cut(sock: socket.socket) -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass   # already closed

        def trace(name: str, info: dict[str, Any]) -> None:
            if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                stream = info.get("return_value")
                sock = stream.get_extra_info("socket") if stream is not None else None
                if sock is not None:
                    sockets.append(sock)
                    if expired.is_set():
                        cut(sock)

        def expire() -> None:
            expired.set()
            for sock in sockets:
                cut(sock)

        timer = threading.Timer(self.config.timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            return self._client().post(url, content=body, headers=headers,
                                       timeout=self.config.timeout, extensions={"trace": trace})
        except httpx.TransportError:
            if expired.is_set():
                raise DeadlinePassed from None
            raise
        finally:
            timer.cancel()

    def _deliver(self, sink: NotifySink, event: Event, head: ChainHead | None) -> Delivery:
        if sink.label in self._down:
            return self._failed(sink, event, 0, f"not tried: {self._down[sink.label]} "
                                                "earlier in this command")
        try:
            url, secret = self._target(sink)
        except KeyrotateError as e:
            self._down[sink.label] = str(e)
            return self._failed(sink, event, 0, str(e))
        body = json_body(event, head) if sink.format == "json" else \
            json.dumps({"text": slack_text(event, head)}).encode()
        reason, delay = "", FIRST_BACKOFF
        for attempt in range(1, TRIES + 1):
            headers = {"Content-Type": "application/json", "X-Keyrotate-Event": event.event}
            if secret is not None:
                headers[HEADER] = sign(secret, body)
            try:
                resp = self._post(url, body, headers)
                if 200 <= resp.status_code < 300:
                    return Delivery(sink.label, event.event, True, attempt)
                reason = f"HTTP {resp.status_code}"
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    return self._failed(sink, event, attempt, reason)  # trying again won't help
            except (httpx.TimeoutException, DeadlinePassed):
                reason = f"no whole answer within {self.config.timeout:g} s"
            except httpx.TransportError as e:
                reason = f"unreachable ({type(e).__name__})"
            except Exception as e:  # e.g. httpx.InvalidURL: its message holds the URL
                return self._failed(sink, event, attempt, f"could not send ({type(e).__name__})")
            if attempt < TRIES:
                time.sleep(delay)
                delay *= 2
        self._down[sink.label] = reason
        return self._failed(sink, event, TRIES, reason)

    def _target(self, sink: NotifySink) -> tuple[str, str | None]:
        """The sink's URL and signing secret, read from their references once per command
        (a vault: reference is a request) and kept in memory only."""
        if sink.label not in self._targets:
            url = self._resolve(sink.url)
            _check_url(url, sink.url)
            secret = self._resolve(sink.secret) if sink.secret else None
            if secret is not None:
                check_signing_secret(secret, str(sink.secret))
            self._targets[sink.label] = (url, secret)
        return self._targets[sink.label]

    def _failed(self, sink: NotifySink, event: Event, tries: int, reason: str) -> Delivery:
        log.warning("notification %s to %s failed: %s", event.event, sink.label, reason)
        return Delivery(sink.label, event.event, False, tries, reason)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
