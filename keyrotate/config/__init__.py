"""Configuration: keyrotate.toml (read, checked section by section, held as data) and the
context of one environment that a command works in. Below the evidence, so every command
that acts can write the audit trail."""
