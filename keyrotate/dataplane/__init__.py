"""The data plane: reencrypt and verify over a row database, the checkpoint journal, the
crypto worker processes. Needs no manifest; depends on crypto, secrets and db only."""
