"""Cloudflare's Workers, as keyrotate drives them: the wrangler CLI through the one
subprocess runner, and Worker versions made through the API. (The HTTP client itself is in
the foundation, keyrotate.cloudflare_api, because D1's row store uses it too.)"""
