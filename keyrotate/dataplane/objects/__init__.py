"""Durable Object targets: envelopes that live inside Durable Objects (the reference
app's OAuth tokens, one AccountDO per account), reached only through a Worker route.
keyrotate drives the work; the Worker does it with the keys it already holds: no key
ever travels in a request (docs/durable-objects.md)."""
