"""Every script in benchmarks/ still imports and runs against the current code: each one's real ``main`` on a tiny
case (the tiny random model, a few rows, batch 2, one round), checked by the work it did (the files and tables it
writes), never by its timings."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import needs_torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (under a name of its own, so that no test sees another's copy)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scored(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """The cells of each Markdown table row of ``text`` whose first cell starts with ``first_cell``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]
    return [r for r in rows if r[0].startswith(first_cell)]


def test_every_script_has_a_smoke_test():
    """A new benchmark gets its smoke test here too."""
    tested = {"speed", "gpu", "gpu_device", "torch_reference", "run_scaling", "ray_engine", "load_time", "pipeline",
              "embeddings", "serve", "int8_designs", "batch_of_one_probe"}
    assert {p.stem for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh")} == tested


@needs_torch
def test_speed(tmp_path, tiny_checkpoint, tiny_model_dir, capsys):
    """--no-torch through ``main`` (the PyTorch contenders are torch_reference.py, tested below), then the full
    report's in-process measurements (tower speed-ups, text length cost, FLOP/s, ORT settings) on the same models."""
    speed = load("speed")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_checkpoint, work / "longclip-tiny.pt")
    shutil.copytree(tiny_model_dir, work / "tiny-fp32")
    # Random weights this small fail the int8 accuracy gate (text cosine ~0.9): the "int8" model is the fp32 one
    # again, which is all the script's plumbing needs (ensure_model exports only what has no manifest yet).
    shutil.copytree(tiny_model_dir, work / "tiny-int8")
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nNewest first.\n\n## older section\n\nkept\n")
    speed.main(["--preset", "tiny", "--rows", "3", "--repeats", "1", "--work", str(work), "--out", str(out),
                "--no-torch"])
    text = out.read_text()
    assert text.index("## tiny on CPU") < text.index("## older section") and text.endswith("kept\n")
    contenders = table_rows(text, "longclip-run")
    assert [r[0] for r in contenders] == ["longclip-run fp32", "longclip-run int8"]
    assert all(float(r[1]) > 0 for r in contenders)
    for precision in ("fp32", "int8"):
        frame = scored(work / "data-3-1" / f"out-{precision}.jsonl")
        assert len(frame) == 3 and frame["longclip_score"].notna().all()
    assert "## tiny on CPU" in capsys.readouterr().out

    args = argparse.Namespace(rows=3, repeats=1, gemm_size=64)
    seconds = dict.fromkeys(["longclip-run fp32", "longclip-run int8", "PyTorch fp32, batched (32)",
                             "PyTorch fp32, row by row (status quo)"], 1.0)
    lines = speed.torch_comparison(args, work / "tiny-fp32", work / "tiny-int8", seconds, 1.0)
    assert [r[0] for r in table_rows("\n".join(lines), "")[2:]] == list(seconds)
    assert any("of a 64² fp32 GEMM" in line for line in lines)
    assert len([line for line in lines if "images/s" in line]) == 3  # one per ONNX Runtime setting


@needs_torch
def test_torch_reference_scores_as_the_graphs(tmp_path, tiny_checkpoint, tiny_model_dir):
    import torch

    from longclip.runtime import LongCLIP

    rows = load("run_scaling").make_inputs(tmp_path, 3, 2)
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    want = LongCLIP(tiny_model_dir, device="cpu").score([tmp_path / r["image_path"] for r in lines],
                                                        [r["text"] for r in lines])
    reference = load("torch_reference")
    threads = torch.get_num_threads()  # main sets them for its whole process
    try:
        for mode in ("batched", "row-by-row"):
            out = tmp_path / f"{mode}.json"
            reference.main([str(tiny_checkpoint), str(rows), "--mode", mode, "--batch-size", "2", "--output",
                            str(out)])
            np.testing.assert_allclose(json.loads(out.read_text()), want, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


@needs_torch
def test_gpu_on_cpu(tmp_path, tiny_checkpoint, tiny_model_dir, monkeypatch):
    """``--device cpu --preset tiny``: the GPU benchmark's whole path, its worker processes included. Its exports
    are checked against the export CLI's options and stood in for by the tiny fp32 model (export has tests of its
    own; three exports here would cost more than everything else in this file)."""
    from longclip.export import cli as export_cli

    gpu = load("gpu")
    exports = []

    def export(cmd, **_):
        assert cmd[1:3] == ["-m", "longclip.export.cli"]
        export_cli.main.make_context("longclip-export", cmd[3:])  # a usage error if an option went away
        exports.append((cmd[cmd.index("--precision") + 1], cmd[cmd.index("--attention") + 1]))
        shutil.copytree(tiny_model_dir, cmd[cmd.index("-o") + 1])
        return SimpleNamespace(wait=lambda: 0, args=cmd)

    monkeypatch.setattr(gpu, "subprocess", SimpleNamespace(**{**vars(subprocess), "Popen": export}))
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_checkpoint, work / "longclip-tiny.pt")  # the checkpoint of the stand-in exports
    out, results = tmp_path / "benchmarks.md", tmp_path / "gpu.json"
    gpu.main(["--device", "cpu", "--preset", "tiny", "--work", str(work), "--batches", "2", "--text-lengths", "8",
              "--min-seconds", "0", "--json", str(results), "--out", str(out)])
    assert exports == [("fp32", "auto"), ("fp16", "auto"), ("fp16", "explicit")]
    saved = json.loads(results.read_text())
    assert list(saved["results"]) == ["ORT CPU fp16", "ORT CPU fp16, explicit attention", "ORT CPU fp32",
                                      "PyTorch fp32 eager"]
    for result in saved["results"].values():
        assert "error" not in result and result["images_per_s"]["2"] > 0 and result["texts_per_s"]["8"]["2"] > 0
    assert list(saved["drift"]) == ["ORT CPU fp16", "ORT CPU fp16, explicit attention", "PyTorch fp32 eager"]
    assert saved["drift"]["PyTorch fp32 eager"] < 1e-5  # the same fp32 weights, two implementations
    assert len(table_rows(out.read_text(), "ORT CPU")) == 6  # 3 contenders x (images, texts of 8 tokens)


def test_gpu_device_script_names_what_exists():
    """``bash -n``, and what it runs is here: the modules and names it imports, gpu.py's options it passes."""
    script = (BENCHMARKS / "gpu_device.sh").read_text()
    subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_device.sh")], check=True)
    imports = re.findall(r"^from (longclip[\w.]*) import ([\w, ]+)$", script, re.M)
    assert imports, "gpu_device.sh imports nothing from longclip any more: update this test"
    for module, names in imports:
        for name in names.split(","):
            assert hasattr(importlib.import_module(module), name.strip()), f"{module}.{name.strip()}"
    for folder in re.findall(r'\$PWD/(\w+)"', script):
        assert (BENCHMARKS.parent / folder / "__init__.py").is_file(), folder
    assert "python3 benchmarks/gpu.py" in script
    help_text = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--help"], capture_output=True,
                               text=True, check=True).stdout
    for option in set(re.findall(r"benchmarks/gpu\.py .*", script)[0].split()) & set(re.findall(r"--[\w-]+", script)):
        assert option in help_text, option


def test_run_scaling(tmp_path, tiny_model_dir, capsys):
    if not Path("/usr/bin/time").exists():
        pytest.skip("run_scaling.py reads peak memory from /usr/bin/time -v")
    load("run_scaling").main([str(tiny_model_dir), "--rows", "5", "--unique-images", "2", "--batch-size", "2",
                              "--work", str(tmp_path)])
    line, = capsys.readouterr().out.splitlines()
    assert line.startswith("rows=5 unique_images=2 wall=") and re.search(r"peak_rss=[1-9]\d*MiB", line)
    frame = scored(tmp_path / "out.jsonl")
    assert len(frame) == 5 and frame["longclip_score"].notna().all()
    assert frame["image_path"].tolist() == [f"images/{i % 2:06d}.jpg" for i in range(5)]


def test_load_time(tiny_model_dir, capsys):
    load("load_time").main([str(tiny_model_dir), "--rounds", "1"])
    header, _, median, spread = capsys.readouterr().out.splitlines()
    assert header.split(" | ")[1:] == ["unchecked", "first (hashing)", "stamped |"]
    assert len([float(v) for v in median.strip(" |").split(" | ")[1:]]) == 3
    assert spread.startswith("| min-max s |")


@needs_torch
def test_pipeline(tmp_path, capsys):
    out = tmp_path / "results.md"
    load("pipeline").main(["--rows", "4", "--rounds", "1", "--cache", str(tmp_path), "--out", str(out)])
    rows = table_rows(out.read_text(), "")
    assert [r[0] for r in rows[2:]] == ["threads (--decode-workers 0)", "default (worker processes)"]
    assert all(float(r[1]) > 0 for r in rows[2:])
    assert (tmp_path / "near-zero-336-p24-fp32" / "manifest.json").is_file()
    assert len((tmp_path / "rows-4.jsonl").read_text().splitlines()) == 4


def test_embeddings(tmp_path, capsys):
    load("embeddings").main(["--images", "2", "--records", "300", "--sizes", "1200", "--rounds", "1", "--work",
                             str(tmp_path)])
    text = capsys.readouterr().out
    assert [r[0] for r in table_rows(text, "")[2:8]] == ["sha256", "sha1", "md5", "blake2b", "blake2s", "sha3_256"]
    written = [r[:3] for r in table_rows(text, "") if r[0] in ("768", "64")]
    assert written == [["768", "float32", "300"], ["768", "float16", "300"], ["64", "float32", "300"]]
    assert [r[:3] for r in table_rows(text, "1,200")] == [["1,200", "768", "1"], ["1,200", "64", "1"]]
    assert "add_image one record at a time, D=768" in text
    assert list(tmp_path.iterdir()) == []  # its stores lived in a temporary folder inside --work


def test_ray_engine(tiny_model_dir, capsys):
    pytest.importorskip("ray.data")
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray of another test is still running in this process")
    load("ray_engine").main([str(tiny_model_dir), "--rows", "4", "--workers", "1", "--batch-rows", "2", "--repeat",
                             "1", "--overhead-batches", "1", "2"])
    lines = capsys.readouterr().out.splitlines()
    # every case's rows were checked against the local engine's (order, scores) before these lines print
    assert [line.split(":")[0] for line in lines] == [
        "local engine", "ray engine (run_ray, shards out), 1 worker(s)",
        "ray engine + baseline (embeddings to the driver, which writes), 1 worker(s)", "pipeline, decode in 1 actor(s)",
        "pipeline, decode stage + 1 embedding actor(s)", "Ray per batch",
        "baseline per row at D=768 (pack in the actor, unpack and pair on the driver)"]


def test_serve(tiny_model_dir, capsys):
    """In-process one pair a call, then a live server at two concurrencies: a table row each, and its batches."""
    for module in ("httpx", "starlette", "uvicorn", "prometheus_client"):
        pytest.importorskip(module, reason="benchmarks/serve.py needs the serve extra")
    load("serve").main(["-m", str(tiny_model_dir), "--requests", "4", "--concurrency", "1,2", "--batch-wait-ms", "1"])
    out = capsys.readouterr().out
    rows = table_rows(out, "in-process") + table_rows(out, "longclip-serve")
    assert [r[1] for r in rows] == ["1", "1", "2"], out
    assert all(float(r[2]) > 0 for r in rows)
    assert re.search(r"The server ran \d+ batches of [\d.]+ items on average", out)


@needs_torch
def test_batch_of_one_probe(tmp_path, tiny_model_dir, capsys):
    """Every intermediate tensor of row 0, alone vs in batches of 3 and 17: none moves on the tiny text tower."""
    shutil.copy(tiny_model_dir / "text.onnx", tmp_path / "text.onnx")
    load("batch_of_one_probe").main(str(tmp_path / "text.onnx"), "text")
    out = capsys.readouterr().out
    found = re.search(r"text: (\d+) comparisons of (\d+) tensors; (\d+) differ", out)
    assert found and int(found[1]) > 10 and found[3] == "0", out


@needs_torch
def test_int8_designs(tmp_path, tiny_checkpoint, tiny_model_dir, capsys):
    """Each design quantized from a fused fp32 export, scored by longclip-run, drift and invariance counted."""
    from longclip.export import export_model

    fused = tmp_path / "fused"
    export_model(tiny_checkpoint, fused, attention="fused")
    sys.path.insert(0, str(BENCHMARKS))  # it imports speed.py's helpers as a script does
    try:
        load("int8_designs").main(["--fp32", str(tiny_model_dir), "--fused", str(fused), "--rows", "3",
                                   "--repeats", "1", "--work", str(tmp_path / "work")])
    finally:
        sys.path.remove(str(BENCHMARKS))
    rows = table_rows(capsys.readouterr().out, "int8")
    assert len(rows) == 4 and all(r[4].endswith("of 3") for r in rows), rows
    assert [r[4] for r in rows if "row-wise" in r[0]] == ["0 of 3"] * 3  # the row-wise designs never move a row
