"""keyrotate: safe secret rotation and key migration for Cloudflare Workers + D1."""

__version__ = "0.1.0"
