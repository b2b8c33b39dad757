"""The report's one streaming pass: statistics against numpy, exact kept counts, bounded memory on a large file,
refusals of files that are not scored files."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from reports import IMAGES, IMG, file_scores, kept_on_page, page_data, scored_frame, write

from longclip.runtime.contract.errors import InputError
from longclip.runtime.report.data import BINS, QUANTILES, ReportOptions, ScoreStats
from longclip.runtime.report.page import slider_sample, write_report

MEASURE = """
import json, os, sys
from longclip.runtime.report.data import ReportOptions, collect
from longclip.runtime.inputs.tables import TableReader

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

class MeasuredReader(TableReader):  # a real reader that notes resident memory as it hands out each chunk
    def chunks(self, n):
        for chunk in super().chunks(n):
            marks.append(resident())
            sizes.append(int(chunk.memory_usage(deep=True).sum()))
            yield chunk

marks, sizes = [], []
collect(MeasuredReader(sys.argv[1]), ReportOptions(exact_cap=10_000))
print(json.dumps({"resident": marks, "streamed": sum(sizes)}))
"""


def _resident_growth(path) -> tuple[float, float]:
    """In a fresh process, the pass over ``path``: resident memory once a third of the file has gone by against
    its highest later (flat, if no part of the pass keeps rows), and the bytes streamed as DataFrames."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    third = len(out["resident"]) // 3
    return max(out["resident"][third:]) - out["resident"][third], out["streamed"]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl", ".json"])
def test_statistics_and_kept_counts_match_numpy(tmp_path, suffix):
    frame = scored_frame(700)
    path = write(frame, tmp_path / f"scored{suffix}")
    data = write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG), chunk_rows=128))
    good = file_scores(path)
    assert len(good) == frame["longclip_score"].notna().sum()
    assert (data.rows, data.stats.n, data.failed) == (700, len(good), 700 - len(good))
    assert data.stats.exact
    assert data.stats.mean == pytest.approx(good.mean(), rel=1e-12)
    assert data.stats.std == pytest.approx(good.std(), rel=1e-9)
    assert (data.stats.min, data.stats.max) == (good.min(), good.max())
    want = dict(zip(QUANTILES, np.quantile(good, [q / 100 for q in QUANTILES])))
    assert data.stats.quantiles() == pytest.approx(want, rel=1e-12)
    page = (tmp_path / "r.html").read_text()
    assert f"<td>{want[50]:.4f}</td>" in page and f"<td>{good.std():.4f}</td>" in page
    embedded = page_data(page)
    for k in [0, embedded["k0"], 5000, 5555, 6000, 6001, embedded["k1"], BINS]:
        assert kept_on_page(embedded, k) == int((good >= k / BINS).sum()), k
    assert [p.score for p in data.lowest] == sorted(good)[:24]
    assert [p.score for p in data.highest] == sorted(good, reverse=True)[:24]


def test_grid_quantiles_beyond_the_exact_cap():
    scores = np.random.default_rng(3).beta(9, 6, 50_000)
    exact, grid = ScoreStats(exact_cap=10**6), ScoreStats(exact_cap=1000)
    for part in np.array_split(scores, 7):
        exact.add(part)
        grid.add(part)
    assert not grid.exact and exact.exact
    np.testing.assert_allclose(list(grid.quantiles().values()), list(exact.quantiles().values()), atol=1 / BINS)
    assert grid.mean == pytest.approx(scores.mean(), rel=1e-12) and grid.std == pytest.approx(scores.std(), rel=1e-9)


def test_large_file_streams_in_bounded_memory(tmp_path):
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("resident memory is read from /proc (Linux)")
    n = 300_000
    rng = np.random.default_rng(7)
    scores = rng.beta(9, 6, n).round(6)
    scores[::1000] = np.nan
    words = np.array("a photo of the red house with two windows near a quiet river under grey clouds".split())
    texts = [" ".join(w) for w in words[rng.integers(0, len(words), (1000, 30))]]
    frame = pd.DataFrame({"image_path": np.array(IMAGES)[np.arange(n) % len(IMAGES)],
                          "text": [f"{texts[i % 1000]} {i}" for i in range(n)], "longclip_score": scores,
                          "longclip_score_error": np.where(np.isnan(scores), "missing_file: gone", "")})
    frame.to_parquet(tmp_path / "big.parquet", index=False, row_group_size=1024)  # as longclip-run writes it
    del frame
    growth, streamed = _resident_growth(tmp_path / "big.parquet")
    # The last two thirds stream ~40 MB of DataFrames; a pass that kept them would grow by that much. Flat, up to
    # the allocator's steps (a few MB in a fresh process).
    assert streamed > 50e6 and growth < 12e6, f"grew {growth / 1e6:.1f} MB"
    opts = ReportOptions(image_root=str(IMG), exact_cap=10_000)
    start = time.perf_counter()
    data = write_report(tmp_path / "big.parquet", tmp_path / "r.html", opts)
    seconds = time.perf_counter() - start
    good = scores[np.isfinite(scores)]
    assert len(data.pool) == opts.pool and len(data.lowest) == len(data.highest) == opts.extremes
    assert (data.rows, data.stats.n, data.failed) == (n, len(good), 300) and not data.stats.exact
    np.testing.assert_allclose(list(data.stats.quantiles().values()),
                               np.quantile(good, [q / 100 for q in QUANTILES]), atol=1 / BINS)
    embedded = page_data((tmp_path / "r.html").read_text())
    for k in (5000, 6000, 6543, 7000):
        assert kept_on_page(embedded, k) == int((good >= k / BINS).sum())
    sample = slider_sample(data)
    assert len(sample) <= opts.sample + 2 * opts.extremes and len({p.row for p in sample}) == len(sample)
    assert sample[0].score == good.min() and sample[-1].score == good.max()
    print(f"300k rows ({streamed / 1e6:.0f} MB as DataFrames): resident memory grew "
          f"{growth / 1e6:.1f} MB over the last two thirds; {seconds:.1f} s")


@pytest.mark.parametrize(("content", "name", "message"), [
    ('{"image_path": "a.png", "text": "t", "score": 0.5}\n', "s.jsonl",
     "column 'longclip_score' not in '{d}/s.jsonl'; columns are ['image_path', 'text', 'score']; did you mean 'score'? (pass --output-key score)"),
    ('{"image_path": "a.png", "score": 0.5, "longclip_score": 0.5}\n', "s.jsonl",
     "column 'text' not in '{d}/s.jsonl'; columns are ['image_path', 'score', 'longclip_score']; pass --text-key naming one"),
    ('{"image_path": "a.png", "text": "t", "longclip_score": 0.5}\nnot json\n', "s.jsonl",
     "s.jsonl' line 2 is not valid JSON"),
    ("image_path,text,longclip_score\na.png,t,0.5\na.png,t,high\n", "s.csv",
     "score column 'longclip_score' holds 'high' at row 1, not a number"),
    ('{"image_path": "a.png", "text": "t", "longclip_score": 7.5}\n', "s.jsonl", "holds 7.5 at row 0, outside [0, 1]"),
    ("", "s.txt", "unsupported file type '.txt'"),
    (None, "missing.parquet", "input '{d}/missing.parquet' does not exist"),
])
def test_refusals_name_the_problem(tmp_path, content, name, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(InputError) as error:
        write_report(tmp_path / name, tmp_path / "r.html")
    assert message.format(d=tmp_path) in str(error.value)
    assert not (tmp_path / "r.html").exists()
