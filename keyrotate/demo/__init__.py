"""`keyrotate demo`: synthetic data and the whole data-plane story on a local file."""
