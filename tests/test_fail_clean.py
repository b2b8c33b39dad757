"""Issue 14, from outside: fail early, fail clean, resume only what is the same.

Through the real console script (``longclip-run``, a subprocess). A refusal exits 1 with exactly one line on
stderr and no traceback, and leaves the folder exactly as it was (no output, ``.partial``, work folder or lock;
a refused ``--resume`` may only clear the empty ``.partial`` and the lock file that a killed run left).

| category | cases |
| --- | ---: |
| 1. refused before the model loads; inputs without rows | 19 |
| 2. parquet types that come back; a JSON input's parquet types | 4 |
| 3. a full disk, a file size limit | 4 |
| 4. resume only what is the same | 3 |
| 5. NaN and absent keys through jsonl, a CRLF CSV, an output name that is not UTF-8 | 3 |

1. Proved by a model whose ``text.onnx`` is garbage (it fails only when it loads, in one line): OUTPUT a folder, in a missing folder, under a file, in a read-only folder (a
   read-only bind mount or ``chattr +i``: root writes into a folder of mode 555 anyway); an input nested too
   deeply (jsonl, json), an integer of 5,000 digits, a parquet column twice, a corrupt parquet page,
   garbage parquet, a CSV header that is not UTF-8. Inputs without rows (an empty jsonl, a BOM and blank lines,
   ``[]``, a CSV header, parquet without rows, twice) give outputs without rows, a CSV header once.
2. 15 Arrow kinds (+ string_view where pyarrow has it) come back from parquet with their types and values, and read
   as ``.jsonl`` / ``.csv``; a JSON column's type follows ``runtime/inputs/schema.py`` (jsonl and json inputs).
3. A 1 MiB tmpfs (jsonl, parquet): one line with ``[Errno 28]``, no ``.partial``, the chunks kept, ``--resume``
   byte-identical; a disk full from the start: one line; ``RLIMIT_FSIZE``: ``[Errno 27]``, the same.
4. An edit that keeps the size and the mtime, another model, other options: refused; the original bytes resume.
5. ``NaN`` / ``Infinity`` in an extra jsonl field come back as written, an absent key stays absent (``{}`` too);
   a CRLF CSV with a blank line and a quoted CRLF reads as written; a parquet OUTPUT named with a non-UTF-8 byte.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import resource
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_hostile_rows import OK_JPG, cli, killed_run, read_jsonl, refused, snapshot, succeeded, write_jsonl


@pytest.fixture(scope="module")
def broken_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a garbage ``text.onnx``: its manifest reads, its graphs fail only when they load. A run
    refused with a message about its input or output was refused before the model loaded."""
    folder = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "text.onnx").write_bytes(b"not an onnx graph\n" * 100)
    return folder


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    shutil.copy(OK_JPG, tmp_path / "ok.jpg")
    write_jsonl(tmp_path / "in.jsonl", [{"image_path": "ok.jpg", "text": t} for t in ("a cat", "a dog")])
    return tmp_path


# --- 1. refused before the model loads ---------------------------------------------------------------------------

def test_the_broken_model_fails_when_it_loads(run_dir, broken_model):
    before = snapshot(run_dir)
    run = cli("in.jsonl", "-m", broken_model, "-o", "out.jsonl", cwd=run_dir)
    assert run.returncode == 1 and "text.onnx" in run.stderr, run.stderr  # what the probe below relies on
    assert snapshot(run_dir) == before


def test_an_unreadable_model_is_one_line(run_dir, broken_model):
    refused(cli("in.jsonl", "-m", broken_model, "-o", "out.jsonl", cwd=run_dir), "text.onnx")


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _parquet_with_a_column_twice(path: Path) -> None:
    names = ["image_path", "text", "id", "id"]
    pq.write_table(pa.Table.from_arrays([pa.array(["ok.jpg"]), pa.array(["a"]), pa.array([1]), pa.array([2])],
                                        names=names), path)


def _parquet_with_a_corrupt_page(path: Path) -> None:
    rows = 40
    pq.write_table(pa.table({"image_path": ["ok.jpg"] * rows, "text": [f"caption {i}" for i in range(rows)]}), path,
                   row_group_size=10)
    data = bytearray(path.read_bytes())
    offset = pq.ParquetFile(path).metadata.row_group(2).column(1).data_page_offset
    data[offset + 20: offset + 60] = bytes(b ^ 0xFF for b in data[offset + 20: offset + 60])  # a page header
    path.write_bytes(bytes(data))


INPUT_REFUSALS = {  # name: (input file, how to make it, the message)
    "jsonl_nested_too_deeply": ("in.jsonl", lambda p: p.write_text(
        '{"image_path": "ok.jpg", "text": "a"}\n' f'{{"image_path": "ok.jpg", "text": "b", "x": {_deep(100_000)}}}\n'),
        "in.jsonl' line 2 is not valid JSON: nested too deeply"),
    "json_nested_too_deeply": ("in.json", lambda p: p.write_text(
        f'[{{"image_path": "ok.jpg", "text": "a", "x": {_deep(100_000)}}}]'), "in.json' is not valid JSON: nested too"),
    "integer_of_5000_digits": ("in.jsonl", lambda p: p.write_text(
        '{"image_path": "ok.jpg", "text": "a"}\n' + '{"image_path": "ok.jpg", "text": "b", "n": ' + "9" * 5000 + "}\n"),
        "in.jsonl' line 2 is not valid JSON: Exceeds the limit (4300 digits)"),
    "parquet_with_a_column_twice": ("in.parquet", _parquet_with_a_column_twice,
                                    "has the column name(s) ['id'] more than once in its schema"),
    "parquet_with_a_corrupt_page": ("in.parquet", _parquet_with_a_corrupt_page,
                                    "cannot read 'in.parquet': row group 2 (of 4) is corrupt"),
    "parquet_that_is_garbage": ("in.parquet", lambda p: p.write_bytes(b"PAR1" + b"\0" * 100),
                                "cannot read 'in.parquet'"),
    "csv_header_not_utf8": ("in.csv", lambda p: p.write_bytes(b"image_path,t\xffxt\nok.jpg,a\n"),
                            "the header is not valid UTF-8"),
}


@pytest.mark.parametrize("name", INPUT_REFUSALS)
def test_a_bad_input_is_refused_before_the_model_loads(run_dir, broken_model, name):
    filename, make, message = INPUT_REFUSALS[name]
    (run_dir / "in.jsonl").unlink()
    make(run_dir / filename)
    before = snapshot(run_dir)
    refused(cli(filename, "-m", broken_model, "-o", "out.parquet", cwd=run_dir), message)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(("output", "message"), [
    ("folder.jsonl", "cannot write 'folder.jsonl': it is a folder"),
    ("missing/out.jsonl", "cannot write 'missing/out.jsonl': folder 'missing' does not exist"),
    ("in.jsonl/out.jsonl", "cannot write 'in.jsonl/out.jsonl': folder 'in.jsonl' does not exist"),
])
def test_an_output_that_cannot_be_a_file_is_refused_before_the_model_loads(run_dir, broken_model, output, message):
    (run_dir / "folder.jsonl").mkdir()
    before = snapshot(run_dir)
    refused(cli("in.jsonl", "-m", broken_model, "-o", output, cwd=run_dir), message)
    assert snapshot(run_dir) == before


@contextmanager
def read_only(folder: Path):
    """``folder`` unwritable even for root: a read-only bind mount of itself, else the immutable attribute."""
    tries = [(["mount", "--bind", folder, folder], ["mount", "-o", "remount,ro,bind", folder, folder],
              ["umount", folder]), (["chattr", "+i", folder], None, ["chattr", "-i", folder])]
    for make, then, undo in tries:
        if _quiet(make):
            if then is None or _quiet(then):
                break
            _quiet(undo)
    else:
        pytest.skip("neither a read-only bind mount nor chattr +i works here: root writes to any folder")
    try:
        yield
    finally:
        assert _quiet(undo)


def _quiet(command: list[object]) -> bool:
    try:
        return subprocess.run([str(c) for c in command], capture_output=True).returncode == 0
    except FileNotFoundError:  # no mount / chattr on this machine
        return False


def test_an_unwritable_output_folder_is_refused_before_the_model_loads(run_dir, broken_model):
    (run_dir / "out").mkdir()
    before = snapshot(run_dir)
    with read_only(run_dir / "out"):
        refused(cli("in.jsonl", "-m", broken_model, "-o", "out/scored.jsonl", cwd=run_dir),
                "cannot lock output 'out/scored.jsonl'")
    assert snapshot(run_dir) == before


def _no_rows_parquet(path: Path) -> None:
    pq.write_table(pa.table({"image_path": pa.array([], pa.string()), "text": pa.array([], pa.large_string()),
                             "n": pa.array([], pa.int8())}), path)


NO_ROWS = {  # name: (input file, its bytes or a maker, output suffix)
    "empty_jsonl": ("in.jsonl", b"", ".csv"),
    "jsonl_of_a_bom_and_blank_lines": ("in.jsonl", b"\xef\xbb\xbf\r\n  \n\r\n", ".json"),
    "json_empty_array": ("in.json", b"[]", ".parquet"),
    "csv_header_only": ("in.csv", b"\xef\xbb\xbfimage_path,text,id\r\n", ".csv"),
    "parquet_without_rows": ("in.parquet", _no_rows_parquet, ".parquet"),
    "parquet_without_rows_to_jsonl": ("in.parquet", _no_rows_parquet, ".jsonl"),
}


@pytest.mark.parametrize("name", NO_ROWS)
def test_an_input_without_rows_gives_an_output_without_rows(run_dir, tiny_model_dir, name):
    filename, content, suffix = NO_ROWS[name]
    (run_dir / "in.jsonl").unlink()
    content(run_dir / filename) if callable(content) else (run_dir / filename).write_bytes(content)
    run = succeeded(cli(filename, "-m", tiny_model_dir, "-o", f"out{suffix}", "--device", "cpu", cwd=run_dir))
    assert "rows 0: scored 0, failed 0" in run.stderr
    out = run_dir / f"out{suffix}"
    columns = {"in.csv": ["image_path", "text", "id"], "in.parquet": ["image_path", "text", "n"]}.get(filename, [])
    columns += ["longclip_score", "longclip_score_error"]
    if suffix == ".csv":
        assert out.read_bytes() == ",".join(columns).encode() + b"\r\n"  # the header, once
    elif suffix == ".parquet":
        schema = pq.read_schema(out)
        assert schema.names == columns and pq.read_metadata(out).num_rows == 0
        assert schema.field("longclip_score").type == pa.float64()
        if filename == "in.parquet":
            assert [str(t) for t in schema.types[:3]] == ["string", "large_string", "int8"]
    else:
        assert out.read_text() == {".jsonl": "", ".json": "[]\n"}[suffix]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["ok.jpg", filename, out.name])


# --- 2. parquet types that come back, JSON types by the rule -------------------------------------------------------

def _typed_table() -> pa.Table:
    """Five rows of 15 Arrow kinds beside the image and text columns; nulls in every column."""
    import datetime
    import decimal

    utc = datetime.timezone.utc
    columns = {
        "image_path": pa.array(["ok.jpg", "ok.jpg", "missing.png", "ok.jpg", None]),
        "text": pa.array(["a cat", "a dog", "x", None, "y"]),
        "struct": pa.array([{"a": 1, "b": "x"}, {"a": 2, "b": None}, None, {"a": None, "b": "é"}, {"a": 5, "b": ""}],
                           pa.struct([("a", pa.int32()), ("b", pa.string())])),
        "list": pa.array([[1, 2], [], None, [3], [-4]], pa.list_(pa.int16())),
        "map": pa.array([[("k", 1)], [], None, [("a", 2), ("b", 3)], [("z", None)]], pa.map_(pa.string(), pa.int64())),
        "binary": pa.array([b"\x00\xff", b"", None, b"abc", b"\x80"], pa.binary()),
        "large_binary": pa.array([b"abc", None, b"\x80", b"", b"\x00"], pa.large_binary()),
        "dictionary": pa.array(["red", "blue", None, "red", "green"]).dictionary_encode(),
        "timestamp_tz": pa.array([datetime.datetime(2024, 1, 1, 12, tzinfo=utc), None,
                                  datetime.datetime(1970, 1, 1, tzinfo=utc), datetime.datetime(2000, 2, 29, tzinfo=utc),
                                  datetime.datetime(2262, 4, 11, tzinfo=utc)], pa.timestamp("us", tz="Europe/Paris")),
        "large_string": pa.array(["é", "", None, "\U0001f408", "x" * 1000], pa.large_string()),
        "decimal": pa.array([decimal.Decimal("1.23"), None, decimal.Decimal("-99.99"), decimal.Decimal("0.00"),
                             decimal.Decimal("999.99")], pa.decimal128(5, 2)),
        "date": pa.array([datetime.date(2020, 2, 29), None, datetime.date(1, 1, 1), datetime.date(9999, 12, 31),
                          datetime.date(1970, 1, 1)], pa.date32()),
        "uint8": pa.array([0, 255, None, 1, 128], pa.uint8()),
        "float32": pa.array([1.5, math.nan, None, -0.0, math.inf], pa.float32()),
        "all_null": pa.nulls(5),
    }
    if hasattr(pa, "string_view"):  # pyarrow >= 16; pandas reads it back only through tolist
        columns["string_view"] = pa.array(["a", None, "c", "", "é"], pa.string_view())
    return pa.table(columns)


def _same_values(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Equality that counts NaN as equal to NaN (Arrow's ``equals`` does not)."""
    def key(v: object) -> object:
        return "NaN" if isinstance(v, float) and math.isnan(v) else v

    return [key(v) for v in a.to_pylist()] == [key(v) for v in b.to_pylist()]


@pytest.fixture()
def typed_input(run_dir) -> Path:
    path = run_dir / "typed.parquet"
    table = _typed_table()
    try:
        pq.write_table(table, path, row_group_size=2)  # three row groups, chunks of 3 rows straddle them
    except pa.ArrowNotImplementedError:  # a pyarrow that cannot write string_view to parquet
        pq.write_table(table.drop_columns(["string_view"]), path, row_group_size=2)
    return path


def test_parquet_types_come_back_unchanged(run_dir, tiny_model_dir, typed_input):
    succeeded(cli("typed.parquet", "-m", tiny_model_dir, "-o", "out.parquet", "--chunk-rows", 3, "--device", "cpu",
                  "-q", cwd=run_dir))
    given, got = pq.read_schema(typed_input), pq.read_schema(run_dir / "out.parquet")
    assert got.names == given.names + ["longclip_score", "longclip_score_error"]
    for field in given:
        assert got.field(field.name).type == field.type, field.name
    before, after = pq.read_table(typed_input), pq.read_table(run_dir / "out.parquet")
    for name in given.names:
        assert _same_values(before[name], after[name]), name
    assert after["longclip_score_error"].to_pylist()[2].startswith("missing_file: ")
    frame = pd.read_parquet(run_dir / "out.parquet")
    assert frame.shape == (5, len(given.names) + 2)
    assert frame["longclip_score"].notna().tolist() == [True, True, False, False, False]


def test_parquet_types_as_jsonl_and_csv_are_readable(run_dir, tiny_model_dir, typed_input):
    import base64
    import csv

    for suffix in (".jsonl", ".csv"):
        succeeded(cli("typed.parquet", "-m", tiny_model_dir, "-o", f"out{suffix}", "--chunk-rows", 3,
                      "--device", "cpu", "-q", cwd=run_dir))
    names = pq.read_schema(typed_input).names + ["longclip_score", "longclip_score_error"]
    lines = read_jsonl(run_dir / "out.jsonl")
    assert [list(r) for r in lines] == [names] * 5
    assert lines[0]["struct"] == {"a": 1, "b": "x"} and lines[0]["list"] == [1, 2] and lines[3]["map"] == [["a", 2],
                                                                                                          ["b", 3]]
    assert base64.b64decode(lines[0]["binary"]) == b"\x00\xff" and lines[0]["dictionary"] == "red"
    assert lines[0]["decimal"] == "1.23" and lines[0]["date"] == "2020-02-29" and lines[1]["uint8"] == 255
    with open(run_dir / "out.csv", encoding="utf-8", newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == names and len(records) == 6 and all(len(r) == len(names) for r in records)
    row = dict(zip(names, records[1]))
    assert json.loads(row["struct"]) == {"a": 1, "b": "x"} and base64.b64decode(row["large_binary"]) == b"abc"
    if "string_view" in names:
        assert [dict(zip(names, r))["string_view"] for r in records[1:]] == ["a", "", "c", "", "é"]


MIXED_KINDS = [
    {"image_path": "ok.jpg", "text": "a", "ints_strings": 1, "ints_dicts": 1, "big": 2**70, "ints_floats": 1,
     "nulls": None, "objects": {"a": 1}, "bools_ints": True, "lists": [1, 2], "clashing_lists": [1, "a"],
     "int64_edges": 2**63 - 1, "past_2_53": 2**53 + 1, "empty_objects": {}, "nested_surrogate_key": {"\ud800": 1}},
    {"image_path": "ok.jpg", "text": "b", "ints_strings": "two", "ints_dicts": {"k": [1]}, "big": 3,
     "ints_floats": 2.5, "nulls": None, "objects": {"b": "x"}, "bools_ints": 1, "lists": [], "clashing_lists": [2],
     "int64_edges": -(2**63), "past_2_53": 0.5, "empty_objects": {}, "nested_surrogate_key": {"k": 2}},
    {"image_path": "ok.jpg", "text": "c", "ints_floats": math.nan, "objects": {"a": 2, "c": [1]}},
]
WANT_KINDS = {  # column: (its parquet type, its values)
    "ints_strings": ("string", ["1", "two", None]),
    "ints_dicts": ("string", ["1", '{"k": [1]}', None]),
    "big": ("string", [str(2**70), "3", None]),
    "ints_floats": ("double", [1.0, 2.5, "NaN"]),
    "nulls": ("null", [None, None, None]),
    "objects": ("struct<a: int64, b: string, c: list<element: int64>>",
                [{"a": 1, "b": None, "c": None}, {"a": None, "b": "x", "c": None}, {"a": 2, "b": None, "c": [1]}]),
    "bools_ints": ("string", ["true", "1", None]),
    "lists": ("list<element: int64>", [[1, 2], [], None]),
    "clashing_lists": ("string", ['[1, "a"]', "[2]", None]),
    "int64_edges": ("int64", [2**63 - 1, -(2**63), None]),
    "past_2_53": ("string", [str(2**53 + 1), "0.5", None]),
    "empty_objects": ("string", ["{}", "{}", None]),  # parquet cannot write a struct without fields
    "nested_surrogate_key": ("string", ['{"\ufffd": 1}', '{"k": 2}', None]),
}


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_columns_get_parquet_types_by_the_rule(run_dir, tiny_model_dir, suffix):
    path = run_dir / f"kinds{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, MIXED_KINDS)
    else:
        path.write_text(json.dumps(MIXED_KINDS))
    succeeded(cli(path.name, "-m", tiny_model_dir, "-o", "out.parquet", "--chunk-rows", 2, "--device", "cpu", "-q",
                  cwd=run_dir))
    table = pq.read_table(run_dir / "out.parquet")
    for name, (kind, values) in WANT_KINDS.items():
        assert str(table.schema.field(name).type) == kind, name
        got = ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in table[name].to_pylist()]
        assert got == values, name
    assert table["longclip_score_error"].to_pylist() == ["", "", ""]


# --- 3. a full disk -------------------------------------------------------------------------------------------------

ROWS_BIG = 200
DISK_CHUNK_ROWS = 50


@pytest.fixture(scope="module")
def big_input(tmp_path_factory, tiny_model_dir):
    """200 rows of about 3 KB each that does not compress (so no output fits in 240 KB), and a reference output
    per format from an uninterrupted run elsewhere (made on first use)."""
    folder = tmp_path_factory.mktemp("big")
    shutil.copy(OK_JPG, folder / "ok.jpg")
    rng = random.Random(0)
    write_jsonl(folder / "big.jsonl", [{"image_path": str(folder / "ok.jpg"), "text": f"caption {i % 5}",
                                        "blob": rng.randbytes(1500).hex()} for i in range(ROWS_BIG)])
    made: dict[str, Path] = {}

    def reference(suffix: str) -> Path:
        if suffix not in made:
            succeeded(cli("big.jsonl", "-o", f"ref{suffix}", *big_args(tiny_model_dir), cwd=folder))
            made[suffix] = folder / f"ref{suffix}"
        return made[suffix]

    return folder / "big.jsonl", reference


def big_args(model: Path) -> list[object]:
    return ["-m", model, "--chunk-rows", DISK_CHUNK_ROWS, "--device", "cpu", "-q"]


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _quiet(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk]):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield disk
    finally:
        assert _quiet(["umount", disk])


def work_files(output: Path) -> list[str]:
    return sorted(p.name for p in (output.parent / f".{output.name}.longclip-run").iterdir())


CHUNKS_AND_STATE = [f"chunk-{i:07d}.npz" for i in range(ROWS_BIG // DISK_CHUNK_ROWS)] + ["state.json"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_full_disk_is_one_line_and_resume_finishes_the_same_file(small_disk, big_input, tiny_model_dir, suffix):
    source, reference = big_input
    (small_disk / "filler").write_bytes(b"\0" * 800_000)  # leaves about 240 KB: the chunks fit, the output not
    output = small_disk / f"out{suffix}"
    run = cli(source, "-o", output, *big_args(tiny_model_dir), cwd=source.parent)
    refused(run, f"cannot write {str(output)!r}: [Errno 28] ")
    assert "run again with --resume" in run.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == [f".{output.name}.longclip-run", "filler"]  # no .partial
    assert work_files(output) == CHUNKS_AND_STATE  # every chunk kept
    (small_disk / "filler").unlink()
    succeeded(cli(source, "-o", output, *big_args(tiny_model_dir), "--resume", cwd=source.parent))
    assert output.read_bytes() == reference(suffix).read_bytes()
    assert sorted(p.name for p in small_disk.iterdir()) == [output.name]


def test_a_disk_full_from_the_start_is_one_line(small_disk, big_input, tiny_model_dir):
    source, _ = big_input
    with open(small_disk / "filler", "wb") as f:
        try:
            f.write(b"\0" * (2 << 20))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    refused(cli(source, "-o", small_disk / "out.jsonl", *big_args(tiny_model_dir), cwd=source.parent), "[Errno 28]")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_file_size_limit_is_one_line_and_resume_finishes_the_same_file(tmp_path, big_input, tiny_model_dir):
    source, reference = big_input
    limit = 64 << 10  # the chunks and the lock stay below it, the output does not; Python ignores SIGXFSZ: EFBIG
    output = tmp_path / "out.jsonl"
    # --decode-workers 0: the limit would also refuse the decode workers' shared memory (a warning, and threads)
    run = cli(source, "-o", output, *big_args(tiny_model_dir), "--decode-workers", "0", cwd=source.parent,
              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    refused(run, f"cannot write {str(output)!r}: [Errno 27] File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.jsonl.longclip-run"]  # no .partial, no lock
    assert work_files(output) == CHUNKS_AND_STATE
    succeeded(cli(source, "-o", output, *big_args(tiny_model_dir), "--resume", cwd=source.parent))
    assert output.read_bytes() == reference(".jsonl").read_bytes()


# --- 4. resume only what is the same --------------------------------------------------------------------------------

RESUME_ROWS = 40


def interrupted(folder: Path, model: Path) -> list[object]:
    """A run of 40 rows killed (SIGKILL) after 2 of its 4 chunks; returns its arguments."""
    shutil.copy(OK_JPG, folder / "ok.jpg")
    write_jsonl(folder / "in.jsonl", [{"image_path": "ok.jpg", "text": f"caption number {i:03d}"}
                                      for i in range(RESUME_ROWS)])
    args = ["in.jsonl", "-o", "out.jsonl", "-m", model, "--chunk-rows", 10, "--device", "cpu"]
    killed_run(*args, cwd=folder, at="chunk-0000002.npz")
    chunks = [name for name in work_files(folder / "out.jsonl") if name.startswith("chunk-")]
    assert chunks == ["chunk-0000000.npz", "chunk-0000001.npz"]
    return args


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("stopped")
    return folder, interrupted(folder, tiny_model_dir)


def without_debris(files: dict[str, bytes | None]) -> dict[str, bytes | None]:
    """``files`` less what a killed run leaves that a later run on its output clears (we then hold its lock): its
    empty ``.partial`` and its lock file. A refused resume may clear them; it adds nothing and keeps the chunks."""
    return {name: data for name, data in files.items() if not name.endswith((".partial", ".longclip-run.lock"))}


def test_resume_refuses_other_options(stopped):
    folder, args = stopped
    before = without_debris(snapshot(folder))
    refused(cli(*args, "--batch-size", 7, "--resume", cwd=folder), "cannot resume: options changed")
    assert snapshot(folder) == before


def test_resume_refuses_another_model(stopped, other_model_dir):
    folder, args = stopped
    before = without_debris(snapshot(folder))
    model = args.index("-m") + 1
    changed = [*args[:model], other_model_dir, *args[model + 1:]]
    refused(cli(*changed, "--resume", cwd=folder), "cannot resume: model changed")
    assert snapshot(folder) == before


def test_resume_refuses_an_edit_that_keeps_size_and_mtime(tmp_path, tiny_model_dir):
    args = interrupted(tmp_path, tiny_model_dir)
    source = tmp_path / "in.jsonl"
    original, st = source.read_bytes(), source.stat()
    source.write_bytes(original.replace(b"caption number 017", b"caption number 071"))  # chunk 1: already scored
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    before = without_debris(snapshot(tmp_path))
    refused(cli(*args, "--resume", cwd=tmp_path),
            f"cannot resume: input {str(source.resolve())!r} changed since the interrupted run")
    assert snapshot(tmp_path) == before
    source.write_bytes(original)  # the same bytes again: the same run, resumable
    run = succeeded(cli(*args, "--resume", cwd=tmp_path))
    assert "resumed: 20 rows were already scored" in run.stderr
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["text"] for r in out] == [f"caption number {i:03d}" for i in range(RESUME_ROWS)]
    assert all(r["longclip_score_error"] == "" and 0 <= r["longclip_score"] <= 1 for r in out)


# --- 5. smaller ----------------------------------------------------------------------------------------------------

def test_nan_infinity_and_absent_keys_survive_jsonl(run_dir, tiny_model_dir):
    (run_dir / "in.jsonl").write_text('{"image_path": "ok.jpg", "text": "a", "x": NaN, "y": Infinity, "z": -Infinity}\n'
                                      '{"image_path": "ok.jpg", "text": "b"}\n'
                                      '{"image_path": "ok.jpg", "text": "c", "x": null, "w": 1}\n'
                                      '{}\n')
    succeeded(cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--device", "cpu", "-q", cwd=run_dir))
    lines = (run_dir / "out.jsonl").read_text().splitlines()
    assert '"x": NaN, "y": Infinity, "z": -Infinity, "longclip_score": 0.' in lines[0]
    rows = [json.loads(line) for line in lines]
    assert [list(r) for r in rows] == [["image_path", "text", "x", "y", "z", "longclip_score", "longclip_score_error"],
                                       ["image_path", "text", "longclip_score", "longclip_score_error"],
                                       ["image_path", "text", "x", "w", "longclip_score", "longclip_score_error"],
                                       ["longclip_score", "longclip_score_error"]]
    assert rows[2]["x"] is None and rows[2]["w"] == 1
    assert [r["longclip_score_error"][:10] for r in rows] == ["", "", "", "null_path:"]


def test_a_crlf_csv_is_read_as_written(run_dir, tiny_model_dir):
    import csv

    (run_dir / "in.csv").write_bytes(b'image_path,text,id,note\r\nok.jpg,a cat,007,\r\n\r\n'
                                     b'ok.jpg,"two\r\nlines",NaN,"a ""quote"""\r\n')
    succeeded(cli("in.csv", "-m", tiny_model_dir, "-o", "out.csv", "--device", "cpu", "-q", cwd=run_dir))
    with open(run_dir / "out.csv", encoding="utf-8", newline="") as f:
        header, *records = list(csv.reader(f))
    assert header == ["image_path", "text", "id", "note", "longclip_score", "longclip_score_error"]
    assert [r[:4] for r in records] == [["ok.jpg", "a cat", "007", ""], ["ok.jpg", "two\r\nlines", "NaN", 'a "quote"']]
    assert all(0 <= float(r[4]) <= 1 and r[5] == "" for r in records)


def test_a_parquet_output_named_with_a_byte_that_is_not_utf8(run_dir, tiny_model_dir):
    """pyarrow takes paths as UTF-8 text; the output (and its .partial) is a file like any other."""
    name = os.fsdecode(b"scored-\xff.parquet")  # how Python spells that name: a lone surrogate
    succeeded(cli("in.jsonl", "-m", tiny_model_dir, "-o", name, "--device", "cpu", "-q", cwd=run_dir))
    assert sorted(os.listdir(os.fsencode(run_dir))) == [b"in.jsonl", b"ok.jpg", b"scored-\xff.parquet"]
    with open(run_dir / name, "rb") as f:
        table = pq.read_table(f)
    assert table["text"].to_pylist() == ["a cat", "a dog"] and table["longclip_score_error"].to_pylist() == ["", ""]
