"""The embeddings store: parts any parquet reader reads, a SQLite index that survives crashes, one writer at a
time, lookups whose cost does not grow with the store, memory flat while writing."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longclip.runtime.contract.errors import InputError, WriteError
from longclip.runtime.embeddings import index as embedding_index
from longclip.runtime.embeddings import parts as embedding_parts
from longclip.runtime.embeddings.identity import StoreIdentity
from longclip.runtime.embeddings.keys import bytes_sha256, file_sha256, text_sha256
from longclip.runtime.embeddings.store import EmbeddingStore
from longclip.runtime.model.scoring import l2_normalize

DIM = 8
MODEL = StoreIdentity("a" * 64, "b" * 64, "ViT-test", "fp32", DIM)


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32))


def keys(n: int, tag: str = "") -> list[str]:
    return [bytes_sha256(f"{tag}{i}".encode()) for i in range(n)]


def add(store: EmbeddingStore, hashes: list[str], vectors: np.ndarray) -> None:
    paths = [f"img/{i}.jpg" for i in range(len(hashes))]
    store.add_images(paths, [f"/data/{p}" for p in paths], [1000 + i for i in range(len(hashes))],
                     [10**18 + i for i in range(len(hashes))], hashes, vectors)


def parts(root: Path, kind: str = "images") -> list[str]:
    return sorted(os.listdir(root / kind))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- the contract -----------------------------------------------------------------------------------------------


def test_hashes_are_sha256_of_the_bytes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 jpeg bytes")
    assert file_sha256(tmp_path / "a.jpg") == bytes_sha256(b"\xff\xd8 jpeg bytes")
    assert text_sha256("a cat") == "51e467415607798220a3776f6ae1a2a09ddc7e5dcdc955d685477b4cf05ade22"
    with pytest.raises(ValueError, match="which UTF-8 cannot hold"):
        text_sha256("a\ud800")


def test_round_trip_through_a_reopened_folder(tmp_path):
    root = tmp_path / "emb"
    images, texts = unit(5), unit(3, seed=1)
    with EmbeddingStore(root, MODEL) as store:
        add(store, keys(5), images)
        store.add_text("a cat", text_sha256("a cat"), texts[0])
        store.add_texts(["a dog", "a bird"], [text_sha256("a dog"), text_sha256("a bird")], texts[1:])
    assert sorted(os.listdir(root)) == ["images", "index.sqlite", "model.json", "texts"]
    assert json.loads((root / "model.json").read_text()) == {
        "format": "longclip-embeddings", "schema_version": 1, "vision_sha256": "a" * 64, "text_sha256": "b" * 64,
        "variant": "ViT-test", "precision": "fp32", "embed_dim": DIM, "dtype": "float32"}
    for write in (False, True):
        with EmbeddingStore(root, MODEL if write else None, write=write) as store:
            got = store.get_images([*keys(5), "0" * 64])
            assert list(got) == keys(5) and all(np.array_equal(got[k], images[i]) for i, k in enumerate(keys(5)))
            assert got[keys(5)[0]].dtype == np.float32
            assert store.has_images([keys(5)[2], "f" * 64]) == {keys(5)[2]}
            found = store.get_texts([text_sha256("a bird"), text_sha256("a cat")])
            assert np.array_equal(found[text_sha256("a bird")], texts[2])
            assert store.get_images([keys(5)[1].upper()])[keys(5)[1].upper()].tolist() == images[1].tolist()
    table = pq.read_table(root / "images" / parts(root)[0])
    assert table.schema.names == ["image_path", "resolved_path", "size", "mtime_ns", "sha256", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert table.column("image_path").to_pylist()[:2] == ["img/0.jpg", "img/1.jpg"]
    assert table.column("mtime_ns").to_pylist()[0] == 10**18
    assert json.loads(table.schema.metadata[b"longclip.embeddings"])["embed_dim"] == DIM


def test_records_are_visible_before_their_part_and_parts_hold_part_rows(tmp_path):
    root = tmp_path / "emb"
    vectors = unit(10)
    with EmbeddingStore(root, MODEL, part_rows=4) as store:
        add(store, keys(10), vectors)  # 4 + 4 written, 2 pending
        assert len(parts(root)) == 2
        assert store.has_images(keys(10)) == set(keys(10))
        assert np.array_equal(store.get_images([keys(10)[9]])[keys(10)[9]], vectors[9])
    assert [pq.read_metadata(root / "images" / p).num_rows for p in parts(root)] == [4, 4, 2]


def test_bytes_images_have_null_paths_and_a_name_utf8_cannot_hold_is_kept_as_u_fffd(tmp_path):
    with EmbeddingStore(tmp_path / "emb", MODEL) as store:
        store.add_image("shard-0/000042", None, 12, None, bytes_sha256(b"x"), unit(1)[0])
        store.add_image("caf\udce9.jpg", "/data/caf\udce9.jpg", 1, 2, bytes_sha256(b"y"), unit(1)[0])
    table = pq.read_table(tmp_path / "emb" / "images").to_pylist()
    assert (table[0]["resolved_path"], table[0]["mtime_ns"]) == (None, None)
    assert table[1]["image_path"] == "caf\ufffd.jpg"


def test_newest_record_wins_in_a_part_across_parts_and_after_a_rebuild(tmp_path):
    root = tmp_path / "emb"
    first, second, third = unit(3, seed=5)
    key = keys(1)[0]
    with EmbeddingStore(root, MODEL) as store:
        add(store, [key, key], np.stack([first, second]))  # twice in one part
        store.flush()
        assert np.array_equal(store.get_images([key])[key], second)
        add(store, [key], third[None])
        assert np.array_equal(store.get_images([key])[key], third)  # pending wins
    with EmbeddingStore(root, write=False) as store:
        assert np.array_equal(store.get_images([key])[key], third)
    (root / "index.sqlite").unlink()
    with EmbeddingStore(root, MODEL) as store:
        assert np.array_equal(store.get_images([key])[key], third)


def test_part_names_sort_in_write_order_even_when_the_clock_goes_back(tmp_path, monkeypatch):
    root = tmp_path / "emb"
    with EmbeddingStore(root, MODEL, part_rows=1) as store:
        add(store, keys(2), unit(2))
    monkeypatch.setattr(embedding_parts, "_now_us", lambda: 0)  # 1970
    with EmbeddingStore(root, MODEL, part_rows=1) as store:
        add(store, keys(2, "later"), unit(2))
    names = parts(root)
    assert len(names) == 4 and all(n.startswith("part-") and f"-{os.getpid()}-" in n for n in names)
    rows = [pq.read_table(root / "images" / n).column("sha256").to_pylist()[0] for n in names]
    assert rows == [*keys(2), *keys(2, "later")]  # name order is write order


def test_float16_is_stored_as_halffloat_and_read_as_float32(tmp_path):
    half = StoreIdentity(*[getattr(MODEL, f) for f in ("vision_sha256", "text_sha256", "variant", "precision",
                                                      "embed_dim")], "float16")
    vectors = unit(3)
    with EmbeddingStore(tmp_path / "emb", half) as store:
        add(store, keys(3), vectors)
    schema = pq.read_schema(tmp_path / "emb" / "images" / parts(tmp_path / "emb")[0])
    assert schema.field("embedding").type == pa.list_(pa.float16(), DIM)
    with EmbeddingStore(tmp_path / "emb", half, write=False) as store:
        got = store.get_images(keys(3))[keys(3)[1]]
    assert got.dtype == np.float32 and np.array_equal(got, vectors[1].astype(np.float16).astype(np.float32))
    with pytest.raises(InputError) as refused:
        EmbeddingStore(tmp_path / "emb", MODEL)
    assert "dtype float32 (the folder: float16)" in one_line(refused)


def test_unit_norm_and_shape_are_checked(tmp_path):
    with EmbeddingStore(tmp_path / "emb", MODEL) as store:
        with pytest.raises(ValueError, match=rf"embedding of sha256 {keys(1)[0]} has L2 norm 2, expected 1 within "
                                             r"1e-05: pass L2-normalized embeddings"):
            add(store, keys(1), unit(1) * 2)
        with pytest.raises(ValueError, match="L2 norm nan"):
            add(store, keys(1), np.full((1, DIM), np.nan, np.float32))
        with pytest.raises(ValueError, match=r"shape \(1, 4\), expected \(1, 8\)"):
            add(store, keys(1), unit(1, 4))
        with pytest.raises(ValueError, match="sha256 'abc' is not 64 hex digits"):
            add(store, ["abc"], unit(1))
        with pytest.raises(ValueError, match="size '12' is not an integer"):
            store.add_image("a", None, "12", None, keys(1)[0], unit(1)[0])
        with pytest.raises(ValueError, match=f"mtime_ns {2**63} is not an integer that int64 holds"):
            store.add_image("a", None, 1, 2**63, keys(1)[0], unit(1)[0])
        add(store, keys(1), unit(1) * np.float32(1 + 5e-6))  # within the tolerance
        assert store.has_images(keys(1))


# -- one model, one writer ----------------------------------------------------------------------------------------


def test_another_model_is_refused_in_one_line_and_the_folder_stays_usable(tmp_path):
    root = tmp_path / "emb"
    with EmbeddingStore(root, MODEL) as store:
        add(store, keys(1), unit(1))
    other = StoreIdentity("c" * 64, "b" * 64, "ViT-test", "fp16", 16)
    with pytest.raises(InputError) as refused:
        EmbeddingStore(root, other)
    assert one_line(refused) == (
        f"embeddings folder {str(root)!r} holds embeddings of another model or dtype: vision graph sha256 "
        "cccccccccccc... (the folder: aaaaaaaaaaaa...); precision fp16 (the folder: fp32); embed_dim 16 (the folder: "
        "8): use another folder for this model, or move it away")
    with pytest.raises(InputError, match="another model"):
        EmbeddingStore(root, other, write=False)
    with EmbeddingStore(root, MODEL) as store:  # the refusal released the lock
        assert store.has_images(keys(1))


def test_identity_of_a_manifest():
    manifest = SimpleNamespace(vision_sha256="1" * 64, text_sha256="2" * 64, variant="ViT-L/14-336",
                               precision="fp16", embed_dim=768)
    assert StoreIdentity.of(manifest, "float16") == StoreIdentity("1" * 64, "2" * 64, "ViT-L/14-336", "fp16", 768,
                                                                  "float16")
    with pytest.raises(ValueError, match="dtype 'float64' is not one of float32, float16"):
        StoreIdentity.of(manifest, "float64")


def test_a_second_writer_is_refused_and_readers_read_while_one_writes(tmp_path):
    root = tmp_path / "emb"
    vectors = unit(6)
    with EmbeddingStore(root, MODEL) as writer:
        with pytest.raises(InputError) as refused:
            EmbeddingStore(root, MODEL)
        assert f"embeddings folder {str(root)!r} is being written by another run (pid {os.getpid()}" in \
            one_line(refused)
        add(writer, keys(3), vectors[:3])
        writer.flush()
        reader = EmbeddingStore(root, write=False)
        assert reader.has_images(keys(6)) == set(keys(3))
        add(writer, keys(6)[3:], vectors[3:])
        writer.flush()
        assert np.array_equal(reader.get_images(keys(6))[keys(6)[5]], vectors[5])  # the same reader sees new parts
        code = ("import sys\nfrom longclip.runtime.embeddings.store import EmbeddingStore\n"
                "with EmbeddingStore(sys.argv[1], write=False) as store:\n"
                "    print(len(store.get_images(sys.argv[2:])))\n")
        other = subprocess.run([sys.executable, "-c", code, str(root), *keys(6)], capture_output=True, text=True)
        assert other.stdout.strip() == "6", other.stderr
        with pytest.raises(InputError, match="is open read-only: open it with write=True"):
            add(reader, keys(1), unit(1))
        reader.close()
    with pytest.raises(ValueError, match="is closed"):
        reader.get_images(keys(1))


# -- readers of the parts -----------------------------------------------------------------------------------------


def test_pandas_pyarrow_and_duckdb_read_the_parts_and_skip_a_temporary_file(tmp_path):
    root = tmp_path / "emb"
    vectors = unit(5)
    with EmbeddingStore(root, MODEL, part_rows=2) as store:
        add(store, keys(4), vectors[:4])
        add(store, keys(1), vectors[4:])  # key 0 again: the newest record is the last
    (root / "images" / ".part-20990101T000000000000Z-1-000001.parquet.k2x9q0w1.tmp").write_bytes(b"PAR1 half")
    import pandas as pd
    import pyarrow.dataset as ds

    frame = pd.read_parquet(root / "images")
    assert len(frame) == 5 and frame["embedding"][0].tolist() == vectors[0].tolist()
    assert ds.dataset(root / "images").to_table().num_rows == 5
    duckdb = pytest.importorskip("duckdb")
    folder = (root / "images").as_posix()
    assert duckdb.sql(f"SELECT count(*) FROM '{folder}/*.parquet'").fetchall() == [(5,)]
    newest = duckdb.sql(
        f"SELECT sha256, embedding FROM read_parquet('{folder}/*.parquet', filename=true, file_row_number=true) "
        "QUALIFY row_number() OVER (PARTITION BY sha256 ORDER BY filename DESC, file_row_number DESC) = 1").fetchall()
    with EmbeddingStore(root, write=False) as store:
        got = store.get_images(keys(4))
    assert len(newest) == 4 and all(np.allclose(got[sha], vector) for sha, vector in newest)
    pairs = duckdb.sql(  # the README's pairs query, over every pair
        f"WITH e AS (SELECT * FROM read_parquet('{folder}/*.parquet', filename=true, file_row_number=true) QUALIFY "
        "row_number() OVER (PARTITION BY sha256 ORDER BY filename DESC, file_row_number DESC) = 1) "
        "SELECT a.sha256, b.sha256, list_dot_product(a.embedding, b.embedding) AS cos "
        "FROM e a JOIN e b ON a.sha256 < b.sha256 WHERE cos > -2").fetchall()
    assert len(pairs) == 6
    assert all(np.isclose(cos, np.dot(got[a], got[b]), atol=1e-5) for a, b, cos in pairs)


# -- crashes, corruption, errors ------------------------------------------------------------------------------------


KILLED = """
import os, sys
import numpy as np
from longclip.runtime.embeddings import index as embedding_index
from longclip.runtime.embeddings.identity import StoreIdentity
from longclip.runtime.embeddings.store import EmbeddingStore

root, *hashes = sys.argv[1:]
vectors = np.load(root + ".npy")
store = EmbeddingStore(root, StoreIdentity("a" * 64, "b" * 64, "ViT-test", "fp32", 8))
store.add_images(hashes[:2], [None] * 2, [1] * 2, [None] * 2, hashes[:2], vectors[:2])
store.flush()
embedding_index.PartIndex.add_part = lambda *args: os._exit(9)  # killed once the part is in place
store.add_images(hashes[2:], [None] * 2, [1] * 2, [None] * 2, hashes[2:], vectors[2:])
store.flush()
"""


def test_a_run_killed_between_part_and_index_is_indexed_on_the_next_open(tmp_path, caplog):
    root = tmp_path / "emb"
    vectors = unit(4)
    np.save(tmp_path / "emb.npy", vectors)
    killed = subprocess.run([sys.executable, "-c", KILLED, str(root), *keys(4)], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    assert len(parts(root)) == 2
    with EmbeddingStore(root, write=False) as reader:  # a reader sees what the index holds
        assert reader.has_images(keys(4)) == set(keys(2))
    with caplog.at_level(logging.WARNING, logger="longclip"):
        with EmbeddingStore(root, MODEL) as store:  # the kernel released the lock
            assert np.array_equal(store.get_images(keys(4))[keys(4)[3]], vectors[3])
    assert "did not know 1 images part(s) (a run ended between writing a part and indexing it)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longclip"):
        EmbeddingStore(root, MODEL).close()
    assert not caplog.text  # indexed now


def test_an_index_the_disk_refuses_is_written_at_the_next_flush(tmp_path, monkeypatch):
    root = tmp_path / "emb"
    vectors = unit(2)
    real = embedding_index.PartIndex.add_part

    def full(index, *args):
        monkeypatch.setattr(embedding_index.PartIndex, "add_part", real)  # once
        raise embedding_index._write_error(index.path, sqlite3.OperationalError("database or disk is full"))

    with EmbeddingStore(root, MODEL) as store:
        add(store, keys(1), vectors[:1])
        monkeypatch.setattr(embedding_index.PartIndex, "add_part", full)
        with pytest.raises(WriteError) as failed:
            store.flush()
        assert f"cannot write {str(root / 'index.sqlite')!r}: [SQLITE_ERROR] database or disk is full: part part-" in \
            one_line(failed) and "is in place, and is indexed at the next flush(), close() or open" in str(failed.value)
        assert store.has_images(keys(1)) == set()  # a miss meanwhile
        add(store, keys(2)[1:], vectors[1:])
        store.flush()
        assert store.has_images(keys(2)) == set(keys(2))
    assert len(parts(root)) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_lost_or_corrupt_index_is_rebuilt_from_the_parts_by_the_next_writer(tmp_path, caplog, damage):
    root = tmp_path / "emb"
    with EmbeddingStore(root, MODEL, part_rows=100) as store:
        add(store, keys(300), unit(300))
    index = root / "index.sqlite"
    if damage == "garbage":
        index.write_bytes(b"not a database" * 100)
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:8192])
    else:
        index.unlink()
    if damage != "truncated":  # a reader cannot tell a truncated file until a lookup reaches the missing pages
        with pytest.raises(InputError) as refused:
            EmbeddingStore(root, write=False)
        assert one_line(refused).endswith("open the folder for writing once (EmbeddingStore(folder, identity)) to "
                                          "rebuild it from the parts")
    with caplog.at_level(logging.WARNING, logger="longclip"):
        with EmbeddingStore(root, MODEL) as store:
            assert len(store.get_images(keys(300))) == 300
    assert ("is missing: building it from 3 parts" if damage == "missing" else "is unreadable") in caplog.text
    with EmbeddingStore(root, write=False) as reader:
        assert len(reader.get_images(keys(300))) == 300


def test_a_corrupt_part_is_skipped_with_a_warning_naming_it_on_every_open(tmp_path, caplog):
    root = tmp_path / "emb"
    with EmbeddingStore(root, MODEL, part_rows=2) as store:
        add(store, keys(4), unit(4))
    first, second = (root / "images" / name for name in parts(root))
    first.write_bytes(first.read_bytes()[:100])
    (root / "index.sqlite").unlink()
    for _ in range(2):
        with caplog.at_level(logging.WARNING, logger="longclip"):
            with EmbeddingStore(root, MODEL) as store:
                assert store.has_images(keys(4)) == set(keys(4)[2:])
        assert f"embeddings part {str(first)!r}" in caplog.text and str(second) not in caplog.text
        caplog.clear()
    first.unlink()  # as the warning asked
    with caplog.at_level(logging.WARNING, logger="longclip"):
        EmbeddingStore(root, MODEL).close()
    assert not caplog.text


def test_lookups_read_the_index_alone_and_a_part_gone_rebuilds_it(tmp_path, caplog):
    root = tmp_path / "emb"
    vectors = unit(4)
    with EmbeddingStore(root, MODEL, part_rows=2) as store:
        add(store, keys(4), vectors)
    first = root / "images" / parts(root)[0]
    first.unlink()
    with EmbeddingStore(root, write=False) as store:  # the index holds a copy of each embedding
        assert np.array_equal(store.get_images(keys(4))[keys(4)[0]], vectors[0])
    with caplog.at_level(logging.WARNING, logger="longclip"):
        with EmbeddingStore(root, MODEL) as store:
            assert store.has_images(keys(4)) == set(keys(4)[2:])
    assert f"1 indexed part(s) are gone ({first.name}, ...); rebuilding its images from 1 parts" in caplog.text


def test_a_corrupt_model_json_is_written_again_when_the_parts_agree(tmp_path, caplog):
    root = tmp_path / "emb"
    with EmbeddingStore(root, MODEL) as store:
        add(store, keys(1), unit(1))
    (root / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="another model"):  # the parts say which model made them
        EmbeddingStore(root, StoreIdentity("c" * 64, "b" * 64, "x", "fp32", DIM))
    with caplog.at_level(logging.WARNING, logger="longclip"):
        with EmbeddingStore(root, MODEL) as store:
            assert store.has_images(keys(1))
    assert "model.json is not valid" in caplog.text and "(its parts agree)" in caplog.text
    assert json.loads((root / "model.json").read_text())["embed_dim"] == DIM
    (root / "model.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longclip"):
        EmbeddingStore(root, MODEL).close()
    assert "model.json is missing: written again from the model (its parts agree)" in caplog.text
    (root / "model.json").write_text("[]")
    for part in (root / "images").iterdir():
        part.write_bytes(b"garbage")
    with pytest.raises(InputError) as refused:
        EmbeddingStore(root, MODEL)
    assert "model.json is not valid (not a 'longclip-embeddings' object), and no part says which model made" in \
        one_line(refused)


def test_folders_that_cannot_be_a_store_are_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    cases = [(tmp_path / "file", True, "is a file: name a folder"),
             (tmp_path / "photos", True, "holds other files and no model.json: name a new or empty folder"),
             (tmp_path / "missing" / "emb", True, f"folder {str(tmp_path / 'missing')!r} does not exist"),
             (tmp_path / "nothing", False, "does not exist: name a folder a run wrote"),
             (tmp_path, False, "is not an embeddings folder (no model.json)")]
    for root, write, message in cases:
        with pytest.raises(InputError) as refused:
            EmbeddingStore(root, MODEL if write else None, write=write)
        assert message in one_line(refused)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` unwritable even for root (a read-only bind mount); skipped where mounting is not allowed."""
    if not _quiet(["mount", "--bind", folder, folder]):
        pytest.skip("cannot bind-mount here (needs root with CAP_SYS_ADMIN)")
    try:
        if not _quiet(["mount", "-o", "remount,ro,bind", folder, folder]):
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        assert _quiet(["umount", folder])


def _quiet(command: list[object]) -> bool:
    try:
        return subprocess.run([str(c) for c in command], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def test_a_read_only_folder_is_read_and_refused_for_writing(tmp_path):
    root = tmp_path / "emb"
    with EmbeddingStore(root, MODEL) as store:
        add(store, keys(2), unit(2))
    with read_only(tmp_path):
        with EmbeddingStore(root, write=False) as store:  # no -shm can be made: opened as immutable
            assert len(store.get_images(keys(2))) == 2
        with pytest.raises(InputError) as refused:
            EmbeddingStore(root, MODEL)
        assert one_line(refused).startswith(f"cannot lock embeddings folder {str(root)!r}: ")


def test_a_full_disk_is_one_write_error_and_nothing_half_written_is_visible(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _quiet(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk]):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    store = EmbeddingStore(disk / "emb", StoreIdentity("a" * 64, "b" * 64, "x", "fp32", 512))
    try:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * 800_000)  # leaves about 120 KB: a part of 100 records (205 KB) does not fit
        vectors = unit(100, 512)
        with pytest.raises(WriteError) as failed:
            add(store, keys(100), vectors)
            store.flush()
        assert f"[Errno {errno.ENOSPC}]" in one_line(failed) and "the records stay pending" in str(failed.value)
        assert parts(disk / "emb") == []  # no part, no temporary file
        filler.unlink()
        store.flush()  # space again: the pending records are written
        assert len(store.get_images(keys(100))) == 100
    finally:
        with contextlib.suppress(WriteError):
            store.close()
        assert _quiet(["umount", disk])


# -- cost -------------------------------------------------------------------------------------------------------


def test_lookups_in_a_100k_store_take_a_few_hundred_ms_per_1000_keys(tmp_path):
    root = tmp_path / "emb"
    everything = keys(100_000)
    with EmbeddingStore(root, StoreIdentity("a" * 64, "b" * 64, "x", "fp32", 16)) as store:
        for start in range(0, len(everything), 10_000):
            store.add_images(["p"] * 10_000, [None] * 10_000, [1] * 10_000, [None] * 10_000,
                             everything[start:start + 10_000], unit(10_000, 16, seed=start))
    wanted = [everything[i] for i in np.random.default_rng(0).choice(len(everything), 1000, replace=False)]
    with EmbeddingStore(root, write=False) as store:  # their speed: benchmarks/embeddings.py (about 6 ms and 3 ms)
        assert len(store.get_images(wanted)) == 1000
        assert len(store.has_images(wanted)) == 1000


def test_memory_stays_flat_while_adding_200k_records(tmp_path):
    vectors = unit(1000, 16)
    everything = keys(200_000)
    paths = [f"img/{i}.jpg" for i in range(1000)]
    with EmbeddingStore(tmp_path / "emb", StoreIdentity("a" * 64, "b" * 64, "x", "fp32", 16)) as store:
        tracemalloc.start()
        try:
            peaks = []
            for start in range(0, len(everything), 1000):
                store.add_images(paths, paths, [1] * 1000, [2] * 1000, everything[start:start + 1000], vectors)
                if start in (20_000, 199_000):
                    peaks.append(tracemalloc.get_traced_memory()[1])
                    tracemalloc.reset_peak()
        finally:
            tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0] and peaks[1] < 8 << 20, peaks  # bounded by part_rows, not by the records
