"""longclip-run from outside, through its console script: refusals that protect data, one run per output, and
--batch-size reaching the graphs as given."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import GOLDENS
from longclip.runtime.inputs.tables import read_table

IMG = GOLDENS / "images"
SCRIPT = Path(sys.executable).with_name("longclip-run")


def _cli(*args, cwd, env=None, timeout=180):
    return subprocess.run([str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _one_line_refusal(proc, message):
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.fixture()
def pairs(tmp_path):
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "a.jpg")
    return _jsonl(tmp_path / "in.jsonl", [{"image_path": "a.jpg", "text": "a cat", "id": 1}])


@pytest.mark.parametrize("output", ["in.jsonl", "./in.jsonl", "sub/../in.jsonl", "hard.jsonl", "soft.jsonl"])
def test_output_that_is_the_input_is_refused(tmp_path, tiny_model_dir, pairs, output):
    (tmp_path / "sub").mkdir()
    os.link(pairs, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(pairs)
    before = pairs.read_bytes()
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", output, cwd=tmp_path)
    _one_line_refusal(proc, "is the input file: choose another output")
    assert pairs.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "hard.jsonl", "in.jsonl", "soft.jsonl", "sub"]


@pytest.mark.parametrize(("args", "message"), [
    (("--output-key", "text"), "column 'text' is already in the input"),
    (("--output-key", "id"), "column 'id' is already in the input"),
    (("--output-key", "te"), "column 'te_error' is already in the input"),
    (("--report", "in.html"), "--report 'in.html' is the INPUT file"),
    (("--report", "out.html"), "--report 'out.html' is the OUTPUT file"),
])
def test_outputs_never_overwrite_data(tmp_path, tiny_model_dir, args, message):
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "a.jpg")
    pairs = _jsonl(tmp_path / "in.jsonl", [{"image_path": "a.jpg", "text": "a cat", "id": 1, "te_error": "kept"}])
    (tmp_path / "out.jsonl").write_text("an earlier result\n")
    (tmp_path / "in.html").symlink_to(pairs)  # a report path that is the input, spelled otherwise
    (tmp_path / "out.html").symlink_to(tmp_path / "out.jsonl")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", *args, cwd=tmp_path)
    _one_line_refusal(proc, message)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_device_without_a_gpu_is_one_line_that_says_which_case(tmp_path, tiny_model_dir, pairs):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU onnxruntime is installed")
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--device", "cuda", cwd=tmp_path)
    _one_line_refusal(proc, "longclip-run: error: device 'cuda' needs CUDAExecutionProvider, which the CPU wheel "
                      f"(onnxruntime {ort.__version__}) does not have (it offers ")
    assert proc.stderr.rstrip().endswith("pip uninstall -y onnxruntime && pip install onnxruntime-gpu (README, "
                                         "'GPU'), or pass --device cpu (Python: device='cpu')")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("root", "message"), [
    ("/nonexistent", "--image-root '/nonexistent' does not exist: pass the folder that the relative image paths are "
     "relative to"),
    ("a.jpg", "--image-root 'a.jpg' is not a folder: pass the folder that the relative image paths are relative to"),
])
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_image_root_that_is_no_folder_is_refused_up_front(tmp_path, tiny_model_dir, pairs, root, message, engine):
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--image-root", root, "--engine", engine,
                cwd=tmp_path)
    _one_line_refusal(proc, f"longclip-run: error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "in.jsonl"]


def test_image_root_on_a_ray_cluster_is_the_nodes_business(tmp_path, tiny_model_dir, pairs):
    """With --ray-address the folder need only exist on the nodes: the driver does not refuse it."""
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--image-root", "/nonexistent", "--engine", "ray",
                "--ray-address", "127.0.0.1:1", cwd=tmp_path)
    assert proc.returncode == 1 and "--image-root" not in proc.stderr, proc.stderr


def test_overwrite_columns_replaces_them_in_place(tmp_path, tiny_model_dir):
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "a.jpg")
    _jsonl(tmp_path / "in.jsonl", [{"image_path": "a.jpg", "longclip_score": "old", "text": "a cat",
                                    "longclip_score_error": "old"}])
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--overwrite-columns", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert list(row) == ["image_path", "longclip_score", "text", "longclip_score_error"]
    assert 0 <= row["longclip_score"] <= 1 and row["longclip_score_error"] == ""


def _many_pairs(folder, n, text):
    for i in range(4):
        Image.new("RGB", (40 + i, 30), (60 * i, 20, 90)).save(folder / f"{i}.png")
    return [{"image_path": f"{i % 4}.png", "text": f"{text} {i}"} for i in range(n)]


def test_two_runs_started_together_on_one_output(tmp_path, tiny_model_dir):
    """One completes with its own input's scores, the other is refused with one line and touches nothing."""
    inputs = {name: _jsonl(tmp_path / f"{name}.jsonl", _many_pairs(tmp_path, 3000, name)) for name in ("first", "second")}
    common = ["-m", tiny_model_dir, "-o", "out.parquet", "--chunk-rows", "64", "--device", "cpu", "-q"]
    procs = {name: subprocess.Popen([str(SCRIPT), path.name, *map(str, common)], cwd=tmp_path, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, path in inputs.items()}
    results = {name: (p.wait(timeout=300), p.stderr.read()) for name, p in procs.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 1], results
    winner = next(name for name, (code, _) in results.items() if code == 0)
    loser_err = next(err for code, err in results.values() if code == 1)
    assert len(loser_err.strip().splitlines()) == 1 and "is being written by another run (pid " in loser_err
    assert str(procs[winner].pid) in loser_err
    out = read_table(tmp_path / "out.parquet")
    assert out["text"].tolist() == [r["text"] for r in read_table(inputs[winner]).to_dict("records")]
    assert out["longclip_score_error"].eq("").all() and out["longclip_score"].between(0, 1).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no lock, work or partial left


SHAPES_HOOK = """
import os
import onnxruntime as ort

_run = ort.InferenceSession.run


def run(self, output_names, input_feed, run_options=None):
    with open(os.environ["LONGCLIP_TEST_SHAPES"], "a") as f:
        for name, value in input_feed.items():
            f.write(f"{name} {value.shape[0]}\\n")
    return _run(self, output_names, input_feed, run_options)


ort.InferenceSession.run = run
"""


@pytest.mark.parametrize("batch_size", [8, 128])
def test_batch_size_reaches_both_graphs_through_the_console_script(tmp_path, tiny_model_dir, batch_size):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SHAPES_HOOK)  # records each forward's batch, in the real process
    rows = []
    for i in range(130):
        Image.new("RGB", (33, 32), (i, 255 - i, 7)).save(tmp_path / f"{i}.png")
        rows.append({"image_path": f"{i}.png", "text": f"caption number {i}"})
    _jsonl(tmp_path / "in.jsonl", rows)
    log = tmp_path / "shapes.txt"
    proc = _cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--batch-size", batch_size, "--device", "cpu",
                cwd=tmp_path, env={"PYTHONPATH": str(hook), "LONGCLIP_TEST_SHAPES": str(log)})
    assert proc.returncode == 0, proc.stderr
    seen = [line.split() for line in log.read_text().splitlines()]
    full, rest = divmod(130, batch_size)
    want = [batch_size] * full + ([rest] if rest else [])
    assert [int(n) for name, n in seen if name == "pixel_values"] == want
    assert [int(n) for name, n in seen if name == "input_ids"] == want
    assert np.isfinite(pd.read_json(tmp_path / "out.jsonl", lines=True)["longclip_score"]).all()


def test_ctrl_c_in_the_middle_of_a_long_batch_ends_the_run_at_once_and_resumably(tmp_path, slow_model_dir):
    for i in range(64):
        Image.new("RGB", (230, 226), (i * 4, 90, 255 - i * 4)).save(tmp_path / f"{i}.png")
    _jsonl(tmp_path / "in.jsonl", [{"image_path": f"{i % 64}.png", "text": f"caption {i}"} for i in range(128)])
    args = ["in.jsonl", "-m", slow_model_dir, "-o", "out.jsonl", "--batch-size", "64", "--chunk-rows", "64",
            "--device", "cpu"]
    proc = subprocess.Popen([str(SCRIPT), *map(str, args)], cwd=tmp_path, text=True, stderr=subprocess.PIPE)
    work = tmp_path / ".out.jsonl.longclip-run"
    deadline = time.monotonic() + 600  # a hang guard: minutes, since CI machines are loaded
    while not work.is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # the first batch of 64 images (~6 s on two cores) is running now
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=600)  # a hang guard; how soon it ends is measured in benchmarks/, not asserted here
    stderr = proc.stderr.read()
    assert code == 130 and stderr.strip().splitlines()[-1] == (
        f"longclip-run: interrupted; the finished chunks are kept in '{work.name}': run again with --resume to "
        "continue"), stderr
    assert "Traceback" not in stderr, stderr
    assert work.is_dir() and not (tmp_path / "out.jsonl").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".lock", ".partial"))]
    resumed = _cli(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert len(out) == 128 and out["longclip_score"].between(0, 1).all()
