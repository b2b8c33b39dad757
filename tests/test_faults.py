"""Issue 24, items 10 and 11, through the real console script: faults of the process around a run end cleanly.

| kind | cases |
| --- | ---: |
| 11. out of file descriptors (ulimit -n 16, 24, 40 for 2 workers, 45 for 3): one line naming the limit and the ways out | 4 |
| 11. a limit met half-way, past the estimate (8 workers under 24): one line from the pool | 1 |
| 11. the way out: the same limits with --decode-workers 0 complete | 1 |
| 11. a worker that cannot exec (EACCES, ENOENT), one that exits before it is ready | 3 |
| 10. stderr closed, a pipe whose reader exited, /dev/full: output and report written, exit 0 | 3 |
| 10. the same with log lines to say (a leftover work folder), and a refused run: exit 1, nothing written | 2 |
| 10. longclip-report with a closed or broken stderr | 2 |
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_hostile_rows import OK_JPG, SCRIPT, cli, read_jsonl, succeeded, write_jsonl


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    shutil.copy(OK_JPG, tmp_path / "ok.jpg")
    write_jsonl(tmp_path / "in.jsonl", [{"image_path": "ok.jpg", "text": t} for t in ("a cat", "a dog")])
    return tmp_path


def _one_line(run, *needles: str) -> None:
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert lines[0].startswith("longclip-run: error: "), lines
    assert all(needle in lines[0] for needle in needles), lines


def _files_limit(n: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


# --- 11. out of file descriptors, workers that cannot start ------------------------------------------------------

@pytest.mark.parametrize("limit, workers", [(16, 2), (24, 2), (40, 2), (45, 3)])
def test_too_few_file_descriptors_for_the_workers_is_one_line(run_dir, tiny_model_dir, limit, workers):
    run = cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--decode-workers", workers, cwd=run_dir,
              preexec_fn=_files_limit(limit))
    _one_line(run, f"this process may have {limit} open files (ulimit -n) and {workers} decode worker processes "
              "need about ", ": raise the limit (ulimit -n 4096), or run with --decode-workers 0")
    assert not (run_dir / "out.jsonl").exists()


def test_a_file_limit_met_half_way_is_one_line(run_dir, tiny_model_dir, monkeypatch):
    """The estimate passed, the files still ran out, starting the workers or reading a graph (whichever comes
    first: the workers start while the model loads): the same kind of line, naming the limit and the ways out."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(_hook(run_dir, LOW_ESTIMATE)),
                                                                    os.environ.get("PYTHONPATH")])))
    run = cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--decode-workers", 8, cwd=run_dir,
              preexec_fn=_files_limit(24))
    _one_line(run, "[Errno 24] Too many open files while ", "(this process may have 24 open files: ulimit -n): raise "
              "the limit (ulimit -n 4096), or run with --decode-workers 0")


LOW_ESTIMATE = """
from longclip.runtime.decode import pool as decode_pool
decode_pool._FILES_BASE = decode_pool._FILES_PER_WORKER = 0
"""


def _hook(folder: Path, code: str) -> Path:
    hook = folder / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(code)
    return hook


def test_the_way_out_works_under_the_same_limits(run_dir, tiny_model_dir):
    for limit in (16, 20, 24):
        output = f"out-{limit}.jsonl"
        succeeded(cli("in.jsonl", "-m", tiny_model_dir, "-o", output, "--decode-workers", 0, cwd=run_dir,
                      preexec_fn=_files_limit(limit)))
        assert [r["longclip_score_error"] for r in read_jsonl(run_dir / output)] == ["", ""]


# Makes the parent's Popen of a decode worker fail (LONGCLIP_TEST_WORKER=eacces / enoent) or start a process that
# exits at once (exit): what a broken interpreter, a noexec mount or a missing file gives.
WORKER_HOOK = """
import errno, os, subprocess, sys

_Popen, _how = subprocess.Popen, os.environ["LONGCLIP_TEST_WORKER"]


class Popen(_Popen):
    def __init__(self, args, *rest, **kwargs):
        if isinstance(args, list) and any("longclip.runtime.decode.worker" in str(a) for a in args):
            if _how == "exit":
                args = [sys.executable, "-c", "import sys; sys.exit(3)"]
            else:
                code = errno.EACCES if _how == "eacces" else errno.ENOENT
                raise OSError(code, os.strerror(code), args[0])
        super().__init__(args, *rest, **kwargs)


subprocess.Popen = Popen
"""


@pytest.mark.parametrize("how, needles", [
    ("eacces", ("cannot start a decode worker (", "[Errno 13] Permission denied", "--decode-workers 0")),
    ("enoent", ("cannot start a decode worker (", "[Errno 2] No such file or directory", "--decode-workers 0")),
    ("exit", ("3 decode workers in a row exited or hung before they started (exit 3)", "--decode-workers 0")),
])
def test_a_worker_that_cannot_start_is_one_line(run_dir, tiny_model_dir, how, needles):
    with tempfile.TemporaryDirectory() as hook:
        Path(hook, "sitecustomize.py").write_text(WORKER_HOOK)
        path = os.pathsep.join(filter(None, [hook, os.environ.get("PYTHONPATH")]))
        run = cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", cwd=run_dir,
                  env={"PYTHONPATH": path, "LONGCLIP_TEST_WORKER": how})
    _one_line(run, "the decode workers failed: ", *needles)
    assert not (run_dir / "out.jsonl").exists()


# --- 10. a stderr that cannot be written ----------------------------------------------------------------------------

def _closed() -> None:
    os.close(2)


def _broken_pipe() -> None:
    read, write = os.pipe()
    os.close(read)  # its reader exited: every write is EPIPE
    os.dup2(write, 2)
    os.close(write)


def _full() -> None:
    full = os.open("/dev/full", os.O_WRONLY)  # every write is ENOSPC
    os.dup2(full, 2)
    os.close(full)


STDERR = {"closed": _closed, "a broken pipe": _broken_pipe, "/dev/full": _full}


@pytest.fixture(scope="module")
def clean_output(tmp_path_factory, tiny_model_dir) -> bytes:
    folder = tmp_path_factory.mktemp("clean")
    shutil.copy(OK_JPG, folder / "ok.jpg")
    write_jsonl(folder / "in.jsonl", [{"image_path": "ok.jpg", "text": t} for t in ("a cat", "a dog")])
    succeeded(cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", cwd=folder))
    return (folder / "out.jsonl").read_bytes()


@pytest.mark.parametrize("stderr", STDERR.values(), ids=STDERR.keys())
def test_a_run_completes_whatever_its_stderr(run_dir, tiny_model_dir, clean_output, stderr):
    run = cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--report", "r.html", cwd=run_dir,
              preexec_fn=stderr)
    assert run.returncode == 0
    assert (run_dir / "out.jsonl").read_bytes() == clean_output
    assert (run_dir / "r.html").read_text().count("a cat") >= 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["in.jsonl", "ok.jpg", "out.jsonl", "r.html"]


def test_log_lines_and_refusals_with_a_broken_stderr(run_dir, tiny_model_dir, clean_output):
    (run_dir / ".out.jsonl.longclip-run").mkdir()  # left by another run: "starting over: removing ..." is logged
    (run_dir / ".out.jsonl.longclip-run" / "chunk-0000000.npz").write_bytes(b"garbage")
    run = cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--restart", cwd=run_dir, preexec_fn=_broken_pipe)
    assert run.returncode == 0 and (run_dir / "out.jsonl").read_bytes() == clean_output
    run = cli("missing.jsonl", "-m", tiny_model_dir, "-o", "other.jsonl", cwd=run_dir, preexec_fn=_broken_pipe)
    assert run.returncode == 1 and not (run_dir / "other.jsonl").exists()  # refused: its one line is lost


@pytest.mark.parametrize("stderr", [_closed, _broken_pipe], ids=["closed", "a broken pipe"])
def test_longclip_report_completes_whatever_its_stderr(run_dir, clean_output, stderr):
    (run_dir / "out.jsonl").write_bytes(clean_output)
    report = SCRIPT.with_name("longclip-report")
    done = subprocess.run([str(report), "out.jsonl", "-o", "r.html"], cwd=run_dir, preexec_fn=stderr, timeout=300,
                          stdout=subprocess.DEVNULL)
    assert done.returncode == 0 and "a dog" in (run_dir / "r.html").read_text()
