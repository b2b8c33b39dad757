"""Rows in: table readers (jsonl/json/csv/parquet), a JSON column's parquet type, WebDataset shards and tar
reading. Never a model."""
