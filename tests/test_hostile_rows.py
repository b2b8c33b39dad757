"""Issue 13, from outside: a row can only cost a row, and nothing hangs.

Hostile rows go through the real console script (``longclip-run``, a subprocess) mixed with good ones, and through
the operator. Every input row must come back, in order, with its columns; a bad row gets a null score and
``<code>: <detail>`` with the exact code of ``runtime/contract/errors.py`` and a detail naming the value; a good row gets a
finite score in [0, 1], equal to the score of a clean run (a file of only the good rows).

| category | cases | where |
| --- | ---: | --- |
| 1. image files | 22 | ``IMAGE_CASES`` |
| 2. paths and texts as values | 38 | ``PATH_CASES`` (16), ``TEXT_CASES`` (22) |
| 3. encodings | 9 | ``INVALID_UTF8_LINE`` (1), the jsonl (5) and CSV (3) tests |
| 4. every output format, ``kill -9`` + ``--resume`` | 8 | 3 formats + the escapes, 4 kills |
| 5. bounded time and memory | 2 | ``BUDGET_S``, ``RSS_BOUND`` |
| the operator | 59 | ``operator_cases`` |

1. FIFO, /dev/null, a unix socket, a symlink loop, a dangling symlink, a path through a file, a 300-char name, a
   NUL byte, a folder, empty, text, truncated JPEG and PNG, random bytes after a PNG / JPEG / GIF magic, a DDS that
   raises NotImplementedError, a 1x300,000 PNG, a header-only bomb, mode 000, a good image named ``.txt`` / unnamed.
2. null, NaN, numbers (``True``, ``1`` and ``1.0`` apart), booleans, an integer over 64 bits, infinity, lists,
   dicts, empty and blank strings, lone surrogates, a 1 MB path; 1 MB texts of one word and of many words, a
   300,000-letter word, texts of 248 and 249 tokens, control characters, line separators, emoji, markup.
3. a jsonl line with an invalid UTF-8 byte (in the mixed file); a jsonl with a BOM, CRLF, an invalid byte in a value,
   one in a key, an escaped lone surrogate as a key; a CSV with a BOM, CRLF and a record with an invalid byte.
4. the mixed file to ``.json .csv .parquet``: readable, the same rows as ``.jsonl``, the lone surrogate U+FFFD in
   every format (an escape of it is JSON that ``pd.read_json`` and ``pyarrow.json`` refuse); killed (SIGKILL) in each of the 4 formats, after some chunks or (``.json``)
   with its output written but not yet moved into place: ``--resume`` gives the uninterrupted run's bytes.
5. the mixed file (two 1 MB texts, the 1x300,000 PNG, the bomb, the FIFO) within 60 s and 1 GiB peak RSS.

The operator gets the values above (but the 1 MB texts) and what only a DataFrame holds: bytes, bytearray, nested
lists, a tuple holding a list, an array, a set, ``pd.NA``, ``NaT``, a float32 NaN, a ``Path``; and a few files.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_preprocess import _dds_unknown_pixel_format, _png_header

from conftest import GOLDENS

SCRIPT = Path(sys.executable).with_name("longclip-run")
OK_JPG = GOLDENS / "images" / "small_41x97.jpg"
CHUNK_ROWS = 8  # the mixed file spans several chunks, so a kill lands between two of them
BUDGET_S = 60  # the whole mixed run; on the 2-core dev machine it takes about 3 s
RSS_BOUND = 1 << 30  # about 350 MB here; decoding thin.png's resize alone (32x9,600,000 RGBA) would need 1.2 GB


# --- running the console script ----------------------------------------------------------------------------------

@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int | None = None  # bytes, when measured


# A child's ru_maxrss counts the process it was forked from until it execs (Linux keeps the high-water mark
# across exec), so a child of pytest, hundreds of MB with ONNX Runtime and torch loaded, would report pytest's
# size. A small Python parent of its own reports the CLI's peak.
PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.exit(code)
"""


def cli(*args: object, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120, preexec_fn=None,
        measure: bool = False) -> Run:
    """``longclip-run *args``; a run still going after ``timeout`` is killed (its whole session) and fails the
    test, so a row that blocks (a FIFO opened for reading) cannot hang the suite. ``measure``: its peak RSS too."""
    command = [str(SCRIPT), *map(str, args)]
    if measure:
        command = [sys.executable, "-c", PEAK_RSS, *command]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=err, env={**os.environ, **(env or {})},
                                preexec_fn=preexec_fn, start_new_session=True)
        late = threading.Event()
        timer = threading.Timer(timeout, lambda: (late.set(), os.killpg(proc.pid, signal.SIGKILL)))
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        run = Run(proc.returncode, out.read().decode("utf-8", "backslashreplace"),
                  err.read().decode("utf-8", "backslashreplace"), seconds)
    assert not late.is_set(), f"longclip-run {args} was still running after {timeout} s: killed"
    if measure:
        *rest, peak = run.stdout.splitlines()
        run.stdout, run.peak_rss = "\n".join(rest), int(peak)
    return run


def succeeded(run: Run) -> Run:
    assert run.returncode == 0, run.stderr
    return run


def refused(run: Run, message: str) -> None:
    """A run-level refusal: exit 1, exactly one line on stderr, no traceback."""
    assert run.returncode == 1, run.stderr
    assert message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with a file's bytes (``None`` for a folder): what "nothing written" compares."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# A kill timed by polling races the run (the tiny model scores a chunk in milliseconds); this hook makes the real
# process SIGKILL itself at a named step: just before it moves the file named LONGCLIP_TEST_KILL_AT into place
# (a chunk of the work folder: the chunks before it are kept; the output: its complete .partial is left).
KILL_HOOK = """
import os
import signal

_replace, _at = os.replace, os.environ["LONGCLIP_TEST_KILL_AT"]


def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == _at:
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


os.replace = replace
"""


def killed_run(*args: object, cwd: Path, at: str) -> None:
    """``longclip-run *args`` killed with SIGKILL just before it moves ``at`` into place."""
    with tempfile.TemporaryDirectory() as hook:
        Path(hook, "sitecustomize.py").write_text(KILL_HOOK)
        path = os.pathsep.join(filter(None, [hook, os.environ.get("PYTHONPATH")]))
        run = cli(*args, cwd=cwd, env={"PYTHONPATH": path, "LONGCLIP_TEST_KILL_AT": at})
    assert run.returncode == -signal.SIGKILL, run.stderr


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    """One row per ``\\n``: JSON text may hold U+2028 or U+0085 as they are, which ``str.splitlines`` splits at."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def as_written(row: dict) -> dict:
    """``row`` as every output format writes it: each lone surrogate (a ``"\\ud800"`` escape, a byte that was not
    UTF-8) replaced by U+FFFD."""
    return json.loads(re.sub("[\ud800-\udfff]", "\ufffd", json.dumps(row, ensure_ascii=False)))


def same_json(a: object, b: object) -> bool:
    """Equality that holds for NaN and lone surrogates too (their JSON texts are compared)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- the cases ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    image: object
    text: object
    code: str | None  # "" scored; None: "unreadable" unless this process can read the file (root can)
    names: str = ""  # what the reason's detail must contain ("" for scored rows)


GOOD_TEXT = "a photo of a small animal"
LINE_SEPARATORS = "a cat\u2028on a mat\x85and\x1c\r a dog"  # a bare "\r": a CSV record must not split there
A_LOT = 1 << 20

IMAGE_CASES = [  # image paths relative to the image root
    Case("fifo", "fifo.png", GOOD_TEXT, "not_a_file", "a FIFO"),
    Case("dev_null", "/dev/null", GOOD_TEXT, "not_a_file", "'/dev/null'"),
    Case("socket", "sock.png", GOOD_TEXT, "not_a_file", "a socket"),
    Case("symlink_loop", "loop1.png", GOOD_TEXT, "bad_path", "symlink loop"),
    Case("dangling_symlink", "dangling.png", GOOD_TEXT, "missing_file", "symlink to a missing file"),
    Case("through_a_file", "ok.jpg/x.png", GOOD_TEXT, "missing_file", "a file, not a folder"),
    Case("name_300_chars", "n" * 300 + ".png", GOOD_TEXT, "bad_path", "too long"),
    Case("nul_byte", "a\x00b.png", GOOD_TEXT, "bad_path", "null byte"),
    Case("directory", "folder.png", GOOD_TEXT, "directory", "a directory"),
    Case("empty_file", "empty.png", GOOD_TEXT, "empty_file", "empty"),
    Case("text_file", "notes.png", GOOD_TEXT, "not_an_image", "not an image file"),
    Case("truncated_jpeg", "cut.jpg", GOOD_TEXT, "undecodable", "truncated"),
    Case("truncated_png", "cut.png", GOOD_TEXT, "undecodable", "truncated"),
    Case("junk_after_png_magic", "junk.png", GOOD_TEXT, "not_an_image", "not an image file"),
    Case("junk_after_jpeg_magic", "junk.jpg", GOOD_TEXT, "undecodable", "cannot decode image"),
    Case("junk_after_gif_magic", "junk.gif", GOOD_TEXT, "not_an_image", "not an image file"),
    Case("dds_not_implemented", "odd.dds", GOOD_TEXT, "undecodable", "NotImplementedError"),
    Case("thin_1x300000", "thin.png", GOOD_TEXT, "too_many_pixels", "1x300000"),
    Case("bomb_header", "bomb.png", GOOD_TEXT, "too_many_pixels", "bomb.png"),
    Case("mode_000", "noperm.jpg", GOOD_TEXT, None),
    Case("odd_extension", "photo.txt", GOOD_TEXT, ""),
    Case("no_extension", "photo", GOOD_TEXT, ""),
]

# True before 1 and 1.0: Python holds them equal, and each row's reason must still name its own value
PATH_CASES = [Case(f"path_{name}", value, GOOD_TEXT, code, names) for name, value, code, names in [
    ("null", None, "null_path", "missing (null)"),
    ("nan", math.nan, "null_path", "missing (null)"),
    ("true", True, "bad_path", "got True"),
    ("one", 1, "bad_path", "got 1"),
    ("one_float", 1.0, "bad_path", "got 1.0"),
    ("false", False, "bad_path", "got False"),
    ("int_over_64_bits", 2**70, "bad_path", f"got {2**70}"),
    ("infinity", math.inf, "bad_path", "got inf"),
    ("list", ["ok.jpg"], "bad_path", "got ['ok.jpg']"),
    ("dict", {"path": "ok.jpg"}, "bad_path", "got {'path': 'ok.jpg'}"),
    ("empty", "", "bad_path", "got ''"),
    ("whitespace", " \t\n", "bad_path", "got ' \\t\\n'"),
    ("lone_surrogate", "\ud800", "bad_path", "lone surrogate"),
    ("lone_surrogate_in_name", "ok\udc80.jpg", "bad_path", "lone surrogate"),
    ("one_mb", "p" * A_LOT, "bad_path", "too long"),
    ("good", "ok.jpg", "", ""),
]]

TEXT_CASES = [Case(f"text_{name}", "ok.jpg", value, code, names) for name, value, code, names in [
    ("null", None, "null_text", "missing (null)"),
    ("nan", math.nan, "null_text", "missing (null)"),
    ("true", True, "not_text", "got bool (True)"),
    ("one", 1, "not_text", "got int (1)"),
    ("one_float", 1.0, "not_text", "got float (1.0)"),
    ("false", False, "not_text", "got bool (False)"),
    ("int_over_64_bits", 2**70, "not_text", f"got int ({2**70})"),
    ("list", ["a cat"], "not_text", "got list (['a cat'])"),
    ("dict", {"text": "a cat"}, "not_text", "got dict ({'text': 'a cat'})"),
    ("empty", "", "empty_text", "empty or whitespace"),
    ("whitespace", " \t\r\n\u3000", "empty_text", "empty or whitespace"),
    ("lone_surrogate", "\ud800", "bad_text", "lone surrogate"),
    ("lone_surrogate_in_text", "a cat \udfff", "bad_text", "lone surrogate"),
    ("one_mb_word", "word" * (A_LOT // 4), "", ""),
    ("one_mb_of_words", "word " * (A_LOT // 5), "", ""),
    ("word_of_300000_letters", "x" * 300_000, "", ""),
    ("tokens_248", " ".join(["a"] * 246), "", ""),  # SOT + 246 + EOT: the context exactly
    ("tokens_249", " ".join(["a"] * 247), "", ""),  # cut: the same ids as 248, so the same score
    ("control_characters", "\x00\x01 a cat \u202e\u200b", "", ""),
    ("line_separators", LINE_SEPARATORS, "", ""),
    ("emoji", "\U0001f408" * 20, "", ""),
    ("markup", "<b>a &amp; cat</b> {{x}}", "", ""),
]]

INVALID_UTF8_LINE = b'{"case": "invalid_utf8_byte", "image_path": "ok.jpg", "text": "caf\xe9 au lait"}\n'
CASES = IMAGE_CASES + PATH_CASES + TEXT_CASES
CUT_TEXTS = 4  # the two 1 MB texts, the 300,000-letter word and 249 tokens pass 248 tokens


def make_images(root: Path) -> None:
    """The files of ``IMAGE_CASES`` in ``root``."""
    jpg, png = OK_JPG.read_bytes(), (GOLDENS / "images" / "rgb_333x517.png").read_bytes()
    junk = random.Random(0).randbytes(2000)
    files = {"ok.jpg": jpg, "empty.png": b"", "notes.png": b"hello, not an image\n", "cut.jpg": jpg[: len(jpg) // 2],
             "cut.png": png[: len(png) // 2], "junk.png": b"\x89PNG\r\n\x1a\n" + junk,
             "junk.jpg": b"\xff\xd8\xff\xe0" + junk, "junk.gif": b"GIF89a" + junk,
             "odd.dds": _dds_unknown_pixel_format(), "bomb.png": _png_header(40_000, 40_000), "noperm.jpg": jpg,
             "photo.txt": jpg, "photo": jpg}
    for name, data in files.items():
        (root / name).write_bytes(data)
    os.chmod(root / "noperm.jpg", 0)
    Image.new("L", (1, 300_000), 7).save(root / "thin.png")  # 665 bytes; resized to 32 px it is 32x9,600,000
    os.mkfifo(root / "fifo.png")
    (root / "loop1.png").symlink_to("loop2.png")
    (root / "loop2.png").symlink_to("loop1.png")
    (root / "dangling.png").symlink_to("nowhere.png")
    (root / "folder.png").mkdir()
    # bound from a child in the folder: a socket path must fit in 108 bytes, a relative one always does
    subprocess.run([sys.executable, "-c", "import socket; socket.socket(socket.AF_UNIX).bind('sock.png')"],
                   cwd=root, check=True)


def readable(path: Path) -> bool:
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        return False


def expected_code(case: Case, root: Path) -> str:
    if case.code is not None:
        return case.code
    # mode 000: root (CAP_DAC_OVERRIDE) reads it anyway, and then it is a good image; anyone else gets unreadable
    return "" if readable(root / str(case.image)) else "unreadable"


def check_row(reason: str, score: object, code: str, names: str) -> None:
    """One output row against its case: scored, or null + ``<code>: <detail naming the value>``."""
    if code:
        assert score is None or (isinstance(score, float) and math.isnan(score)), (reason, score)
        assert reason.startswith(f"{code}: ") and len(reason) > len(code) + 2, reason
        assert names in reason, (names, reason)
        assert len(reason) < 2000, "a reason is one bounded line, whatever the value"
        assert "\n" not in reason
    else:
        assert reason == "" and 0 <= score <= 1, (reason, score)


# --- the mixed file, its clean twin and their runs --------------------------------------------------------------

@dataclass
class Mixed:
    folder: Path  # the run's folder: the input, the outputs
    root: Path  # the image root
    model: Path
    rows: list[dict]  # as they should come back (each lone surrogate, and the invalid UTF-8 line's byte, as U+FFFD)
    codes: list[str]  # per row: "" scored, else the reason's code
    names: list[str]  # per row: what the reason must contain
    clean_scores: list[float]  # per scored row, from a run of only those rows
    run: Run | None = None  # the run to out.jsonl, with its summary on stderr

    def args(self, output: str) -> list[object]:
        return ["mixed.jsonl", "-o", output, "-m", self.model, "--image-root", self.root, "--chunk-rows", CHUNK_ROWS,
                "--device", "cpu"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_model_dir) -> Mixed:
    base = tmp_path_factory.mktemp("hostile")
    root, folder = base / "images", base / "run"
    root.mkdir()
    folder.mkdir()
    make_images(root)
    rows = [{"n": n, "case": c.name, "image_path": c.image, "text": c.text} for n, c in enumerate(CASES)]
    codes = [expected_code(c, root) for c in CASES]
    names = ["permission denied" if code == "unreadable" else c.names for c, code in zip(CASES, codes)]
    lines = [json.dumps(r).encode() + b"\n" for r in rows]
    at = len(lines) // 2  # among the others, neither first nor last
    lines.insert(at, INVALID_UTF8_LINE)
    (folder / "mixed.jsonl").write_bytes(b"".join(lines))
    rows.insert(at, {"case": "invalid_utf8_byte", "image_path": "ok.jpg", "text": "caf\udce9 au lait"})
    codes.insert(at, "bad_encoding")
    names.insert(at, f"bad_encoding: line {at + 1} of 'mixed.jsonl' is not valid UTF-8")
    good = [r for r, code in zip(rows, codes) if not code]
    write_jsonl(folder / "clean.jsonl", [{"image_path": "ok.jpg", "text": r["text"]} for r in good])
    succeeded(cli("clean.jsonl", "-o", "clean-out.jsonl", "-m", tiny_model_dir, "--image-root", root,
                  "--device", "cpu", "-q", cwd=folder))
    clean = [r["longclip_score"] for r in read_jsonl(folder / "clean-out.jsonl")]
    mixed = Mixed(folder, root, tiny_model_dir, [as_written(r) for r in rows], codes, names, clean)
    mixed.run = succeeded(cli(*mixed.args("out.jsonl"), cwd=folder, measure=True))
    return mixed


def test_every_row_comes_back_in_order_with_its_columns_and_reason(mixed):
    out = read_jsonl(mixed.folder / "out.jsonl")
    assert len(out) == len(mixed.rows)
    for got, want, code, names in zip(out, mixed.rows, mixed.codes, mixed.names):
        score, reason = got.pop("longclip_score"), got.pop("longclip_score_error")
        assert same_json(got, want) and list(got) == list(want), (got, want)  # columns, values, key order
        check_row(reason, score, code, names)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.name)
def test_image_file_reasons_name_the_file(mixed, case):
    (row,) = [r for r in read_jsonl(mixed.folder / "out.jsonl") if r.get("case") == case.name]
    code = expected_code(case, mixed.root)
    check_row(row["longclip_score_error"], row["longclip_score"], code, case.names)
    if code:  # the file as resolved against --image-root, quoted
        assert repr(os.fspath(mixed.root / str(case.image))) in row["longclip_score_error"]


def test_good_rows_score_as_in_a_clean_run(mixed):
    out = read_jsonl(mixed.folder / "out.jsonl")
    good = [r["longclip_score"] for r, code in zip(out, mixed.codes) if not code]
    assert len(good) == len(mixed.clean_scores) >= 12
    assert all(math.isfinite(s) and 0 <= s <= 1 for s in good)
    np.testing.assert_allclose(good, mixed.clean_scores, rtol=1e-6)
    by_case = {r["case"]: r["longclip_score"] for r in out if "case" in r}
    assert by_case["text_tokens_248"] == by_case["text_tokens_249"]  # cut to the same 248 ids
    assert by_case["odd_extension"] == by_case["no_extension"] == by_case["path_good"]  # the same bytes


def test_summary_counts_every_row(mixed):
    failed = len([c for c in mixed.codes if c])
    summary = mixed.run.stderr
    assert f"rows {len(mixed.rows)}: scored {len(mixed.rows) - failed}, failed {failed} (" in summary
    assert f"texts cut at 248 tokens: {CUT_TEXTS}" in summary


def test_the_mixed_run_is_bounded_in_time_and_memory(mixed):
    assert mixed.run.peak_rss is not None and mixed.run.peak_rss > 50 << 20  # measured, and the CLI's own
    assert mixed.run.seconds < BUDGET_S, f"{mixed.run.seconds:.1f} s for {len(mixed.rows)} rows"
    assert mixed.run.peak_rss < RSS_BOUND, f"peak RSS {mixed.run.peak_rss / 2**20:.0f} MiB"


# --- 3. encodings ------------------------------------------------------------------------------------------------

def test_jsonl_bom_crlf_and_lines_that_are_not_utf8(tmp_path, tiny_model_dir):
    shutil.copy(OK_JPG, tmp_path / "ok.jpg")
    lines = [b'\xef\xbb\xbf{"image_path": "ok.jpg", "text": "first, after a BOM"}',
             b'{"image_path": "ok.jpg", "text": "a value with a byte that is not UTF-8: \xff"}',
             b'{"image_path": "ok.jpg", "text": "a key with one", "k\xffy": 1}',
             b'{"image_path": "ok.jpg", "text": "an escaped lone surrogate as a key", "\\ud800": 2}',
             b'{"image_path": "ok.jpg", "text": "last"}']
    (tmp_path / "in.jsonl").write_bytes(b"\r\n".join(lines) + b"\r\n")
    succeeded(cli("in.jsonl", "-m", tiny_model_dir, "-o", "out.jsonl", "--device", "cpu", "-q", cwd=tmp_path))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r.get("text", "")[:5] for r in out] == ["first", "a val", "a key", "an es", "last"]
    reasons = [r["longclip_score_error"] for r in out]
    assert reasons[0] == reasons[4] == "" and all(0 <= out[i]["longclip_score"] <= 1 for i in (0, 4))
    for number in (2, 3, 4):
        check_row(reasons[number - 1], out[number - 1]["longclip_score"], "bad_encoding",
                  f"line {number} of 'in.jsonl'")
    assert out[1]["text"].endswith("\ufffd")  # the byte written as U+FFFD, and named in the reason
    assert all("k\udcffy" not in r and "\ud800" not in r for r in out)  # a key UTF-8 cannot hold is left out
    assert "k\\udcffy" in reasons[2] and "\\ud800" in reasons[3]  # ... and named


def test_csv_bom_crlf_and_a_record_that_is_not_utf8(tmp_path, tiny_model_dir):
    shutil.copy(OK_JPG, tmp_path / "ok.jpg")
    data = (b"\xef\xbb\xbfimage_path,text,id\r\n"
            b"ok.jpg,a cat,1\r\n"
            b'ok.jpg,"caf\xe9, with a comma",2\r\n'
            b'ok.jpg,"two\r\nlines",3\r\n')
    (tmp_path / "in.csv").write_bytes(data)
    succeeded(cli("in.csv", "-m", tiny_model_dir, "-o", "out.jsonl", "--device", "cpu", "-q", cwd=tmp_path))
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["1", "2", "3"] and out[2]["text"] == "two\r\nlines"
    assert list(out[0]) == ["image_path", "text", "id", "longclip_score", "longclip_score_error"]
    check_row(out[1]["longclip_score_error"], out[1]["longclip_score"], "bad_encoding",
              "record 2 (line 3) of 'in.csv' is not valid UTF-8")
    assert all(out[i]["longclip_score_error"] == "" and 0 <= out[i]["longclip_score"] <= 1 for i in (0, 2))


# --- 4. every output format, and kill -9 + --resume ----------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(mixed):
    """The output of an uninterrupted run of the mixed file, per format (made once, on first use)."""
    made = {".jsonl": mixed.folder / "out.jsonl"}

    def get(suffix: str) -> Path:
        if suffix not in made:
            succeeded(cli(*mixed.args(f"out{suffix}"), "-q", cwd=mixed.folder))
            made[suffix] = mixed.folder / f"out{suffix}"
        return made[suffix]

    return get


def read_rows(path: Path) -> list[dict]:
    """Rows of any output format, each a dict of its cells."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".csv":
        import csv

        csv.field_size_limit(2**31 - 1)  # the 1 MB texts
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_every_format_holds_the_same_rows(mixed, reference, suffix):
    path = reference(suffix)
    got, want = read_rows(path), read_jsonl(reference(".jsonl"))
    assert len(got) == len(want)
    assert [r["longclip_score_error"] for r in got] == [r["longclip_score_error"] for r in want]
    scores = [r["longclip_score"] for r in got]
    if suffix == ".csv":  # text as written: "" for null
        scores = [float(s) if s else None for s in scores]
    assert [s if s is None or not math.isnan(s) else None for s in scores] == [r["longclip_score"] for r in want]
    assert next(r for r in got if r["case"] == "text_line_separators")["text"] == LINE_SEPARATORS
    surrogate = next(r for r in got if r["case"] == "path_lone_surrogate")
    assert surrogate["image_path"] == "\ufffd"  # UTF-8 cannot hold it: U+FFFD in every format, as documented
    if suffix == ".parquet":
        assert pd.read_parquet(path).shape == (len(want), 6)


def test_jsonl_writes_a_lone_surrogate_as_ufffd(mixed):
    raw = (mixed.folder / "out.jsonl").read_bytes()
    assert '"image_path": "\ufffd"'.encode() in raw and '"text": "\ufffd"'.encode() in raw
    assert b'"\\ud800' not in raw  # no JSON escape of one (no common reader takes it); reasons name it as text
    raw.decode("utf-8")  # and the file is UTF-8 throughout (pandas and pyarrow readers: tests/engines/test_output_text)


@pytest.mark.parametrize(("suffix", "chunks_done"), [(".jsonl", 3), (".json", None), (".csv", 5), (".parquet", 1)])
def test_kill_9_then_resume_gives_the_same_bytes(mixed, reference, suffix, chunks_done):
    """Killed after some chunks (or, ``None``, with the whole output written to its .partial but not moved into
    place), then ``--resume``: the file an uninterrupted run writes, byte for byte, and nothing else left."""
    output = f"killed-{chunks_done}{suffix}"
    at = output if chunks_done is None else f"chunk-{chunks_done:07d}.npz"
    killed_run(*mixed.args(output), "-q", cwd=mixed.folder, at=at)
    work = mixed.folder / f".{output}.longclip-run"
    assert not (mixed.folder / output).exists()  # never a partial output in place
    if chunks_done is None:
        assert len(list(mixed.folder.glob(f".{output}.*.partial"))) == 1
    else:
        assert len(list(work.glob("chunk-*.npz"))) == chunks_done
    run = succeeded(cli(*mixed.args(output), "--resume", cwd=mixed.folder))
    assert "resumed: " in run.stderr
    assert (mixed.folder / output).read_bytes() == reference(suffix).read_bytes()
    assert [p.name for p in mixed.folder.glob(f".{output}*")] == []  # no work folder, partial or lock left


# --- the operator --------------------------------------------------------------------------------------------------

# values only a DataFrame holds: (name, value, the image's code, its detail, the text's code, its detail)
FRAME_ONLY = [
    ("pd_na", pd.NA, "null_path", "missing (null)", "null_text", "missing (null)"),
    ("nat", pd.NaT, "null_path", "missing (null)", "null_text", "missing (null)"),
    ("float32_nan", np.float32("nan"), "null_path", "missing (null)", "null_text", "missing (null)"),
    # bytes are an image's encoded bytes (an image column of bytes): these are not an image
    ("bytes", b"ok.jpg", "not_an_image", "'<bytes>'", "not_text", "got bytes (b'ok.jpg')"),
    ("bytearray", bytearray(b"x"), "not_an_image", "'<bytes>'", "not_text", "got bytearray"),
    ("nested_list", [["ok.jpg", [1]]], "bad_path", "got [['ok.jpg', [1]]]", "not_text", "got list ("),
    ("tuple_holding_a_list", ("ok.jpg", [1]), "bad_path", "got ('ok.jpg', [1])", "not_text", "got tuple ("),
    ("array", np.array([1, 2]), "bad_path", "got array([1, 2])", "not_text", "got ndarray ("),
    ("set", {"ok.jpg"}, "bad_path", "got {'ok.jpg'}", "not_text", "got set ("),
]


def operator_cases(root: Path) -> list[Case]:
    """The frame-only values, the JSON ones (but the slow 1 MB texts), a few image files; by absolute path, since
    the operator resolves relative ones against the current directory."""
    cases = [Case(f"frame_{n}", v, GOOD_TEXT, ic, idetail) for n, v, ic, idetail, _, _ in FRAME_ONLY]
    cases += [Case(f"frame_text_{n}", "ok.jpg", v, tc, tdetail) for n, v, _, _, tc, tdetail in FRAME_ONLY]
    cases += [Case("frame_path_object", root / "ok.jpg", GOOD_TEXT, "")]
    cases += PATH_CASES + [c for c in TEXT_CASES if "mb" not in c.name and "300000" not in c.name]
    cases += [c for c in IMAGE_CASES if c.name in {"fifo", "dev_null", "directory", "thin_1x300000", "no_extension"}]

    def absolute(case: Case) -> Case:
        keep = not isinstance(case.image, str) or not case.image.strip() or case.code == "bad_path"
        return case if keep else Case(case.name, os.path.join(root, case.image), case.text, case.code, case.names)

    return [absolute(c) for c in cases]


def test_operator_returns_every_row_with_its_reason(mixed, tiny_model_dir):
    from test_operator import MemoryStorage

    from longclip.runtime import ImageLongCLIPEvaluator

    cases = operator_cases(mixed.root)
    index = [f"r{n // 2}" for n in range(len(cases))]  # duplicated labels: kept as they are
    passthrough = [(b"\x00raw", [[1, [2]]], {"k": (3,)}, None)[n % 4] for n in range(len(cases))]
    frame = pd.DataFrame({"image_path": pd.Series([c.image for c in cases], index=index, dtype=object),
                          "text": pd.Series([c.text for c in cases], index=index, dtype=object),
                          "extra": pd.Series(passthrough, index=index, dtype=object)})
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu")
    storage = MemoryStorage(frame)
    assert evaluator.run(storage) == ["longclip_score"]
    (out,) = storage.written
    assert list(out.index) == index
    assert list(out.columns) == ["image_path", "text", "extra", "longclip_score", "longclip_score_error"]
    assert all(a is b for a, b in zip(out["extra"], passthrough))  # cells handed back untouched
    scores, reasons = out["longclip_score"].tolist(), out["longclip_score_error"].tolist()
    for case, score, reason in zip(cases, scores, reasons):
        check_row(reason, None if math.isnan(score) else score, expected_code(case, mixed.root), case.names)
    good = [n for n, c in enumerate(cases) if not c.code]
    clean = MemoryStorage(pd.DataFrame({"image_path": [str(mixed.root / "ok.jpg")] * len(good),
                                        "text": [cases[n].text for n in good]}))
    evaluator.run(clean)
    np.testing.assert_allclose([scores[n] for n in good], clean.written[0]["longclip_score"], rtol=1e-6)
    empty = MemoryStorage(frame.iloc[:0])
    evaluator.run(empty)
    assert empty.written[0].shape == (0, 5)
