"""Cloudflare: the subprocess runner, the wrangler adapter, health checks, D1's REST API."""
