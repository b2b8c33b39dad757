"""Issue 24, item 12: an embeddings part damaged after it was indexed. The next writer's open checks each indexed
part's size and footer, moves a damaged one aside (``.<name>.damaged``: out of the glob readers use) with one line,
and indexes its kind again without it, so pandas, pyarrow and DuckDB read the folder and a key whose newest record
was in it gets its older record back.

| kind | cases |
| --- | ---: |
| damaged after indexing: cut in half, by one byte, to nothing, its end overwritten, texts too | 5 |
| a key's older record wins again; a whole part is left alone; a second open says nothing | 1 |
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
from test_embeddings import MODEL, add, keys, parts, unit

from longclip.runtime.embeddings.keys import text_sha256
from longclip.runtime.embeddings.store import EmbeddingStore


def _cut_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _overwrite_end(data: bytes) -> bytes:
    return data[:-16] + b"\x00" * 16


DAMAGE = {"half": _cut_half, "one byte": lambda d: d[:-1], "nothing": lambda d: b"", "end overwritten": _overwrite_end}


def _store(root):
    """Two parts of images: keys 0-3, then keys 0-1 again (newer records) and 4-5."""
    old, new = unit(4, seed=1), unit(4, seed=2)
    with EmbeddingStore(root, MODEL, part_rows=4) as store:
        add(store, keys(4), old)
        add(store, keys(2) + keys(6)[4:], new)
    return old, new


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_part_damaged_after_indexing_is_moved_aside_and_the_folder_reads_again(tmp_path, caplog, damage):
    root = tmp_path / "emb"
    old, new = _store(root)
    first, second = (root / "images" / name for name in parts(root))
    second.write_bytes(damage(second.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="longclip"):
        with EmbeddingStore(root, MODEL) as store:
            got = store.get_images(keys(6))
    lines = caplog.messages
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"embeddings part {str(second)!r} is damaged ("), lines
    assert lines[0].endswith(f"moved to '.{second.name}.damaged', out of the folder's parts; its images are indexed "
                             "again without it")
    assert parts(root) == sorted([first.name, f".{second.name}.damaged"])
    assert sorted(got) == sorted(keys(4))  # 4 and 5 were only in the damaged part
    assert all(np.array_equal(got[key], old[i]) for i, key in enumerate(keys(4)))  # the older records win again
    frame = pd.read_parquet(root / "images")
    assert len(frame) == 4 and frame["sha256"].tolist() == keys(4)
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"SELECT count(*) FROM '{(root / 'images').as_posix()}/*.parquet'").fetchall() == [(4,)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longclip"):
        EmbeddingStore(root, MODEL).close()
    assert not caplog.text  # said once, and the index is whole again


def test_a_text_part_damaged_after_indexing_too(tmp_path, caplog):
    root = tmp_path / "emb"
    texts = [f"caption {i}" for i in range(3)]
    with EmbeddingStore(root, MODEL, part_rows=2) as store:
        store.add_texts(texts, [text_sha256(t) for t in texts], unit(3))
        add(store, keys(2), unit(2))
    damaged = root / "texts" / parts(root, "texts")[0]
    os.truncate(damaged, 100)
    with caplog.at_level(logging.WARNING, logger="longclip"):
        with EmbeddingStore(root, MODEL) as store:
            assert store.has_texts([text_sha256(t) for t in texts]) == {text_sha256(texts[2])}
            assert store.has_images(keys(2)) == set(keys(2))
    assert caplog.text.count("is damaged") == 1 and "its texts are indexed again" in caplog.text
    assert len(pd.read_parquet(root / "texts")) == 1
