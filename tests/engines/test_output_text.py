"""Every output stays readable by the common readers whatever bytes the input's names and values held: a tar member
name that is not UTF-8, a jsonl value with an invalid byte, an escaped lone surrogate anywhere. Such text is written
as U+FFFD in every format (a ``"\\udcff"`` escape in jsonl made the whole file unreadable to ``pd.read_json`` and
``pyarrow.json`` for one row)."""

import io
import json
import os
import tarfile

import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from conftest import GOLDENS
from longclip.runtime import LongCLIP
from longclip.runtime.decode.pool import ImageSpec, make_pool
from longclip.runtime.engines.local import run_file
from longclip.runtime.engines.options import RunOptions

JPG = (GOLDENS / "images" / "small_41x97.jpg").read_bytes()
FORMATS = (".jsonl", ".json", ".csv", ".parquet")

# sample keys as raw bytes: an invalid byte, Latin-1, a cut-off sequence, an encoded surrogate (CESU-8), and ASCII
NAMES = [b"a\xff", b"caf\xe9", b"cut\xc3", b"\xed\xa0\x80x", b"ok"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return LongCLIP(tiny_model_dir, device="cpu")


def _scored(model, src, folder):
    """Each format's output of ``src`` as pandas reads it, once pyarrow has read it too."""
    with make_pool(ImageSpec.of(model.manifest, 10**8), 8, 0) as pool:
        for suffix in FORMATS:
            run_file(model, src, folder / f"out{suffix}", RunOptions(chunk_rows=3), progress=False, pool=pool)
    frames = {}
    for suffix in FORMATS:
        path = folder / f"out{suffix}"
        if suffix == ".jsonl":
            frames[suffix] = pd.read_json(path, lines=True, dtype=False)
            pa_json.read_json(path)
        elif suffix == ".json":
            frames[suffix] = pd.read_json(path, dtype=False)
        elif suffix == ".csv":
            frames[suffix] = pd.read_csv(path, dtype=str, keep_default_na=False)
            pa_csv.read_csv(path)
        else:
            frames[suffix] = pd.read_parquet(path)
            pq.read_table(path)
        if suffix != ".parquet":
            path.read_bytes().decode("utf-8")  # UTF-8 throughout
    return frames


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_member_names_that_are_not_utf8_leave_every_output_readable(tmp_path, model, fmt):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name in NAMES:
            for ext, data in ((b".jpg", JPG), (b".txt", b"a photo")):
                info = tarfile.TarInfo(os.fsdecode(name + ext))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert b"a\xff.jpg" in buffer.getvalue()
    (tmp_path / "s.tar").write_bytes(buffer.getvalue())
    for suffix, frame in _scored(model, tmp_path / "s.tar", tmp_path).items():
        assert len(frame) == len(NAMES), suffix
        assert frame["__key__"].tolist() == ["a\ufffd", "caf\ufffd", "cut\ufffd", "\ufffd\ufffd\ufffdx", "ok"], suffix
        reasons = frame["longclip_score_error"].tolist()
        assert reasons[-1] == ""
        assert [r.split(":")[0] for r in reasons[:-1]] == ["bad_encoding"] * 4, suffix
        assert "the name of sample 'a\\udcff' in " in reasons[0]  # the bytes named in the reason, as escapes


def test_invalid_bytes_and_lone_surrogates_in_jsonl_values_leave_every_output_readable(tmp_path, model):
    (tmp_path / "ok.jpg").write_bytes(JPG)
    lines = [b'{"image_path": "ok.jpg", "text": "a byte \xff in the text", "note": "n"}',
             b'{"image_path": "ok.jpg", "text": "fine", "note": "a byte \xfe in another column"}',
             b'{"image_path": "ok.jpg", "text": "an escape \\ud800 in the text", "note": "n"}',
             b'{"image_path": "ok.jpg", "text": "fine", "note": "low \\udfff and high \\udbff"}',
             b'{"image_path": "ok.jpg", "text": "fine", "note": "n", "nested": {"k\\udc80": ["v\\ud834"]}}',
             b'{"image_path": "ok\\udcff.jpg", "text": "fine", "note": "n"}',
             b'{"image_path": "ok.jpg", "text": "fine", "note": "n"}']
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative image paths
    try:
        frames = _scored(model, tmp_path / "in.jsonl", tmp_path)
    finally:
        os.chdir(cwd)
    for suffix, frame in frames.items():
        assert frame["text"].tolist()[:3] == ["a byte \ufffd in the text", "fine", "an escape \ufffd in the text"]
        assert frame["note"].tolist()[1] == "a byte \ufffd in another column"
        assert frame["note"].tolist()[3] == "low \ufffd and high \ufffd"
        assert frame["image_path"].tolist()[5] == "ok\ufffd.jpg"
        nested = frame["nested"].tolist()[4]
        assert (json.loads(nested) if isinstance(nested, str) else dict(nested)) in (
            {"\ufffd": ["v\ufffd"]}, {"k\ufffd": ["v\ufffd"]}), suffix
        codes = [r.split(":")[0] for r in frame["longclip_score_error"]]
        assert codes == ["bad_encoding", "bad_encoding", "bad_text", "", "", "bad_path", ""], suffix
