"""Secret stores: where keys live (.env files, the OS keyring, Vault / OpenBao)."""
