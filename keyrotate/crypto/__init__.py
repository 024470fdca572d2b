"""Pure cryptography: key derivation, key ids and the stored-value codecs. No I/O here."""
