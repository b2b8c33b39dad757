"""longclip-run --engine ray: the local engine's rows, order, columns, scores and reasons, on a local Ray cluster.

Ray starts once for the module (2 CPUs, a small object store) and is shut down at the end. Checks that need no
cluster (refusals, input and output forms, a missing Ray) run without it.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import GOLDENS
from longclip.runtime import LongCLIP
from longclip.runtime.contract.errors import EngineError, InputError, ModelDirError
from longclip.runtime.engines.local import run_file
from longclip.runtime.engines.options import RunOptions
from longclip.runtime.engines.shards import find_shards, output_target
from longclip.runtime.inputs.tables import read_table

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='needs the ray extra: pip install "longclip[ray]" (.ci/run does)')
IMG = GOLDENS / "images"
NAMES = ["rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png", "gray_64x50.png", "animated_50x70.gif"]


@pytest.fixture(scope="module")
def ray_cluster():
    if not HAS_RAY:
        pytest.skip('needs the ray extra: pip install "longclip[ray]" (.ci/run does)')
    import ray

    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return LongCLIP(tiny_model_dir, device="cpu")


def _run_ray(*args, **kwargs):
    from longclip.runtime.engines.ray import run_ray

    return run_ray(*args, **kwargs)


def _mixed_rows(folder):
    """Good rows and every row problem a typed column can hold, with images in ``folder``."""
    from test_preprocess import _png_header

    for name in NAMES:
        shutil.copy(IMG / name, folder / name)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    data = (IMG / "small_41x97.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "bomb.png").write_bytes(_png_header(40_000, 40_000))
    bad = [("missing.png", "x"), ("empty.png", "x"), ("text.png", "x"), ("cut.jpg", "x"), (".", "x"),
           ("bomb.png", "x"), (None, "x"), (NAMES[0], None), (NAMES[1], ""), (NAMES[2], " \n\t"),
           (NAMES[3], "word " * 300)]
    good = [(NAMES[i % len(NAMES)], f"caption {i % 7} of a scene") for i in range(20)]
    pairs = good[:3] + bad[:6] + good[3:8] + bad[6:] + good[8:]
    return [{"id": i, "image_path": img, "text": text, "note": f"n{i}"} for i, (img, text) in enumerate(pairs)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _assert_same(got: pd.DataFrame, want: pd.DataFrame):
    assert list(got.columns) == list(want.columns)
    for column in want.columns:
        if column == "longclip_score":
            a, b = got[column].astype(float).to_numpy(), want[column].astype(float).to_numpy()
            assert (np.isnan(a) == np.isnan(b)).all()
            np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-6, atol=1e-6)
        else:
            assert [None if pd.isna(v) else str(v) for v in got[column]] == \
                   [None if pd.isna(v) else str(v) for v in want[column]], column


@needs_ray
@pytest.mark.parametrize("dst", [".jsonl", ".parquet"])
def test_same_rows_order_scores_and_reasons_as_the_local_engine(tmp_path, ray_cluster, model, tiny_model_dir, dst):
    rows = _mixed_rows(tmp_path)
    _write_jsonl(tmp_path / "in.jsonl", rows)
    opts = RunOptions(image_root=str(tmp_path), chunk_rows=4)  # several batches, so order is at stake
    run_file(model, tmp_path / "in.jsonl", tmp_path / f"local{dst}", opts, progress=False)
    summary = _run_ray(tiny_model_dir, str(tmp_path / "in.jsonl"), str(tmp_path / f"ray{dst}"), opts, "cpu")
    local, ray = read_table(tmp_path / f"local{dst}"), read_table(tmp_path / f"ray{dst}")
    _assert_same(ray, local)
    assert ray["id"].tolist() == list(range(len(rows)))
    codes = [e.split(":")[0] for e in ray["longclip_score_error"]]
    assert codes[3:9] == ["missing_file", "empty_file", "not_an_image", "undecodable", "directory", "too_many_pixels"]
    assert codes[14:18] == ["null_path", "null_text", "empty_text", "empty_text"] and codes[18] == ""
    assert (summary.rows, summary.scored, sum(summary.failed.values())) == (31, 21, 10)
    assert summary.truncated is None and "texts cut" not in summary.report()
    assert not list(tmp_path.glob(".ray*"))


@needs_ray
def test_folder_of_shards_in_parquet_shards_out(tmp_path, ray_cluster, model, tiny_model_dir):
    rows = _mixed_rows(tmp_path)
    shards = tmp_path / "shards"
    (shards / "b").mkdir(parents=True)
    _write_jsonl(shards / "a-0.jsonl", rows[:12])
    _write_jsonl(shards / "a-1.jsonl", rows[12:25])
    _write_jsonl(shards / "b" / "c.jsonl", rows[25:])
    (shards / "_SUCCESS").write_text("")
    _write_jsonl(shards / ".hidden.jsonl", rows[:1])  # skipped, like _SUCCESS
    _write_jsonl(tmp_path / "all.jsonl", rows)
    opts = RunOptions(image_root=str(tmp_path), chunk_rows=4)
    run_file(model, tmp_path / "all.jsonl", tmp_path / "local.parquet", opts, progress=False)
    from longclip.runtime.engines.ray import RayOptions

    _run_ray(tiny_model_dir, str(shards), str(tmp_path / "out") + "/", opts, "cpu", RayOptions(shard_rows=8))
    parts = sorted((tmp_path / "out").iterdir())
    assert len(parts) >= 3 and all(p.name.startswith("part-") and p.suffix == ".parquet" for p in parts)
    got = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    _assert_same(got, read_table(tmp_path / "local.parquet"))  # no helper column, shard names sort in row order
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == "0o755"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@needs_ray
def test_glob_of_csv_shards_by_uri_keeps_strings_as_written(tmp_path, ray_cluster, model, tiny_model_dir):
    for name in NAMES:
        shutil.copy(IMG / name, tmp_path / name)
    frame = pd.DataFrame({"image_path": [NAMES[i % 5] for i in range(9)], "id": [f"00{i}" for i in range(9)],
                          "text": ["2024", "", "a red door", "7", "a cat", "NA", "a dog", "x y", "null"]})
    for i in range(3):
        frame.iloc[3 * i: 3 * i + 3].to_csv(tmp_path / f"part-{i}.csv", index=False)
    frame.to_csv(tmp_path / "all.csv", index=False)
    opts = RunOptions(image_root=str(tmp_path), chunk_rows=2)
    run_file(model, tmp_path / "all.csv", tmp_path / "local.csv", opts, progress=False)
    _run_ray(tiny_model_dir, f"file://{tmp_path}/part-*.csv", str(tmp_path / "ray.csv"), opts, "cpu")
    header = (tmp_path / "ray.csv").read_text().splitlines()[0]
    assert header == "image_path,id,text,longclip_score,longclip_score_error"
    ray, local = (pd.read_csv(tmp_path / f, dtype=str, keep_default_na=False) for f in ("ray.csv", "local.csv"))
    assert ray["id"].tolist() == [f"00{i}" for i in range(9)] and ray["text"].tolist() == frame["text"].tolist()
    assert ray["longclip_score_error"].tolist() == local["longclip_score_error"].tolist()
    np.testing.assert_allclose(pd.to_numeric(ray["longclip_score"], errors="coerce"),
                               pd.to_numeric(local["longclip_score"], errors="coerce"), rtol=1e-6)


@needs_ray
@pytest.mark.parametrize(("device", "workers", "message"), [
    ("cuda", None, "the Ray cluster has no GPUs"),
    ("cpu", 2, "--workers 2: each worker takes 1 CPU\\(s\\), and reading and writing need one more; the Ray cluster has 2 CPUs"),
])
def test_cluster_refusals(tmp_path, ray_cluster, tiny_model_dir, device, workers, message):
    from longclip.runtime.engines.ray import RayOptions

    _write_jsonl(tmp_path / "in.jsonl", [{"image_path": "a", "text": "b"}])
    with pytest.raises(EngineError, match=message):
        _run_ray(tiny_model_dir, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), RunOptions(), device,
                 RayOptions(workers=workers))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"img": "a", "text": "b"}\n', r"column 'image_path' not in the input; columns are \['img', 'text'\]"),
    ('{"image_path": "a", "text": "b"}\n{"image_path": 7, "text": "c"}\n',
     "in.jsonl': JSON parse error: Column\\(/image_path\\) changed from string to number"),
])
def test_columns_checked_on_the_driver(tmp_path, tiny_model_dir, content, message):
    (tmp_path / "in.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        _run_ray(tiny_model_dir, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_shard_columns_from_the_first_shard_that_has_any(tmp_path):
    from longclip.runtime.engines.shards import shard_columns

    (tmp_path / "j").mkdir()
    (tmp_path / "j/0.jsonl").write_text("")
    (tmp_path / "j/1.jsonl").write_text('{"a": 1}\n\n{"b": "x" }\n' + '{"a": 2}\n' * 200_000 + '{"late": 1}\n')
    assert shard_columns(find_shards(str(tmp_path / "j"))) == ["a", "b"]  # the first MiB of lines
    (tmp_path / "a.json").write_text('[{"x": 1}, {"y": 2, "x": 3}]')
    assert shard_columns(find_shards(str(tmp_path / "a.json"))) == ["x", "y"]
    pd.DataFrame({"p": [1], "q": ["s"]}).to_parquet(tmp_path / "t.parquet")
    assert shard_columns(find_shards(str(tmp_path / "t.parquet"))) == ["p", "q"]


@pytest.mark.parametrize(("make", "source", "output", "error", "message"), [
    (lambda d: None, "nothing.jsonl", "out.jsonl", InputError, "input 'nothing.jsonl' does not exist"),
    (lambda d: (d / "e").mkdir(), "e", "out.jsonl", InputError, "no input files match 'e'"),
    (lambda d: [(d / "m").mkdir(), (d / "m/a.csv").write_text("x\n"), (d / "m/b.jsonl").write_text("{}\n")],
     "m", "out.jsonl", InputError, "'m' holds .csv, .jsonl files"),
    (lambda d: [(d / "o").mkdir(), (d / "o/x").write_text("")], "in.jsonl", "o", InputError,
     "output folder 'o' is not empty"),
    (lambda d: None, "in.jsonl", "gs://bucket/out.jsonl", InputError, "a single output file must be local"),
    (lambda d: None, "in.jsonl", "out.txt", InputError, "unsupported file type '.txt'"),
    (lambda d: None, "in.jsonl", "no/such/out/", InputError, "no/such' does not exist"),
    (lambda d: [(d / "f").mkdir(), (d / "f/0.jpg").write_bytes(b"x"), (d / "f/0.txt").write_text("a cat")], "f",
     "out.jsonl", InputError, "INPUT 'f' is a folder of image files, which the local engine reads"),
])
def test_inputs_and_outputs_refused_before_any_work(tmp_path, monkeypatch, make, source, output, error, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text('{"image_path": "a", "text": "b"}\n')
    make(tmp_path)
    with pytest.raises(error, match=message):
        find_shards(source)
        output_target(output)


def test_shards_sorted_by_path_and_globbed_per_component(tmp_path):
    for name in ["b/2.jsonl", "b/10.jsonl", "a.jsonl", "b/deep/3.jsonl", "_tmp/x.jsonl", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    folder = find_shards(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in folder.paths] == ["a.jsonl", "b/10.jsonl", "b/2.jsonl",
                                                                     "b/deep/3.jsonl"]
    assert [os.path.relpath(p, tmp_path) for p in find_shards(f"{tmp_path}/b/*.jsonl").paths] == ["b/10.jsonl",
                                                                                                  "b/2.jsonl"]
    assert find_shards(f"file://{tmp_path}/a.jsonl").paths == [f"{tmp_path}/a.jsonl"]
    assert output_target(str(tmp_path / "new")).folder and not output_target(str(tmp_path / "o.csv")).folder


def test_model_and_device_refused_on_the_driver(tmp_path, tiny_model_dir):
    (tmp_path / "in.jsonl").write_text('{"image_path": "a", "text": "b"}\n')
    with pytest.raises(ModelDirError, match="model 'no-such-model' does not exist"):
        _run_ray("no-such-model", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"))
    with pytest.raises(EngineError, match="each worker gets its own GPU from Ray; pass --device cuda"):
        _run_ray(tiny_model_dir, str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), device="cuda:1")


def test_a_failed_job_is_one_of_our_errors_naming_its_cause_and_fix():
    from longclip.runtime.engines.ray import RAY_EXTRA, job_error

    ours = job_error(RuntimeError("ray.exceptions.RayTaskError(...)\nlongclip.runtime.contract.errors."
                                  "ModelDirError: no manifest.json in '/m'"))  # as the worker's traceback says
    assert isinstance(ours, ModelDirError) and str(ours) == "no manifest.json in '/m'"
    other = job_error(RuntimeError("Traceback:\n  ValueError: bad cell\nray.exceptions.RayTaskError: wrapped"))
    assert isinstance(other, EngineError)
    assert str(other) == "the Ray job failed: ValueError: bad cell (the worker logs above say more)"
    listing = job_error(RuntimeError("ImportError: cannot import name 'HTTPFileSystem' from "
                                     "'fsspec.implementations.http'"))
    assert str(listing).endswith(f"Ray Data needs aiohttp to list files (without it, its listing threads fail now "
                                 f"and then): pip install aiohttp, or {RAY_EXTRA}")


def test_plan_workers():
    from longclip.runtime.engines.ray import plan_workers

    assert plan_workers({"CPU": 8.0}, gpu=False, workers=None) == 7
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, gpu=True, workers=None) == 4
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, gpu=False, workers=3) == 3
    with pytest.raises(EngineError, match="--workers 5: each worker takes a GPU and the Ray cluster has 4"):
        plan_workers({"CPU": 16.0, "GPU": 4.0}, gpu=True, workers=5)
    with pytest.raises(EngineError, match="the Ray cluster has 1 CPUs: use --workers 1 or fewer"):
        plan_workers({"CPU": 1.0}, gpu=False, workers=None)


def _cli(*args, cwd, timeout=180, prelude=""):
    code = f"{prelude}from longclip.runtime.cli.run import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("args", "prelude", "message"), [
    ((), "import sys; sys.modules['ray'] = None; ",  # as if the ray extra were not installed
     'longclip-run: error: --engine ray needs Ray Data (import of ray halted; None in sys.modules): '
     'pip install "longclip[ray]"'),
    (("--resume",), "", "longclip-run: error: --resume is for the local engine"),
    (("--ray-address", "127.0.0.1:1"), "", "longclip-run: error: cannot reach a Ray cluster at '127.0.0.1:1'"),
])
def test_cli_refusals_are_one_line(tmp_path, tiny_model_dir, args, prelude, message):
    if "--ray-address" in args and not HAS_RAY:
        pytest.skip("needs the ray extra")
    (tmp_path / "in.jsonl").write_text('{"image_path": "a", "text": "b"}\n')
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--engine", "ray", *args, cwd=tmp_path,
                prelude=prelude)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_cli_ray_options_need_the_ray_engine(tmp_path, tiny_model_dir):
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 2 and "--ray-address, --workers and --cpus-per-worker need --engine ray" in proc.stderr


@needs_ray
def test_cli_starts_its_own_ray_and_joins_a_running_one(tmp_path, ray_cluster, tiny_model_dir):
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "1.png")
    _write_jsonl(tmp_path / "in.jsonl", [{"image_path": "1.png", "text": "a man and a woman in a car"},
                                         {"image_path": "gone.png", "text": "word " * 300}])
    own = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "own.csv", "--engine", "ray", "--workers", "1", "--report",
               "r.html", cwd=tmp_path)
    assert own.returncode == 0, own.stderr
    assert 'id="baseline-note">Baseline: 0 mismatched pairs' in (tmp_path / "r.html").read_text()  # drawn, empty
    assert "rows 2: scored 1, failed 1 (missing_file 1)" in own.stderr and "on Ray Data, 1 worker on CPU" in own.stderr
    out = pd.read_csv(tmp_path / "own.csv", keep_default_na=False)
    assert out["longclip_score_error"][0] == "" and out["longclip_score_error"][1].startswith(
        f"missing_file: image not found: '{tmp_path / 'gone.png'}'")  # relative paths resolve against the cwd
    address = ray_cluster.get_runtime_context().gcs_address
    joined = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "joined/", "--engine", "ray", "--ray-address", address,
                  "-q", "--baseline", cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr
    assert "rows 2" not in joined.stderr  # quiet: only the line asked for (one scored row: nothing to pair)
    assert ("baseline: no mismatched pairs (too few scored rows with distinct images and texts)"
            in joined.stderr.splitlines())
    got = pd.concat([pq.read_table(p).to_pandas() for p in sorted((tmp_path / "joined").iterdir())])
    np.testing.assert_allclose(got["longclip_score"], pd.to_numeric(out["longclip_score"], errors="coerce"))


def test_ray_plan_refuses_what_would_overwrite_data(tmp_path):
    from longclip.runtime.engines.ray import plan_ray

    (tmp_path / "in.jsonl").write_text('{"image_path": "a", "text": "b", "longclip_score": 1}\n')
    with pytest.raises(InputError, match="column 'longclip_score' is already in the input"):
        plan_ray(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"))
    with pytest.raises(InputError, match="is one of the input files"):
        plan_ray(str(tmp_path / "in.jsonl"), str(tmp_path / "in.jsonl"), RunOptions(overwrite_columns=True))
    with plan_ray(str(tmp_path / "in.jsonl"), str(tmp_path / "out/"), RunOptions(overwrite_columns=True)) as plan:
        assert plan.lock is not None and plan.lock.path.is_file()  # a local folder output is locked
        with pytest.raises(InputError, match="is being written by another run"):
            plan_ray(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), RunOptions(overwrite_columns=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_ray_plan_refuses_a_shard_it_cannot_read_before_any_work(tmp_path, monkeypatch):
    import tarfile

    from longclip.runtime.engines import ray as ray_engine

    (tmp_path / "shards").mkdir()
    for name in ("00000.tar", "00001.tar"):
        with tarfile.open(tmp_path / "shards" / name, "w"):
            pass
    real = open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("00001.tar"):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ray_engine, "open", refuse, raising=False)
    with pytest.raises(InputError, match=r"cannot read shard '.*00001\.tar': Permission denied: check that it is"):
        plan_ray_ = ray_engine.plan_ray(str(tmp_path / "shards"), str(tmp_path / "out.parquet"))
        plan_ray_.__exit__(None, None, None)
    assert not (tmp_path / "out.parquet").exists()


@needs_ray
def test_webdataset_shards_give_the_local_engines_rows_and_scores(tmp_path, ray_cluster, tiny_model_dir, model):
    from test_webdataset_runs import _samples, _shard

    from longclip.runtime.engines.ray import RayOptions

    (tmp_path / "shards").mkdir()
    _shard(tmp_path / "shards" / "0.tar", _samples(0, 7))
    _shard(tmp_path / "shards" / "1.tar", _samples(7, 5) + [{"000099.txt": b"no image"}])
    opts = RunOptions(chunk_rows=4, wds_keep=("width",))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_file(model, "shards/*.tar", tmp_path / "local.parquet", opts, progress=False)
        _run_ray(tiny_model_dir, "shards/*.tar", str(tmp_path / "ray.parquet"), opts, "cpu", RayOptions(workers=1))
    finally:
        os.chdir(cwd)
    local, ray = pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "ray.parquet")
    assert list(ray.columns) == list(local.columns)
    pd.testing.assert_frame_equal(ray.drop(columns="longclip_score"), local.drop(columns="longclip_score"),
                                  check_dtype=False)
    np.testing.assert_array_equal(ray["longclip_score"].to_numpy(), local["longclip_score"].to_numpy())
    assert local["longclip_score_error"].iloc[-1].startswith("missing_file: sample '000099' in 'shards/1.tar'")


@needs_ray
def test_ray_embeddings_are_written_by_the_workers_and_reused(tmp_path, ray_cluster, tiny_model_dir):
    import pyarrow.dataset as pads

    from longclip.runtime.engines.ray import RayOptions

    rows = _mixed_rows(tmp_path)
    _write_jsonl(tmp_path / "in.jsonl", rows)
    opts = RunOptions(image_root=str(tmp_path), chunk_rows=4)
    ray_opts = RayOptions(workers=1, embeddings_dir=str(tmp_path / "emb"))
    _run_ray(tiny_model_dir, str(tmp_path / "in.jsonl"), str(tmp_path / "a.parquet"), opts, "cpu", ray_opts)
    images = pads.dataset(tmp_path / "emb" / "images").to_table()
    assert images.num_rows == len(NAMES) and sorted(images.column("image_path").to_pylist()) == sorted(NAMES)
    from longclip.runtime.embeddings.store import EmbeddingStore

    with EmbeddingStore(tmp_path / "emb", write=False) as store:  # indexed by the driver
        assert len(store.has_images(images.column("sha256").to_pylist())) == len(NAMES)
    _run_ray(tiny_model_dir, str(tmp_path / "in.jsonl"), str(tmp_path / "b.parquet"), opts, "cpu", ray_opts)
    assert pads.dataset(tmp_path / "emb" / "images").to_table().num_rows == len(NAMES)  # no image computed again
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    np.testing.assert_array_equal(a["longclip_score"].to_numpy(), b["longclip_score"].to_numpy())


def test_a_ray_run_that_scores_nothing_exits_3_with_its_output(tmp_path, ray_cluster, tiny_model_dir):
    _write_jsonl(tmp_path / "in.jsonl", [{"image_path": "gone.png", "text": "a cat"},
                                         {"image_path": "also/gone.png", "text": "a dog"}])
    address = ray_cluster.get_runtime_context().gcs_address
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.csv", "--engine", "ray", "--ray-address", address,
                cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "not one of the 2 rows could be scored (out.csv has each reason): exit status 3" in proc.stderr
    assert "pass --image-root FOLDER" in proc.stderr
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert [r.split(":")[0] for r in out["longclip_score_error"]] == ["missing_file", "missing_file"]


@needs_ray
def test_a_pandas_index_saved_in_a_parquet_input_comes_back_as_the_local_engine_gives_it(tmp_path, ray_cluster, model,
                                                                                        tiny_model_dir):
    """A named index and a MultiIndex level without a name (``__index_level_1__``): Ray kept them; the local engine
    now keeps them too, and both give the same file."""
    frame = pd.DataFrame({"image_path": [NAMES[i % 3] for i in range(6)], "text": [f"caption {i}" for i in range(6)]})
    frame.set_axis(pd.MultiIndex.from_arrays([[5, 3, 9, 9, 1, 0], list("xyxyxy")], names=["row_id", None])) \
        .to_parquet(tmp_path / "in.parquet")
    opts = RunOptions(image_root=str(IMG), chunk_rows=4)
    run_file(model, tmp_path / "in.parquet", tmp_path / "local.jsonl", opts, progress=False)
    _run_ray(tiny_model_dir, str(tmp_path / "in.parquet"), str(tmp_path / "ray.jsonl"), opts, "cpu")
    local, ray = read_table(tmp_path / "local.jsonl"), read_table(tmp_path / "ray.jsonl")
    _assert_same(ray, local)
    assert list(ray.columns) == ["image_path", "text", "row_id", "__index_level_1__", "longclip_score",
                                 "longclip_score_error"]
    assert ray["row_id"].tolist() == [5, 3, 9, 9, 1, 0]


def _crawl_rows(folder, n=150):
    """``n`` rows over 5 images and 9 captions, repeated as crawls repeat them, with unscored rows among them."""
    rows = _mixed_rows(folder)
    bad = [r for r in rows if r["id"] in (3, 4, 14, 16)]
    out = []
    for i in range(n):
        if i % 23 == 5:
            out.append({**bad[i % len(bad)], "id": i})
        else:
            out.append({"id": i, "image_path": NAMES[(i * 7) % 5], "text": f"caption {i % 9} of a scene",
                        "note": f"n{i}"})
    return out


@needs_ray
def test_the_baseline_is_the_local_engines_whatever_the_batches_and_the_output(tmp_path, ray_cluster, model,
                                                                                 tiny_model_dir):
    """Rows are paired by their global row index: Ray batches of 37 rows cut the 64-row blocks, shards start
    mid-block, and the pairs are the local engine's, bit for bit; no embedding column reaches the output."""
    from longclip.runtime.engines.ray import RayOptions

    rows = _crawl_rows(tmp_path)
    _write_jsonl(tmp_path / "all.jsonl", rows)
    local = run_file(model, tmp_path / "all.jsonl", tmp_path / "local.parquet",
                     RunOptions(image_root=str(tmp_path), chunk_rows=64), progress=False)
    assert 100 < len(local.baseline) < 150  # the scored rows, but for a few left without a partner
    opts = RunOptions(image_root=str(tmp_path), chunk_rows=37)
    asked = RayOptions(baseline=True, shard_rows=40)
    one = _run_ray(tiny_model_dir, str(tmp_path / "all.jsonl"), str(tmp_path / "ray.jsonl"), opts, "cpu", asked)
    assert one.baseline.tobytes() == local.baseline.tobytes()
    _assert_same(read_table(tmp_path / "ray.jsonl"), read_table(tmp_path / "local.parquet"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for k, (lo, hi) in enumerate([(0, 50), (50, 51), (51, 130), (130, 150)]):
        pq.write_table(pa.Table.from_pylist(rows[lo:hi]), shards / f"s{k}.parquet")
    folder = _run_ray(tiny_model_dir, str(shards), str(tmp_path / "out") + "/", opts, "cpu", asked)
    assert folder.baseline.tobytes() == local.baseline.tobytes()
    assert (folder.rows, folder.scored) == (local.rows, local.scored)
    parts = sorted((tmp_path / "out").iterdir())
    assert len(parts) >= 3 and all(p.name.startswith("part-") and p.suffix == ".parquet" for p in parts)
    got = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    _assert_same(got, read_table(tmp_path / "local.parquet"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    unasked = _run_ray(tiny_model_dir, str(tmp_path / "all.jsonl"), str(tmp_path / "plain.jsonl"), opts, "cpu")
    assert unasked.baseline is None and "__longclip" not in (tmp_path / "plain.jsonl").read_text()
    _write_jsonl(tmp_path / "named.jsonl", [{**rows[0], "__longclip_embeds__": "mine"}])
    with pytest.raises(InputError, match="the input has a column '__longclip_embeds__', which the Ray engine uses"):
        _run_ray(tiny_model_dir, str(tmp_path / "named.jsonl"), str(tmp_path / "named.out.jsonl"), opts, "cpu", asked)
    assert not (tmp_path / "named.out.jsonl").exists()

