"""The `labelloop` command line."""
