"""Rows out: the per-output lock and the writers of every output format."""
