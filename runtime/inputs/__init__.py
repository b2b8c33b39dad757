"""Rows in: tables, WebDataset shards, folders of files."""
