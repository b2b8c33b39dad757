"""longclip-report and longclip-run --report from outside: report paths refused up front, the missing-images
warning, a report written end to end."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from reports import IMAGES, IMG, kept_on_page, page_data, scored_frame, write

from longclip.runtime.report.data import BINS


def report_cli(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longclip.runtime.cli.report", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def assert_one_line_refusal(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr == f"longclip-report: error: {message}\n", proc.stderr


def test_cli_refusal_is_one_line(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"image_path": "a.png", "text": "t", "score": 0.5}\n')
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.cli.report", "s.jsonl", "-o", "r.html"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == ("longclip-report: error: column 'longclip_score' not in 's.jsonl'; columns are "
                           "['image_path', 'text', 'score']; did you mean 'score'? (pass --output-key score)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


@pytest.mark.parametrize(("root", "message"), [
    ("/nonexistent", "--image-root '/nonexistent' does not exist: pass the folder that the relative image paths are "
     "relative to"),
    ("s.jsonl", "--image-root 's.jsonl' is not a folder: pass the folder that the relative image paths are relative "
     "to"),
])
def test_cli_refuses_an_image_root_that_is_no_folder(tmp_path, root, message):
    (tmp_path / "s.jsonl").write_text('{"image_path": "a.png", "text": "t", "longclip_score": 0.5}\n')
    proc = report_cli(tmp_path, "s.jsonl", "-o", "r.html", "--image-root", root)
    assert_one_line_refusal(proc, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_cli_writes_a_report(tmp_path):
    write(scored_frame(60), tmp_path / "scored.parquet")
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.cli.report", "scored.parquet", "-o", "r.html",
                           "--image-root", str(IMG), "--title", "Sixty pairs"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "report r.html: 60 rows, 56 scored, 4 failed" in proc.stderr
    assert "<h1>Sixty pairs</h1>" in (tmp_path / "r.html").read_text()


def test_longclip_run_with_report(tmp_path, tiny_model_dir):
    rows = [{"image_path": name, "text": f"caption {i} of a scene"} for i, name in enumerate(IMAGES * 2)]
    rows.append({"image_path": "gone.png", "text": "lost"})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.cli.run", "in.jsonl", "-m", str(tiny_model_dir),
                           "-o", "out.parquet", "--image-root", str(IMG), "--report", "report.html"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "report: report.html" in proc.stderr
    out = pd.read_parquet(tmp_path / "out.parquet")
    good = out["longclip_score"].dropna().to_numpy()
    page = (tmp_path / "report.html").read_text()
    embedded = page_data(page)
    assert (embedded["rows"], embedded["scored"]) == (len(rows), len(IMAGES) * 2)
    k = int(np.median(good) * BINS)
    assert kept_on_page(embedded, k) == int((good >= k / BINS).sum())
    assert f"<td>{good.mean():.4f}</td>" in page and "missing_file" in page


@pytest.mark.parametrize(("report", "message"), [
    ("no/report.html", "cannot write report 'no/report.html': folder 'no' does not exist"),
    ("report.txt", "report 'report.txt' does not end in .html or .htm; name it so, e.g. 'report.html'"),
])
def test_longclip_run_checks_the_report_path_before_scoring(tmp_path, tiny_model_dir, report, message):
    (tmp_path / "in.jsonl").write_text(json.dumps({"image_path": IMAGES[0], "text": "x"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.cli.run", "in.jsonl", "-m", str(tiny_model_dir),
                           "-o", "out.jsonl", "--report", report], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr == f"longclip-run: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize(("output", "message"), [
    ("r.txt", "report 'r.txt' does not end in .html or .htm; name it so, e.g. 'r.html'"),
    ("report", "report 'report' does not end in .html or .htm; name it so, e.g. 'report.html'"),
    ("r.html.bak", "report 'r.html.bak' does not end in .html or .htm; name it so, e.g. 'r.html.html'"),
    ("scored.jsonl", "report 'scored.jsonl' is the scored file 'scored.jsonl' itself: writing it would overwrite the "
                     "input; name another file, e.g. 'scored.html'"),
    ("sub/../scored.jsonl", "report 'sub/../scored.jsonl' is the scored file 'scored.jsonl' itself: writing it would "
                            "overwrite the input; name another file, e.g. 'sub/../scored.html'"),
    ("{d}/scored.jsonl", "report '{d}/scored.jsonl' is the scored file 'scored.jsonl' itself: writing it would "
                         "overwrite the input; name another file, e.g. '{d}/scored.html'"),
    ("link.HTML", "report 'link.HTML' is the scored file 'scored.jsonl' itself: writing it would overwrite the "
                  "input; name another file, e.g. 'link.report.html'"),  # a hard link to it
])
def test_cli_refuses_a_report_path_up_front(tmp_path, output, message):
    scored = write(scored_frame(40), tmp_path / "scored.jsonl")
    (tmp_path / "sub").mkdir()
    os.link(scored, tmp_path / "link.HTML")
    before = scored.read_bytes()
    listing = sorted(p.name for p in tmp_path.iterdir())
    proc = report_cli(tmp_path, "scored.jsonl", "-o", output.format(d=tmp_path), "--image-root", IMG)
    assert_one_line_refusal(proc, message.format(d=tmp_path))
    assert scored.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == listing


@pytest.mark.parametrize("output", ["R.HTML", "r.htm", "r.Html"])
def test_report_suffix_is_case_insensitive(tmp_path, output):
    write(scored_frame(20), tmp_path / "scored.parquet")
    proc = report_cli(tmp_path, "scored.parquet", "-o", output, "--image-root", IMG, "-q")
    assert proc.returncode == 0 and proc.stderr == "" and (tmp_path / output).is_file()


@pytest.mark.parametrize(("rows", "root", "warns"), [
    (60, None, "the current directory {d!r}"),  # run where the images are not
    (60, "{d}/elsewhere", "--image-root '{d}/elsewhere'"),
    (60, str(IMG), None),
    (2, None, None),  # two missing images are not "most of many"
])
def test_cli_warns_when_most_images_are_missing(tmp_path, rows, root, warns):
    write(scored_frame(rows), tmp_path / "scored.parquet")
    (tmp_path / "elsewhere").mkdir()
    proc = report_cli(tmp_path, "scored.parquet", "-o", "r.html",
                      *(["--image-root", root.format(d=tmp_path)] if root else []))
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "--image-root" in line]
    if warns is None:
        assert warning == [], proc.stderr
    else:
        assert len(warning) == 1 and warns.format(d=str(tmp_path)) in warning[0], proc.stderr
        assert re.match(r"\d+ of the \d+ images to show are missing files; relative image paths were resolved "
                        r"against .*: pass --image-root naming the folder they are relative to$", warning[0])
