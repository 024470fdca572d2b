"""Secrets: references (env:, file:, dotenv:, keyring:, vault:) and the one registry of
their schemes, secret stores with current / pending / previous slots, new values."""
