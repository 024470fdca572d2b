"""The engine: reencrypt, verify and the checkpoint journal they share."""
