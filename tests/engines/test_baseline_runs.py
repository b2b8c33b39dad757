"""The mismatched-pair baseline a local run draws while it scores: on a hand-built model whose matched pairs score
high and mismatched low, the suggested thresholds separate them; the same pairs whatever the chunk size and
through a resume; ``longclip-run --baseline`` prints them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from interrupt import stopped_after_first_chunk

from longclip.runtime.engines.local import run_file, work_dir_for
from longclip.runtime.engines.options import RunOptions
from longclip.runtime.model.baseline import suggest_threshold
from longclip.runtime.model.longclip import LongCLIP

pytest.importorskip("onnx", reason="the hand-built model is made with onnx.helper (the export extra)")
import handmade  # noqa: E402  (tests/ is on the path: conftest's folder)

N = 300


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """The hand-built model and a table of matched rows: each row's caption names its image's colour; 30 images
    and 21 captions, repeated across rows as crawls repeat them."""
    root = tmp_path_factory.mktemp("colours")
    model_dir = handmade.build(root / "model")
    names = handmade.colour_images(root / "images", copies=10)
    words = list(handmade.COLOURS)
    rows = []
    for i in range(N):
        colour = words[i % 3]
        rows.append({"image_path": names[colour][(i // 3) % 10],
                     "text": f"a {colour} square, variant {(i // 3) % 7}", "id": i})
    table = root / "in.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return LongCLIP(model_dir, device="cpu"), model_dir, table, root / "images"


def run(colours, out, chunk_rows=64, **kwargs):
    model, _, table, images = colours
    return run_file(model, table, out, RunOptions(image_root=str(images), chunk_rows=chunk_rows), progress=False,
                    **kwargs)


def test_thresholds_separate_matched_from_mismatched(colours, tmp_path):
    summary = run(colours, tmp_path / "out.jsonl")
    assert summary.scored == N
    baseline = summary.baseline
    assert len(baseline) == N  # every row found a partner of another colour in its block
    matched = np.array([json.loads(line)["longclip_score"] for line in (tmp_path / "out.jsonl").open()])
    assert matched.min() > 0.8 and baseline.max() < 0.3  # the model as built
    for rate in (0.01, 0.001):
        t = suggest_threshold(baseline, rate)
        assert baseline.max() < t <= baseline.max() + 1e-4  # no mismatched pair passes, on the 1e-4 grid
        assert (matched >= t).all()
    assert "baseline: 300 mismatched pairs (rough: fewer than 1,000 pairs); 1% pass score >= 0." in \
        summary.baseline_line()


def test_the_same_pairs_whatever_the_chunk_size(colours, tmp_path):
    scores = [run(colours, tmp_path / f"out{c}.jsonl", chunk_rows=c).baseline for c in (300, 64, 7)]
    assert scores[0].tobytes() == scores[1].tobytes() == scores[2].tobytes()


def test_a_resumed_run_keeps_its_finished_chunks_pairs(colours, tmp_path, monkeypatch):
    from longclip.runtime.engines import local

    whole = run(colours, tmp_path / "whole.jsonl", chunk_rows=50).baseline
    real, saved = local._save_part, []

    def stop_after_two(*args, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt
        saved.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "_save_part", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(colours, tmp_path / "out.jsonl", chunk_rows=50)
    monkeypatch.setattr(local, "_save_part", real)
    assert len(list(work_dir_for(tmp_path / "out.jsonl").glob("chunk-*.npz"))) == 2
    summary = run(colours, tmp_path / "out.jsonl", chunk_rows=50, resume=True)
    assert summary.resumed_rows == 100  # rows 0..99 were not embedded again, yet their pairs count
    assert summary.baseline.tobytes() == whole.tobytes()


def test_longclip_run_prints_the_thresholds_and_draws_them_in_its_report(colours, tmp_path):
    _, model_dir, table, images = colours
    cmd = [sys.executable, "-m", "longclip.runtime.cli.run", str(table), "-m", str(model_dir), "-o",
           str(tmp_path / "out.csv"), "--image-root", str(images), "--device", "cpu", "--baseline", "-q",
           "--report", str(tmp_path / "r.html")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("baseline:"))
    assert line.startswith("baseline: 300 mismatched pairs (rough: fewer than 1,000 pairs); 1% pass score >= 0.2")
    assert "0.1% pass >= 0.2" in line
    assert done.stderr.splitlines() == [line]  # -q: the line asked for, nothing else
    page = (tmp_path / "r.html").read_text()
    assert 'id="baseline-note">Baseline: 300 mismatched pairs' in page and "Rough: fewer than 1,000" in page
    assert page.count('class="suggest"') == 2


def test_baseline_is_refused_where_nothing_is_scored(colours, tmp_path):
    _, model_dir, table, _ = colours
    cmd = [sys.executable, "-m", "longclip.runtime.cli.run", str(table), "-m", str(model_dir), "--embed-only",
           "--embeddings", str(tmp_path / "emb"), "--baseline"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--baseline is drawn while rows are scored: not with --embed-only" in done.stderr
    assert not (tmp_path / "emb").exists()


def test_longclip_report_draws_a_baseline_on_a_sample_with_m(colours, tmp_path):
    """A file scored earlier, no run at hand: -m embeds a sample of its rows again and pairs them."""
    _, model_dir, _, images = colours
    run(colours, tmp_path / "out.parquet")
    cmd = [sys.executable, "-m", "longclip.runtime.cli.report", str(tmp_path / "out.parquet"), "-o",
           str(tmp_path / "r.html"), "--image-root", str(images), "-m", str(model_dir), "--device", "cpu",
           "--baseline-rows", "200"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r.html").read_text()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
    assert 'id="baseline-note">Baseline: 200 mismatched pairs' in page  # each sampled row found a partner
    assert sum(data["base"]) == 200
    assert 0.25 < min(data["suggested"].values()) and max(data["suggested"].values()) < 0.3  # mismatched ~0.2
    matched_lowest = data["k0"] + next(i for i, n in enumerate(data["counts"]) if n)
    assert matched_lowest / 10_000 > 0.8  # every matched row passes either suggested threshold


def test_a_chunk_kept_without_pairs_leaves_the_run_without_a_baseline(colours, tmp_path, monkeypatch):
    """A chunk kept for --resume by a version that drew no baseline: no partial baseline passes for a whole one."""
    with stopped_after_first_chunk(monkeypatch):
        run(colours, tmp_path / "out.jsonl", chunk_rows=100)
    (part,) = work_dir_for(tmp_path / "out.jsonl").glob("chunk-*.npz")
    with np.load(part) as data:
        old = {k: data[k] for k in ("scores", "errors", "truncated")}
    np.savez(part, **old)
    summary = run(colours, tmp_path / "out.jsonl", chunk_rows=100, resume=True)
    assert summary.resumed_rows == 100 and summary.baseline is None
    assert summary.baseline_line().startswith("baseline: none (")
