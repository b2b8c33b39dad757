"""The report's baseline of mismatched pairs (no browser): drawn on the scores' axis, the suggested thresholds read
off it exactly, its size and how it was drawn printed (rough below 1,000 pairs), and a page without one saying so
and how to get one; each card's cosine next to its score."""

import re

import numpy as np
from reports import IMG, page_data, scored_frame, write

from longclip.runtime.model.baseline import suggest_threshold
from longclip.runtime.report.data import BINS, ReportOptions
from longclip.runtime.report.page import write_report

BASELINE = np.random.default_rng(7).normal(0.45, 0.03, 5000).astype(np.float32)


def report(tmp_path, baseline):
    path = write(scored_frame(300), tmp_path / "scored.parquet")
    write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG)), baseline=baseline)
    return (tmp_path / "r.html").read_text()


def test_the_baseline_on_the_scores_axis_and_its_thresholds(tmp_path):
    page = report(tmp_path, BASELINE)
    data = page_data(page)
    bins = np.floor(BASELINE.astype(np.float64) * BINS).astype(int)
    assert data["k0"] <= bins.min() and bins.max() <= data["k1"]  # one axis spans both
    assert sum(data["base"]) == 5000 and len(data["base"]) == len(data["counts"])
    assert data["base"][bins.max() - data["k0"]] >= 1
    want = {"1": suggest_threshold(BASELINE, 0.01), "0.1": suggest_threshold(BASELINE, 0.001)}
    assert data["suggested"] == want
    for name, t in want.items():
        passing = (BASELINE >= t).mean()
        assert passing <= float(name) / 100 < (BASELINE >= t - 1 / BINS).mean()  # the lowest such grid step
        assert f'data-t="{t:.4f}"' in page and f"{name} % pass: ≥ {t:.4f} (cos {2 * t - 1:.4f})" in page
    assert 'id="baseline-outline"' in page and 'id="false-keep"' in page
    note = re.search(r'id="baseline-note">(.*?)</p>', page, re.S)[1]
    assert note.startswith("Baseline: 5,000 mismatched pairs") and "blocks of 64" in note and "Rough" not in note
    assert "not the share of kept rows that are wrong" in note


def test_fewer_than_a_thousand_pairs_is_rough(tmp_path):
    note = re.search(r'id="baseline-note">(.*?)</p>', report(tmp_path, BASELINE[:999]), re.S)[1]
    assert note.startswith("Baseline: 999 mismatched pairs") and "Rough: fewer than 1,000 mismatched pairs" in note


def test_without_a_baseline_the_page_says_so_and_how_to_get_one(tmp_path):
    page = report(tmp_path, None)
    data = page_data(page)
    assert data["base"] is None and data["suggested"] == {}
    assert 'id="false-keep"' not in page and 'id="baseline-outline"' not in page
    note = re.search(r'id="baseline-note">(.*?)</p>', page, re.S)[1]
    assert note.startswith("No baseline of mismatched pairs") and "--report report.html" in note


def test_a_baseline_too_small_for_a_rate_suggests_only_what_it_can(tmp_path):
    data = page_data(report(tmp_path, BASELINE[:50]))
    assert list(data["suggested"]) == ["1", "0.1"]  # 0.1 % of 50 pairs: none may pass, the grid step above all
    assert data["suggested"]["0.1"] > float(BASELINE[:50].max())


def test_each_card_shows_the_cosine_next_to_the_score(tmp_path):
    page = report(tmp_path, None)
    cards = re.findall(r'<b>(\d\.\d{4})</b><span>row \d+</span><i class="cos">cos (-?\d\.\d{4})</i>', page)
    assert len(cards) > 40
    assert all(abs(2 * float(s) - 1 - float(c)) <= 1.5e-4 for s, c in cards)
