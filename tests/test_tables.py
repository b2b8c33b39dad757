"""Row files in and out: CSV read exactly as written (never shifted, padded or indexed), same_file however spelled."""

import os

import pandas as pd
import pytest

from longclip.runtime.contract.errors import InputError
from longclip.runtime.inputs.tables import TableReader, read_table, same_file
from longclip.runtime.outputs.writers import TableWriter


def _csv(tmp_path, text, name="in.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.mark.parametrize(("text", "message"), [
    ("image_path,text\na.jpg,one,extra\nb.jpg,two\n", "record 1 (line 2) has 3 fields, the header has 2"),
    ("image_path,text\na.jpg,one\nb.jpg\n", "record 2 (line 3) has 1 fields, the header has 2"),
    ("image_path,text,id\na.jpg,one,1\nb.jpg,two\n", "record 2 (line 3) has 2 fields, the header has 3"),
    ('image_path,text\na.jpg,"a\nlong, caption"\nb.jpg,two,3\n', "record 2 (line 4) has 3 fields"),
    ('image_path,text\na.jpg,"unclosed\n', "is not valid CSV"),
    ('image_path,text\na.jpg,"x"y\n', "is not valid CSV"),
    ("image_path,text,image_path\na,b,c\n", "has the column name(s) ['image_path'] more than once"),
])
def test_csv_records_that_do_not_fit_the_header_are_refused(tmp_path, text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        TableReader(_csv(tmp_path, text))


def test_csv_is_read_as_written(tmp_path):
    big = "word " * 40_000  # 200 KB: over Python csv's default field limit
    text = ('\ufeffimage_path,text,id\n'
            'a.jpg,"a caption, with a comma",007\n'
            '\n'  # a blank line is not a record
            'b.jpg,"two\nlines",\n'
            f'c.jpg,{big},NaN\n')
    frame = read_table(_csv(tmp_path, text))
    assert list(frame.columns) == ["image_path", "text", "id"]
    assert frame.values.tolist() == [["a.jpg", "a caption, with a comma", "007"], ["b.jpg", "two\nlines", ""],
                                     ["c.jpg", big, "NaN"]]
    assert [len(c) for c in TableReader(tmp_path / "in.csv").chunks(2)] == [2, 1]


def test_csv_first_row_with_an_extra_field_never_becomes_an_index(tmp_path):
    """pandas would take the first column as the index: every image path lost, texts moved to image_path."""
    path = _csv(tmp_path, "image_path,text\na.jpg,one,x\nb.jpg,two,y\n")
    assert len(pd.read_csv(path, dtype=str)) == 2  # what pandas does, silently
    with pytest.raises(InputError, match="record 1 \\(line 2\\) has 3 fields"):
        TableReader(path)


def test_header_only_csv(tmp_path):
    reader = TableReader(_csv(tmp_path, "image_path,text\n"))
    assert (reader.columns, reader.n_rows, list(reader.chunks(4))) == (["image_path", "text"], 0, [])


def test_same_file_however_spelled(tmp_path, monkeypatch):
    (tmp_path / "in.jsonl").write_text("{}\n")
    os.link(tmp_path / "in.jsonl", tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(tmp_path / "in.jsonl")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for spelling in ("../in.jsonl", f"{tmp_path}/sub/../in.jsonl", "../hard.jsonl", "../soft.jsonl"):
        assert same_file(tmp_path / "in.jsonl", spelling), spelling
    assert not same_file(tmp_path / "in.jsonl", "../other.jsonl")
    assert same_file("../new.jsonl", tmp_path / "new.jsonl")  # neither exists: same resolved path


def test_writer_refuses_a_folder_and_a_missing_folder(tmp_path):
    (tmp_path / "out.jsonl").mkdir()
    with pytest.raises(InputError, match="it is a folder"):
        TableWriter.check(tmp_path / "out.jsonl")
    with pytest.raises(InputError, match="folder .* does not exist"):
        TableWriter.check(tmp_path / "no" / "out.jsonl")
    with pytest.raises(InputError, match="unsupported file type '.txt'"):
        TableWriter.check(tmp_path / "out.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # nothing created
