"""longclip-run: formats, row-level reasons, run-level refusals, atomic output, SIGKILL + --resume."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import GOLDENS
from interrupt import killed_part_way, stopped_after_first_chunk

from longclip.runtime import LongCLIP
from longclip.runtime.contract.errors import InputError
from longclip.runtime.engines.local import run_file, work_dir_for
from longclip.runtime.engines.options import RunOptions
from longclip.runtime.inputs.tables import TableReader, read_table

IMG = GOLDENS / "images"
NAMES = ["rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png", "gray_64x50.png", "animated_50x70.gif"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return LongCLIP(tiny_model_dir, device="cpu")


def _rows(n):
    return [{"image_path": NAMES[i % len(NAMES)], "text": f"caption number {i % 7} about a scene", "id": i,
             "tags": ["a", "b"][: i % 3]} for i in range(n)]


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).drop(columns="tags").to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path, index=False)


def _cli(*args, cwd, timeout=120):
    cmd = [sys.executable, "-m", "longclip.runtime.cli.run", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("src", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("dst", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_pair_keeps_rows_and_columns(tmp_path, model, src, dst):
    rows = _rows(23)
    _write(tmp_path / f"in{src}", rows)
    summary = run_file(model, tmp_path / f"in{src}", tmp_path / f"out{dst}",
                       RunOptions(image_root=str(IMG), chunk_rows=5), progress=False)
    assert (summary.rows, summary.scored) == (23, 23)
    out = read_table(tmp_path / f"out{dst}")
    inp = read_table(tmp_path / f"in{src}")
    assert list(out.columns) == list(inp.columns) + ["longclip_score", "longclip_score_error"]
    assert [str(v) for v in out["id"]] == [str(r["id"]) for r in rows]
    assert out["image_path"].tolist() == [r["image_path"] for r in rows]
    want = model.score([IMG / r["image_path"] for r in rows], [r["text"] for r in rows])
    np.testing.assert_allclose(out["longclip_score"].astype(float), want, rtol=1e-6)
    assert (out["longclip_score_error"] == "").all()
    assert not list(tmp_path.glob(".out*"))  # no temporary or work files left behind
    assert (tmp_path / f"out{dst}").stat().st_mode & 0o777 == 0o644


def test_an_output_gets_the_mode_of_a_new_file_under_the_umask(tmp_path, model):
    _write(tmp_path / "in.jsonl", _rows(3))
    old = os.umask(0o077)  # a private umask: the scores must not become world-readable
    try:
        run_file(model, tmp_path / "in.jsonl", tmp_path / "out.csv", RunOptions(image_root=str(IMG)), progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("dst", [".csv", ".parquet"])
def test_input_without_rows_gives_an_output_with_the_columns(tmp_path, model, dst):
    (tmp_path / "in.csv").write_text("image_path,text,id\n")
    summary = run_file(model, tmp_path / "in.csv", tmp_path / f"out{dst}", progress=False)
    assert summary.rows == 0
    assert list(read_table(tmp_path / f"out{dst}").columns) == ["image_path", "text", "id", "longclip_score",
                                                                 "longclip_score_error"]


def test_jsonl_round_trip_is_exact(tmp_path, model):
    rows = [{"image_path": NAMES[0], "text": "a", "n": 1, "nested": {"x": [1, 2]}},
            {"image_path": NAMES[1], "text": "b", "only_here": None},
            {"text": "c", "image_path": NAMES[2], "n": 2.5}]
    _write(tmp_path / "in.jsonl", rows)
    run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", RunOptions(image_root=str(IMG)), progress=False)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for got, want in zip(out, rows):
        extra = {k: got.pop(k) for k in ("longclip_score", "longclip_score_error")}
        assert got == want and 0 <= extra["longclip_score"] <= 1  # absent keys stay absent, null stays null


def test_chunking_and_dedup(tmp_path, model, monkeypatch):
    rows = _rows(40)
    _write(tmp_path / "in.jsonl", rows)
    seen = []
    original = model.vision.run
    monkeypatch.setattr(model.vision, "run", lambda out, feeds, *rest: seen.append(len(feeds["pixel_values"])) or
                        original(out, feeds, *rest), raising=False)
    run_file(model, tmp_path / "in.jsonl", tmp_path / "a.jsonl", RunOptions(image_root=str(IMG), chunk_rows=20),
             progress=False)
    assert sum(seen) == 2 * len(NAMES)  # two chunks, each distinct image encoded once per chunk
    run_file(model, tmp_path / "in.jsonl", tmp_path / "b.jsonl", RunOptions(image_root=str(IMG), chunk_rows=7),
             progress=False)
    a, b = read_table(tmp_path / "a.jsonl"), read_table(tmp_path / "b.jsonl")
    np.testing.assert_allclose(a["longclip_score"].astype(float), b["longclip_score"].astype(float), rtol=1e-6)


def test_row_level_problems_never_stop_the_run(tmp_path, model):
    from test_preprocess import _png_header

    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    data = (IMG / "small_41x97.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "bomb.png").write_bytes(_png_header(40_000, 40_000))
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "ok.jpg")
    cases = [("ok.jpg", "fine", ""), ("missing.png", "x", "missing_file"), ("empty.png", "x", "empty_file"),
             ("text.png", "x", "not_an_image"), ("cut.jpg", "x", "undecodable"), (".", "x", "directory"),
             ("bomb.png", "x", "too_many_pixels"), (None, "x", "null_path"), (7, "x", "bad_path"),
             ("ok.jpg", None, "null_text"), ("ok.jpg", "", "empty_text"), ("ok.jpg", " \n\t", "empty_text"),
             ("ok.jpg", 3, "not_text")]
    _write(tmp_path / "in.jsonl", [{"image_path": i, "text": t} for i, t, _ in cases])
    summary = run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", RunOptions(image_root=str(tmp_path)),
                       progress=False)
    out = read_table(tmp_path / "out.jsonl")
    assert [e.split(":")[0] for e in out["longclip_score_error"]] == [c for *_, c in cases]
    assert np.isfinite(out["longclip_score"].iloc[0]) and out["longclip_score"].iloc[1:].isna().all()
    assert summary.scored == 1 and summary.failed["empty_text"] == 2 and sum(summary.failed.values()) == 12


def test_cli_summary_and_image_root_default(tmp_path, tiny_model_dir):
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "1.png")
    _write(tmp_path / "in.jsonl", [{"image_path": "1.png", "text": "a man and a woman in a car"},
                                   {"image_path": "gone.png", "text": "word " * 300}])
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "rows 2: scored 1, failed 1 (missing_file 1)" in proc.stderr
    assert "texts cut at 248 tokens: 1" in proc.stderr and "rows/s" in proc.stderr and "CPUExecutionProvider" in proc.stderr
    assert "\r" not in proc.stderr  # no progress bar when stderr is not a terminal
    assert "embeddings folder" not in proc.stderr  # no --embeddings: the summary says nothing of one
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert out["longclip_score_error"].tolist()[0] == "" and "missing_file" in out["longclip_score_error"][1]


def test_progress_bar_when_asked(tmp_path, model, capsys):
    _write(tmp_path / "in.jsonl", _rows(4))
    run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", RunOptions(image_root=str(IMG)), progress=True)
    assert "4/4" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "args", "message"), [
    ('{"image_path": "a", "text": "b"}\nnot json\n', (), "in.jsonl' line 2 is not valid JSON"),
    ('[1, 2]\n', (), "line 1 is a JSON list, not an object"),
    ('{"img": "a", "text": "b"}\n', (), "column 'image_path' not in the input; columns are ['img', 'text']"),
    ('{"image_path": "a", "text": "b"}\n', ("-m", "no-such-model"), "model 'no-such-model' does not exist"),
    ('{"image_path": "a", "text": "b"}\n', ("-o", "missing/out.jsonl"), "folder 'missing' does not exist"),
    ('{"image_path": "a", "text": "b"}\n', ("-o", "out.txt"), "unsupported file type '.txt'"),
])
def test_run_level_problems_exit_with_one_line(tmp_path, tiny_model_dir, content, args, message):
    (tmp_path / "in.jsonl").write_text(content)
    opts = {"-m": str(tiny_model_dir), "-o": "out.jsonl"}
    opts.update(dict(zip(args[::2], args[1::2])))
    proc = _cli("in.jsonl", *[x for kv in opts.items() for x in kv], cwd=tmp_path)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_sigkill_then_resume_gives_the_same_file(tmp_path, tiny_model_dir):
    rows = _rows(900)
    _write(tmp_path / "in.jsonl", rows)
    common = ["-m", tiny_model_dir, "--image-root", IMG, "--chunk-rows", "10", "--device", "cpu"]
    reference = _cli("in.jsonl", "-o", "ref.parquet", *common, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    done = killed_part_way(["in.jsonl", "-o", "out.parquet", *common], tmp_path, tmp_path / "out.parquet", 5)
    work = work_dir_for(tmp_path / "out.parquet")
    assert 5 <= done < 90, "the run should have been killed part-way"
    assert not (tmp_path / "out.parquet").exists()  # never a partial output
    resumed = _cli("in.jsonl", "-o", "out.parquet", *common, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed: {done * 10} rows were already scored" in resumed.stderr
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "ref.parquet").read_bytes()
    assert not work.exists()


def test_resume_refuses_a_changed_input(tmp_path, model):
    _write(tmp_path / "in.jsonl", _rows(6))
    work = work_dir_for(tmp_path / "out.jsonl")
    work.mkdir()
    (work / "state.json").write_text(json.dumps({"input": "elsewhere"}))
    from longclip.runtime.contract.errors import InputError

    with pytest.raises(InputError, match="cannot resume: input"):
        run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", RunOptions(image_root=str(IMG)), resume=True,
                 progress=False)
    run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", RunOptions(image_root=str(IMG)), progress=False)
    assert len(read_table(tmp_path / "out.jsonl")) == 6


def _interrupted_run(tmp_path, model, monkeypatch, rows=12, chunk_rows=4):
    """A run stopped (as by Ctrl-C) after its first chunk: its work folder holds that chunk."""
    _write(tmp_path / "in.jsonl", _rows(rows))
    opts = RunOptions(image_root=str(IMG), chunk_rows=chunk_rows)
    with stopped_after_first_chunk(monkeypatch):
        run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    assert len(list(work_dir_for(tmp_path / "out.jsonl").glob("chunk-*.npz"))) == 1
    assert not (tmp_path / "out.jsonl").exists()
    return opts


def test_resume_continues_with_the_same_model(tmp_path, model, monkeypatch):
    opts = _interrupted_run(tmp_path, model, monkeypatch)
    summary = run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, resume=True, progress=False)
    assert (summary.rows, summary.resumed_rows) == (12, 4)


def test_resume_refuses_another_model(tmp_path, model, other_model_dir, monkeypatch):
    from longclip.runtime.contract.errors import InputError

    opts = _interrupted_run(tmp_path, model, monkeypatch)
    other = LongCLIP(other_model_dir, device="cpu")
    with pytest.raises(InputError, match="cannot resume: model changed"):
        run_file(other, tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, resume=True, progress=False)


def test_a_row_with_an_image_and_a_text_fault_gets_the_image_reason(tmp_path, model):
    rows = [{"image_path": "missing.png", "text": ""}, {"image_path": None, "text": 3},
            {"image_path": NAMES[0], "text": ""}, {"image_path": "missing.png", "text": "fine"}]
    _write(tmp_path / "in.jsonl", rows)
    run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", RunOptions(image_root=str(IMG)), progress=False)
    reasons = read_table(tmp_path / "out.jsonl")["longclip_score_error"].tolist()
    assert [r.split(":")[0] for r in reasons] == ["missing_file", "null_path", "empty_text", "missing_file"]


def test_texts_are_counted_as_cut_above_248_tokens_only(tmp_path, model):
    """Each "a" is one BPE token: 246 of them fill the 248-token context exactly (SOT, 246, EOT); 247 are cut."""
    texts = [" ".join(["a"] * n) for n in (245, 246, 247, 400)]
    assert [int(n) for n in model.tokenizer.batch(texts)[1]][:3] == [247, 248, 249]
    _write(tmp_path / "in.jsonl", [{"image_path": NAMES[0], "text": t} for t in texts])
    summary = run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", RunOptions(image_root=str(IMG)),
                       progress=False)
    assert (summary.scored, summary.truncated) == (4, 2)
    assert "texts cut at 248 tokens: 2" in summary.report()


def test_reader_counts_rows_and_columns(tmp_path):
    _write(tmp_path / "in.jsonl", [{"a": 1}, {"b": 2}, {"a": 3, "c": 4}])
    reader = TableReader(tmp_path / "in.jsonl")
    assert (reader.columns, reader.n_rows) == (["a", "b", "c"], 3)
    assert [len(c) for c in reader.chunks(2)] == [2, 1]


def test_image_bytes_in_a_parquet_column_score_as_the_same_files(tmp_path, model):
    """A binary image column: each cell decoded as a file with those bytes is (same scores, same reasons), and
    cells with the same bytes are encoded once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = NAMES * 2
    cells = [(IMG / n).read_bytes() for n in names] + [b"", b"not an image", (IMG / NAMES[0]).read_bytes()[:200]]
    texts = [f"caption {i}" for i in range(len(cells))]
    pq.write_table(pa.table({"image_path": pa.array(cells, pa.binary()), "text": texts}), tmp_path / "bytes.parquet")
    seen = []
    original = model.vision.run
    model.vision.run = lambda out, feeds, *rest: seen.append(len(feeds["pixel_values"])) or original(out, feeds, *rest)
    try:
        run_file(model, tmp_path / "bytes.parquet", tmp_path / "out.parquet", RunOptions(), progress=False)
    finally:
        model.vision.run = original
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert pq.read_schema(tmp_path / "out.parquet").field("image_path").type == pa.binary()  # kept as it came
    assert sum(seen) == len(NAMES)  # each distinct image once
    paths = [str(IMG / n) for n in names]
    pq.write_table(pa.table({"image_path": paths, "text": texts[: len(names)]}), tmp_path / "paths.parquet")
    run_file(model, tmp_path / "paths.parquet", tmp_path / "want.parquet", RunOptions(), progress=False)
    want = pd.read_parquet(tmp_path / "want.parquet")["longclip_score"].to_numpy()
    np.testing.assert_array_equal(out["longclip_score"].to_numpy()[: len(names)], want)  # bit for bit
    assert [e.split(":")[0] for e in out["longclip_score_error"][len(names):]] == ["empty_file", "not_an_image",
                                                                                  "undecodable"]


def test_a_model_that_fails_on_a_batch_stops_the_run_with_one_error_and_keeps_the_chunks(tmp_path, model,
                                                                                       monkeypatch):
    from longclip.runtime.contract.errors import EngineError

    _write(tmp_path / "in.jsonl", _rows(12))
    real, calls = model.run_vision, []

    def fail_on_the_second(batch, run_options=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\n(and more lines)")
        return real(batch, run_options)

    monkeypatch.setattr(model, "run_vision", fail_on_the_second)
    opts = RunOptions(image_root=str(IMG), chunk_rows=4, batch_size=2)
    with pytest.raises(EngineError, match="the model failed on a batch: RuntimeError: CUDA error: an illegal memory "
                                          "access was encountered [(]and more lines[)]$"):
        run_file(model, tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts, progress=False)
    assert not (tmp_path / "out.jsonl").exists() and work_dir_for(tmp_path / "out.jsonl").is_dir()


def test_an_earlier_output_survives_a_rerun_killed_part_way(tmp_path, tiny_model_dir):
    """OUTPUT is replaced only when the new one is complete: a re-run killed while it works leaves the earlier
    file byte for byte (a writer that opened OUTPUT itself would have truncated it)."""
    common = ["-m", tiny_model_dir, "--image-root", IMG, "--chunk-rows", "10", "--device", "cpu"]
    _write(tmp_path / "first.jsonl", _rows(12))
    assert _cli("first.jsonl", "-o", "out.jsonl", *common, cwd=tmp_path).returncode == 0
    before = (tmp_path / "out.jsonl").read_bytes()
    _write(tmp_path / "in.jsonl", _rows(900))
    done = killed_part_way(["in.jsonl", "-o", "out.jsonl", *common], tmp_path, tmp_path / "out.jsonl", 3)
    assert 3 <= done < 90, "the re-run should have been killed part-way"
    assert (tmp_path / "out.jsonl").read_bytes() == before


def _indexed(kind: str) -> pd.DataFrame:
    """Six rows with an index pandas saves in the parquet file (or, a RangeIndex, in its metadata only)."""
    frame = pd.DataFrame({"image_path": [NAMES[i % 3] for i in range(6)], "text": [f"caption {i}" for i in range(6)]})
    if kind == "named":
        return frame.set_axis(pd.Index([10, 3, 7, 7, 99, -1], name="row_id"))
    if kind == "unnamed":  # saved as __index_level_0__
        return frame.set_axis(pd.Index(["a", "b", "c", "d", "e", "f"]))
    if kind == "multi":
        return frame.set_axis(pd.MultiIndex.from_arrays([[1, 1, 2, 2, 3, 3], list("xyxyxy")], names=["k", None]))
    if kind == "clash":  # an index named like a column: pandas saves it as __index_level_0__
        return frame.set_axis(pd.Index([f"other {i}" for i in range(6)], name="text"))
    return frame.set_axis(pd.RangeIndex(100, 112, 2))  # "range": metadata only, no column


# the columns each file holds, with their values, beyond image_path and text
_INDEX_COLUMNS = {
    "named": {"row_id": [10, 3, 7, 7, 99, -1]},
    "unnamed": {"__index_level_0__": list("abcdef")},
    "multi": {"k": [1, 1, 2, 2, 3, 3], "__index_level_1__": list("xyxyxy")},
    "clash": {"__index_level_0__": [f"other {i}" for i in range(6)]},
    "range": {},
}


@pytest.mark.parametrize("kind", list(_INDEX_COLUMNS))
def test_a_pandas_index_saved_in_a_parquet_input_comes_back_as_a_column(tmp_path, model, kind):
    """A parquet written by ``DataFrame.to_parquet()`` with its index: the index columns came back in no output
    (pandas' metadata made them an index again, which the writers drop), and a parquet output failed after all
    the work (its schema named a column the frames did not have). Every output format, on one thread pool."""
    from longclip.runtime.decode.pool import ImageSpec, make_pool

    _indexed(kind).to_parquet(tmp_path / "in.parquet")
    extra = _INDEX_COLUMNS[kind]
    with make_pool(ImageSpec.of(model.manifest, 10**8), 8, 0) as pool:
        for dst in (".jsonl", ".json", ".csv", ".parquet"):
            run_file(model, tmp_path / "in.parquet", tmp_path / f"out{dst}",
                     RunOptions(image_root=str(IMG), chunk_rows=4), progress=False, pool=pool)
            out = pd.read_parquet(tmp_path / f"out{dst}") if dst == ".parquet" else read_table(tmp_path / f"out{dst}")
            assert list(out.columns) == ["image_path", "text", *extra, "longclip_score", "longclip_score_error"], dst
            assert list(out.index) == list(range(6))
            assert out["text"].tolist() == [f"caption {i}" for i in range(6)]
            for name, values in extra.items():
                assert [str(v) for v in out[name]] == [str(v) for v in values], (dst, name)
            assert (out["longclip_score_error"] == "").all() and out["longclip_score"].notna().all()


def _sparse(path, n):
    """``n`` rows, each with a key of its own (``k<i>``) besides the image and the text."""
    rows = [{"image_path": NAMES[0], "text": "a photo", f"k{i}": i} for i in range(n)]
    _write(path, rows)
    return rows


@pytest.mark.parametrize("src", [".jsonl", ".json"])
@pytest.mark.parametrize("dst", [".jsonl", ".json"])
def test_rows_with_keys_of_their_own_cost_their_own_keys(tmp_path, model, monkeypatch, src, dst):
    """2,000 rows each with its own key: every frame built held every key of the file (rows x 2,002 cells, twice:
    8 million; 20,000 such rows took 9 minutes and 900 MB). Now scoring reads the image and text keys only and the
    output is written from each row's own keys: at most rows x 2 cells."""
    from longclip.runtime.decode.pool import ImageSpec, make_pool

    rows = _sparse(tmp_path / f"in{src}", 2000)
    cells = []
    read_chunks = TableReader.read_chunks

    def counted(self, *args, **kwargs):
        for chunk in read_chunks(self, *args, **kwargs):
            cells.append(chunk.frame.size)
            yield chunk

    monkeypatch.setattr(TableReader, "read_chunks", counted)
    with make_pool(ImageSpec.of(model.manifest, 10**8), 8, 0) as pool:
        summary = run_file(model, tmp_path / f"in{src}", tmp_path / f"out{dst}",
                           RunOptions(image_root=str(IMG), chunk_rows=500), progress=False, pool=pool)
    assert summary.scored == 2000
    assert len(cells) == 4 and sum(cells) == 2000 * 2
    text = (tmp_path / f"out{dst}").read_text()
    out = [json.loads(line) for line in text.splitlines()] if dst == ".jsonl" else json.loads(text)
    score = out[0]["longclip_score"]
    assert 0 <= score <= 1
    assert out == [{**row, "longclip_score": score, "longclip_score_error": ""} for row in rows]


@pytest.mark.parametrize("dst", [".csv", ".parquet"])
def test_a_wide_table_output_of_sparse_keys_is_refused_up_front(tmp_path, model, monkeypatch, dst):
    from longclip.runtime.outputs import writers

    monkeypatch.setattr(writers, "MAX_SPARSE_COLUMNS", 12)
    _sparse(tmp_path / "at.jsonl", 10)  # 12 keys: image_path, text, k0..k9
    run_file(model, tmp_path / "at.jsonl", tmp_path / f"at{dst}", RunOptions(image_root=str(IMG)), progress=False)
    assert len(read_table(tmp_path / f"at{dst}").columns) == 14
    _sparse(tmp_path / "over.jsonl", 11)
    message = (r"'.*over.jsonl' has 13 distinct keys, and a \%s output would give each of its 11 rows a cell for "
               r"every one \(more than 12 keys\): write .jsonl or .json instead" % dst)
    with pytest.raises(InputError, match=message):
        run_file(model, tmp_path / "over.jsonl", tmp_path / f"over{dst}", RunOptions(image_root=str(IMG)),
                 progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["at.jsonl", f"at{dst}", "over.jsonl"])


def test_the_default_width_limit_refuses_20000_sparse_keys_for_csv_and_parquet(tmp_path):
    from longclip.runtime.engines.local import plan_file

    _sparse(tmp_path / "in.jsonl", 20_000)
    for dst in (".csv", ".parquet"):
        with pytest.raises(InputError, match=r"has 20002 distinct keys.*more than 4096 keys\): write .jsonl"):
            plan_file(tmp_path / "in.jsonl", tmp_path / f"out{dst}")
    with plan_file(tmp_path / "in.jsonl", tmp_path / "out.jsonl") as plan:  # jsonl: any count
        assert len(plan.reader.columns) == 20_002
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
