"""What a first-hour user meets at the console scripts: --version everywhere, a run that scored nothing has an exit
status of its own and says where relative paths were looked for, an unfinished run is never discarded unasked,
the summary names the output and the whole run's time, and the progress advances per batch."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GOLDENS
from interrupt import stopped_after_first_chunk
from PIL import Image

from longclip.runtime.engines.options import RunOptions
from longclip.runtime.inputs.tables import read_table

IMG = GOLDENS / "images"
BIN = Path(sys.executable).parent


def _run(script, *args, cwd, timeout=180):
    fast = ["--decode-workers", "0"] if script == "longclip-run" and "--version" not in args else []
    return subprocess.run([str(BIN / script), *map(str, args), *fast], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("script", ["longclip-run", "longclip-export", "longclip-report", "longclip-serve"])
def test_every_command_has_version(tmp_path, script):
    from importlib.metadata import version

    proc = _run(script, "--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{script} {version('longclip')}\n"


def test_a_run_that_scores_nothing_exits_3_with_its_output_and_names_the_folder(tmp_path, tiny_model_dir):
    _jsonl(tmp_path / "in.jsonl", [{"image_path": f"photos/{i}.jpg", "text": "a cat", "id": i} for i in range(3)])
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    out = read_table(tmp_path / "out.jsonl")
    assert out["id"].tolist() == [0, 1, 2] and out["longclip_score"].isna().all()
    assert [r.split(":")[0] for r in out["longclip_score_error"]] == ["missing_file"] * 3
    assert f"resolved against the current directory {str(tmp_path.resolve())!r}" in proc.stderr
    assert "pass --image-root FOLDER" in proc.stderr and "3 of 3 rows failed missing_file" in proc.stderr
    assert "not one of the 3 rows could be scored (out.jsonl has each reason): exit status 3" in proc.stderr


def test_the_hint_names_the_image_root_it_used(tmp_path, tiny_model_dir):
    (tmp_path / "imgs").mkdir()
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "imgs" / "ok.jpg")
    rows = [{"image_path": "ok.jpg", "text": "a cat"}] + [{"image_path": f"{i}.jpg", "text": "a"} for i in range(3)]
    _jsonl(tmp_path / "in.jsonl", rows)
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--image-root", "imgs",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # one row scored: a normal exit, with the hint
    assert f"resolved against --image-root {str((tmp_path / 'imgs').resolve())!r}" in proc.stderr


def test_no_hint_when_the_missing_paths_are_absolute(tmp_path, tiny_model_dir):
    _jsonl(tmp_path / "in.jsonl", [{"image_path": str(tmp_path / "gone.jpg"), "text": "a cat"}])
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 3 and "--image-root" not in proc.stderr, proc.stderr


def test_embed_only_that_embeds_nothing_exits_3(tmp_path, tiny_model_dir):
    _jsonl(tmp_path / "in.jsonl", [{"image_path": "a.jpg"}, {"image_path": "b.jpg"}])
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "--embeddings", "emb", "--embed-only",
                cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "not one of the 2 rows could be embedded: exit status 3" in proc.stderr
    assert "rows with a failed image or text 2 (missing_file 2)" in proc.stderr


def test_summary_names_the_output_and_the_whole_runs_time(tmp_path, tiny_model_dir):
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "a.jpg")
    _jsonl(tmp_path / "in.jsonl", [{"image_path": "a.jpg", "text": "a cat"}] * 3)
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    scoring = float(re.search(r"over 3 rows in ([\d.]+) s", proc.stderr)[1])
    total = float(re.search(r"^output: out\.parquet \(([\d.]+) s in all, start-up included\)$", proc.stderr,
                            re.M)[1])
    assert total > scoring  # the model load and the interpreter's start are in it


def _interrupted(tmp_path, tiny_model_dir, monkeypatch):
    """An unfinished run of out.jsonl whose work folder holds its first chunk of 4 rows."""
    from longclip.runtime import LongCLIP
    from longclip.runtime.engines import local

    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "a.jpg")
    _jsonl(tmp_path / "in.jsonl", [{"image_path": "a.jpg", "text": f"caption {i}", "id": i} for i in range(10)])
    opts = RunOptions(image_root=str(tmp_path), chunk_rows=4)
    with stopped_after_first_chunk(monkeypatch):
        local.run_file(LongCLIP(tiny_model_dir, device="cpu"), tmp_path / "in.jsonl", tmp_path / "out.jsonl", opts,
                       progress=False)
    work = local.work_dir_for(tmp_path / "out.jsonl")
    assert [p.name for p in work.glob("chunk-*.npz")] == ["chunk-0000000.npz"]
    return work, ["--image-root", str(tmp_path), "--chunk-rows", "4"]


def test_a_run_without_resume_keeps_an_unfinished_runs_chunks(tmp_path, tiny_model_dir, monkeypatch):
    work, common = _interrupted(tmp_path, tiny_model_dir, monkeypatch)
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", *common, cwd=tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (f"an unfinished run of this output kept 1 finished chunk (4 rows) in {work.name!r}: continue it with "
            "--resume, or discard them with --restart") in proc.stderr
    assert (work / "chunk-0000000.npz").is_file() and not (tmp_path / "out.jsonl").exists()
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", *common, "--resume",
                cwd=tmp_path)
    assert proc.returncode == 0 and "resumed: 4 rows were already scored" in proc.stderr, proc.stderr
    assert read_table(tmp_path / "out.jsonl")["id"].tolist() == list(range(10))


def test_restart_discards_an_unfinished_run(tmp_path, tiny_model_dir, monkeypatch):
    work, common = _interrupted(tmp_path, tiny_model_dir, monkeypatch)
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", *common, "--restart",
                cwd=tmp_path)
    assert proc.returncode == 0 and "resumed" not in proc.stderr, proc.stderr
    assert read_table(tmp_path / "out.jsonl")["longclip_score_error"].tolist() == [""] * 10
    assert not work.exists()
    both = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "o2.jsonl", "--resume", "--restart",
                cwd=tmp_path)
    assert both.returncode == 2 and "pass one" in both.stderr


def test_resume_with_nothing_to_resume_says_so_and_starts(tmp_path, tiny_model_dir):
    shutil.copy(IMG / "small_41x97.jpg", tmp_path / "a.jpg")
    _jsonl(tmp_path / "in.jsonl", [{"image_path": "a.jpg", "text": "a cat"}])
    proc = _run("longclip-run", "in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to resume for this output" in proc.stderr and "starting from the beginning" in proc.stderr
    assert read_table(tmp_path / "out.jsonl")["longclip_score_error"].tolist() == [""]


def test_progress_advances_per_batch_not_per_chunk(tmp_path, tiny_model_dir, monkeypatch):
    """2,000 rows of distinct images in 1,024-row chunks, batches of 32: the bar's first step is one batch's rows,
    its steps add up to the rows exactly, and it moves many times a chunk."""
    import tqdm

    from longclip.runtime import LongCLIP
    from longclip.runtime.engines.local import run_file
    from longclip.runtime.engines.options import RunOptions

    rng = __import__("numpy").random.default_rng(0)
    for i in range(2000):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype="uint8")).save(tmp_path / f"{i}.png")
    _jsonl(tmp_path / "in.jsonl", [{"image_path": f"{i}.png", "text": f"t {i % 10}"} for i in range(2000)])
    steps: list[int] = []

    class Bar(tqdm.tqdm):
        def update(self, n=1):
            steps.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    run_file(LongCLIP(tiny_model_dir, device="cpu"), tmp_path / "in.jsonl", tmp_path / "out.jsonl",
             RunOptions(image_root=str(tmp_path), batch_size=32), progress=False)
    assert sum(steps) == 2000
    assert steps[0] == 32  # 1,024 rows x 32 of the chunk's 1,024 images back
    assert len(steps) >= 2000 // 32
