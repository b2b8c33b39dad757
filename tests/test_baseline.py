"""The mismatched-pair baseline (runtime/model/baseline.py): never equal content, bounded, the same set whatever
the chunking and the order chunks arrive in, and thresholds read off it exactly."""

from __future__ import annotations

import numpy as np
import pytest

from longclip.runtime.model.baseline import (
    BLOCK,
    Baseline,
    content_hash,
    describe,
    pair_block,
    pair_hash,
    split_chunk,
    suggest_threshold,
)
from longclip.runtime.model.scoring import l2_normalize


def rows_of(n: int, n_images: int, n_texts: int, seed: int = 0):
    """``n`` rows drawing from few images and captions (crawls repeat both), some rows failed."""
    rng = np.random.default_rng(seed)
    image_ids, text_ids = rng.integers(0, n_images, n), rng.integers(0, n_texts, n)
    images = l2_normalize(rng.normal(size=(n_images, 8)).astype(np.float32))
    texts = l2_normalize(rng.normal(size=(n_texts, 8)).astype(np.float32))
    valid = rng.random(n) > 0.1
    return image_ids, text_ids, images, texts, valid


def feed(base: Baseline, data, bounds: list[tuple[int, int]]):
    image_ids, text_ids, images, texts, valid = data
    kept = []
    for lo, hi in bounds:
        ok = valid[lo:hi]
        ii, tt = image_ids[lo:hi][ok], text_ids[lo:hi][ok]
        keys_i = np.array([content_hash(f"img{k}.jpg") for k in ii], dtype=np.uint64)
        keys_t = np.array([content_hash(f"caption {k}") for k in tt], dtype=np.uint64)
        kept.append(base.add_chunk(lo, ok, images[ii], texts[tt], keys_i, keys_t))
    return kept


def chunked(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def all_pairs(n: int, data) -> set[tuple[int, int]]:
    """Which (row, partner) pairs the baseline made, found by brute force over the hashes."""
    base = Baseline(n, cap=10 ** 9)
    feed(base, data, [(0, n)])
    hashes, _ = base.result()
    rows = np.arange(n)
    found = set()
    for i in rows:
        partners = rows[(rows // BLOCK) == (i // BLOCK)]
        for p, h in zip(partners, pair_hash(np.full(len(partners), i), partners)):
            if h in set(hashes.tolist()):
                found.add((int(i), int(p)))
    return found


def test_never_pairs_equal_content():
    n = 300
    data = rows_of(n, n_images=12, n_texts=9)
    image_ids, text_ids, *_, valid = data
    pairs = all_pairs(n, data)
    assert len(pairs) > 150  # most rows found a partner
    for i, p in pairs:
        assert i // BLOCK == p // BLOCK and valid[i] and valid[p] and i != p
        assert image_ids[i] != image_ids[p] and text_ids[i] != text_ids[p]


def test_equal_bytes_under_two_names_are_not_paired():
    """Two keys, one embedding: the same image under two paths is still the same content."""
    e = l2_normalize(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32))
    t = l2_normalize(np.array([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=np.float32))
    keys = np.arange(4, dtype=np.uint64)
    hashes, _ = pair_block(np.arange(4), e, t, keys, keys)
    made = {h: (i, p) for i in range(4) for p in range(4) for h in pair_hash(np.array([i]), np.array([p])).tolist()}
    assert sorted(made[h] for h in hashes.tolist()) == [(0, 2), (1, 2), (2, 3), (3, 0)]


def test_a_block_of_one_image_and_one_caption_gives_no_pair():
    e = np.tile(np.eye(4, dtype=np.float32)[:1], (5, 1))
    same = np.zeros(5, dtype=np.uint64)
    hashes, scores = pair_block(np.arange(5), e, e, same, same)
    assert len(hashes) == len(scores) == 0


@pytest.mark.parametrize("cap", [1, 37, 500])
def test_bounded(cap):
    n = 1000
    base = Baseline(n, cap=cap)
    feed(base, rows_of(n, 400, 400), chunked(n, 100))
    assert len(base.scores) == cap
    assert base.pending == 0


def test_the_same_whatever_the_chunking_and_order():
    n = 1000
    data = rows_of(n, 200, 150, seed=3)
    results = []
    for size, order in [(1000, 1), (64, 1), (100, 1), (7, -1), (333, -1), (1, 1)]:
        base = Baseline(n, cap=250)
        feed(base, data, chunked(n, size)[::order])
        results.append(base.result())
    for hashes, scores in results[1:]:
        assert hashes.tolist() == results[0][0].tolist()
        assert scores.tobytes() == results[0][1].tobytes()  # bit for bit


@pytest.mark.parametrize("n", [1000, 1024, 1001])  # the last block cut short, whole, and of one row
def test_a_row_count_known_only_at_the_end_gives_the_same_pairs(n):
    """An engine that streams its rows in order (Ray's driver) learns the row count at the end: the last block,
    which the input's end cut short, waits for finish() and is then paired as a known count would pair it."""
    data = rows_of(n, 200, 150, seed=4)
    known = Baseline(n, cap=300)
    feed(known, data, chunked(n, 37))
    streamed = Baseline(None, cap=300)
    feed(streamed, data, chunked(n, 37))
    assert streamed.pending == (1 if n % 64 else 0)
    streamed.finish(n)
    assert streamed.pending == 0
    assert streamed.result()[0].tolist() == known.result()[0].tolist()
    assert streamed.result()[1].tobytes() == known.result()[1].tobytes()


def test_a_resumed_chunk_gives_what_it_kept():
    """What add_chunk returns, given back through add (as a resumed run reads it from the chunk's file), counts
    as the chunk itself did."""
    n = 500
    data = rows_of(n, 100, 100, seed=5)
    whole = Baseline(n, cap=200)
    kept = feed(whole, data, chunked(n, 90))
    resumed = Baseline(n, cap=200)
    feed(resumed, data, chunked(n, 90)[3:])
    for pairs, fragments in kept[:3]:
        resumed.add(pairs, fragments)
    assert resumed.result()[0].tolist() == whole.result()[0].tolist()


def test_fragments_only_for_blocks_cut_by_the_chunk():
    valid = np.ones(100, dtype=bool)
    e = np.eye(100, dtype=np.float32)
    keys = np.arange(100, dtype=np.uint64)
    (hashes, _), fragments = split_chunk(10, valid, e, e, keys, keys, n_rows=1000)
    assert [(f.block, f.covered, f.rows[0], f.rows[-1]) for f in fragments] == [(0, 54, 10, 63), (1, 46, 64, 109)]
    assert len(hashes) == 0
    (hashes, _), fragments = split_chunk(960, valid[:40], e[:40], e[:40], keys[:40], keys[:40], n_rows=1000)
    assert fragments == [] and len(hashes) == 40  # block 15 holds rows 960..999: the last block is whole


def test_scores_are_the_pair_scores():
    e = np.eye(3, dtype=np.float32)
    t = l2_normalize(np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32))
    _, scores = pair_block(np.arange(3), e, t, np.arange(3, dtype=np.uint64), np.arange(3, dtype=np.uint64))
    # row 0's image with row 1's text: cos 1/sqrt(2); row 1's with row 2's: the same; row 2's with row 0's: 0
    assert scores.tolist() == pytest.approx([(1 + 2 ** -0.5) / 2, (1 + 2 ** -0.5) / 2, 0.5], abs=1e-6)


def test_thresholds():
    scores = np.arange(1, 1001, dtype=np.float32) / 1000 * 0.5  # 0.0005 .. 0.5
    assert suggest_threshold(scores, 0.01) == 0.4951  # >= 0.4951: 0.4955 .. 0.5, 10 of 1000
    assert suggest_threshold(scores, 0.001) == 0.4996  # only 0.5
    assert np.isnan(suggest_threshold(np.zeros(0, np.float32), 0.01))
    assert "rough: fewer than 1,000 pairs" in describe(scores[:999])
    assert describe(scores) == ("baseline: 1,000 mismatched pairs; 1% pass score >= 0.4951 (cos -0.0098), "
                                "0.1% pass >= 0.4996 (cos -0.0008)")


def test_a_report_sample_is_bounded_spread_and_the_same_every_time():
    from longclip.runtime.engines.sample import sample_rows

    rows = sample_rows(3_000_000, 4096)
    assert len(rows) == 4096 and rows.tolist() == sample_rows(3_000_000, 4096).tolist()
    assert (np.diff(rows) > 0).all() and rows[0] < 5000 and rows[-1] > 2_995_000  # in file order, all over it
    assert sample_rows(10, 4096).tolist() == list(range(10))
