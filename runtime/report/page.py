"""A self-contained HTML report of a scored file, for choosing a filtering threshold by looking at pairs.

One streaming pass (:mod:`.report_data`) gathers counts and bounded samples; only then are the images of the
pairs to be shown opened, each once, and embedded as small JPEG data URIs. The page has no network references
(its Content-Security-Policy forbids them) and works offline; its one script drives the threshold slider.

>>> write_report("scored.parquet", "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np

from ..errors import InputError, RowError
from ..preprocess import load_image
from ..rows import cell_key, is_null, resolve_image_path
from ..tables import TableReader
from .data import BINS, QUANTILES, Pair, ReportData, ReportOptions, collect
from .svg import histogram_svg

log = logging.getLogger(__name__)

THUMB_SIZE = 128  # longest side, pixels
QUANTILE_PAIRS = 4  # pairs shown around each quantile
BOUNDARY = 4  # pairs shown on each side of the threshold
MAX_TEXT = 3000  # characters of a caption kept in the page


def thumbnail_uri(path: Path, size: int = THUMB_SIZE) -> str:
    """A JPEG data URI of the image at ``path``, longest side ``size``; :class:`ImageError` if it cannot be read.

    >>> thumbnail_uri(Path("photo.jpg"))[:23]  # doctest: +SKIP
    'data:image/jpeg;base64,'
    """
    image = load_image(path)
    image.thumbnail((size, size), reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Thumbnails:
    """Each distinct image once, as a CSS class whose background is a JPEG data URI (``none``: a placeholder).
    Classes are numbered in order of first use, so the same file gives the same page."""

    def __init__(self, image_root: str | None, size: int = THUMB_SIZE):
        self.root = Path(image_root) if image_root is not None else None
        self.size = size
        self._made: dict[Hashable, str | RowError] = {}
        self._classes: dict[Hashable, tuple[str, str]] = {}
        self._rules: list[str] = []

    def _make(self, value: object) -> str | RowError:
        try:
            return thumbnail_uri(resolve_image_path(value, self.root), self.size)
        except RowError as exc:
            return exc

    def prefetch(self, values: Iterable[object]) -> None:
        """Make the thumbnails of ``values`` now, a few at a time (Pillow decodes without holding the GIL)."""
        todo = {cell_key(v): v for v in values if cell_key(v) not in self._made}
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            self._made.update(zip(todo, pool.map(self._make, todo.values())))

    def __call__(self, value: object) -> tuple[str, str]:
        """``(css class, hover text)`` for an image cell."""
        key = cell_key(value)
        if key not in self._classes:
            made = self._made[key] if key in self._made else self._make(value)
            if isinstance(made, RowError):
                self._classes[key] = ("none", f"{value}\n{made}")
            else:
                name = f"t{len(self._rules)}"
                self._rules.append(f'.{name} {{ background-image: url("{made}"); }}')
                self._classes[key] = (name, str(value))
        return self._classes[key]

    @property
    def count(self) -> int:
        return len(self._rules)

    def css(self) -> str:
        return "\n".join(self._rules)


def slider_sample(data: ReportData) -> list[Pair]:
    """Up to ``options.sample`` pairs from the pool, half evenly spaced in rank and half in score, plus the
    lowest and highest pairs: dense where the data is, present in the tails. Sorted by score."""
    pool, half = data.pool, data.options.sample // 2
    chosen = {p.row: p for p in data.lowest + data.highest}
    if pool:
        scores = np.array([p.score for p in pool])
        ranks = np.linspace(0, len(pool) - 1, min(half, len(pool))).round().astype(int)
        near = [_nearest(scores, v, 1)[0] for v in np.linspace(scores[0], scores[-1], half)]
        chosen.update((pool[i].row, pool[i]) for i in [*ranks, *near])
    return sorted(chosen.values(), key=lambda p: (p.score, p.row))


def _nearest(scores: np.ndarray, value: float, n: int) -> list[int]:
    return [int(i) for i in np.argsort(np.abs(scores - value), kind="stable")[:n]]


def quantile_pairs(data: ReportData, quantiles: dict[int, float]) -> dict[int, list[Pair]]:
    """The ``QUANTILE_PAIRS`` candidate pairs nearest each quantile's score, by score."""
    candidates = list({p.row: p for p in data.pool + data.lowest + data.highest}.values())
    if not candidates:
        return {}
    scores = np.array([p.score for p in candidates])
    return {q: sorted((candidates[i] for i in _nearest(scores, v, QUANTILE_PAIRS)), key=lambda p: (p.score, p.row))
            for q, v in quantiles.items()}


def _text(value: object) -> str:
    if is_null(value):
        return "(no text)"
    text = str(value)
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}… [+{len(text) - MAX_TEXT} characters]"


def _card(pair: Pair, thumbs: Thumbnails) -> str:
    css, hover = thumbs(pair.image)
    return (f'<figure class="card"><div class="th {css}" title="{html.escape(hover)}"></div><figcaption>'
            f'<div class="meta"><b>{pair.score:.4f}</b><span>row {pair.row}</span></div>'
            f'<p class="cap" title="click to expand">{html.escape(_text(pair.text))}</p></figcaption></figure>')


def _cards(pairs: Iterable[Pair], thumbs: Thumbnails) -> str:
    body = "".join(_card(p, thumbs) for p in pairs)
    return f'<div class="cards">{body or "<p class=empty>no scored rows</p>"}</div>'


def _num(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def _stats(data: ReportData, quantiles: dict[int, float]) -> str:
    s = data.stats
    pct = f" ({100 * data.failed / data.rows:.1f}%)" if data.rows else ""
    counts = [("rows", f"{data.rows:,}"), ("scored", f"{s.n:,}"), ("failed", f"{data.failed:,}{pct}"),
              ("mean", _num(s.mean if s.n else math.nan)), ("std", _num(s.std))]
    spread = [("min", _num(s.min if s.n else math.nan)), *((f"p{q}", _num(v)) for q, v in quantiles.items()),
              ("max", _num(s.max if s.n else math.nan))]
    rows = "".join("<tr>" + "".join(f"<th>{k}</th>" for k, _ in part) + "</tr><tr>" +
                   "".join(f"<td>{v}</td>" for _, v in part) + "</tr>" for part in (counts, spread))
    how = ("exact" if s.exact else f"read off a grid of {BINS:,} bins (within {1 / BINS:g}), as there are more than "
           f"{data.options.exact_cap:,} scores")
    return (f'<table class="stats" id="stats">{rows}</table>'
            f'<p class="note">Quantiles: numpy\'s linear method, {how}.</p>')


def _failures(data: ReportData, thumbs: Thumbnails) -> str:
    if not data.failed:
        return '<p class="empty">No failed rows.</p>'
    counts = "".join(f'<tr><td class="reason">{html.escape(code)}</td><td class="n">{n:,}</td></tr>'
                     for code, n in data.failures.most_common())
    examples = []
    for code, _ in data.failures.most_common():
        for p in data.failure_examples.get(code, []):
            css, hover = thumbs(p.image)
            examples.append(f'<tr><td><div class="th {css}" title="{html.escape(hover)}"></div></td>'
                            f'<td class="n">{p.row}</td><td>{html.escape(str(p.image))}</td>'
                            f'<td><p class="cap" title="click to expand">{html.escape(_text(p.text))}</p></td>'
                            f'<td class="reason">{html.escape(p.error)}</td></tr>')
    return (f'<table class="fail" id="failure-counts"><tr><th>reason</th><th>rows</th></tr>{counts}</table>'
            f'<h3>Examples (up to {data.options.failure_examples} per reason)</h3><table class="fail" id="failures">'
            f'<tr><th></th><th>row</th><th>image</th><th>text</th><th>error</th></tr>{"".join(examples)}</table>')


def _threshold(data: ReportData, sample: list[Pair], svg: str) -> str:
    if not data.stats.n:
        return '<section id="choose"><h2>Choose a threshold</h2><p class="empty">No scored rows.</p></section>'
    lo, hi = _grid_range(data)
    key = html.escape(data.options.output_key)
    return f"""<section id="choose"><h2>Choose a threshold</h2>
<div class="controls"><label for="threshold">Keep rows with <code>{key}</code> ≥</label>
<input type="range" id="threshold" min="{lo / BINS}" max="{hi / BINS}" step="{1 / BINS}">
<input type="number" id="threshold-num" min="{lo / BINS}" max="{hi / BINS}" step="{1 / BINS}" aria-label="threshold">
<span class="kept">kept <b id="kept-count"></b> of {data.stats.n:,} scored (<b id="kept-pct"></b>),
dropped <span id="dropped-count"></span></span></div>
<p class="note">Counts are exact at every step of {1 / BINS:g}. Failed rows ({data.failed:,}) have no score and
are dropped by any threshold. pandas: <code id="filter-code"></code></p>
{svg}
<div class="boundary"><div><h3>Just below — dropped</h3><div class="cards" id="below"></div></div>
<div><h3>Just above — kept</h3><div class="cards" id="above"></div></div></div>
<p class="note">Boundary pairs come from a sample of {len(sample):,} pairs spread over the score range (the
lowest and highest included); their scores show how close to the threshold they sit.</p></section>"""


def _grid_range(data: ReportData) -> tuple[int, int]:
    nonzero = np.flatnonzero(data.stats.counts)
    return int(nonzero[0]), int(nonzero[-1])


def render(data: ReportData) -> str:
    """The report page as one string."""
    opts, stats = data.options, data.stats
    thumbs = Thumbnails(opts.image_root)
    quantiles = stats.quantiles(QUANTILES)
    sample = slider_sample(data)
    around = quantile_pairs(data, quantiles)
    examples = [p for pairs in data.failure_examples.values() for p in pairs]
    thumbs.prefetch(p.image for p in [*sample, *data.lowest, *data.highest, *sum(around.values(), []), *examples])
    k0, k1 = _grid_range(data) if stats.n else (0, 0)
    svg, geometry = histogram_svg(stats.counts[k0 : k1 + 1], k0, BINS) if stats.n else ("", {})
    payload = {"bins": BINS, "k0": k0, "k1": k1, "counts": stats.counts[k0 : k1 + 1].tolist(), "scored": stats.n,
               "rows": data.rows, "key": opts.output_key, "boundary": BOUNDARY,
               "start": quantiles[10] if stats.n else 0, **geometry,
               "sample": [{"s": p.score, "r": p.row, "t": _text(p.text), "c": thumbs(p.image)[0],
                           "p": thumbs(p.image)[1]} for p in sample]}
    around_html = "".join(f'<div class="qrow"><h3>p{q} <span>{_num(quantiles[q])}</span></h3>{_cards(pairs, thumbs)}'
                          "</div>" for q, pairs in around.items())
    title = opts.title or f"LongCLIP scores: {data.path.name}"
    body = f"""<header><h1>{html.escape(title)}</h1><p>{html.escape(str(data.path))} · {data.rows:,} rows ·
{stats.n:,} scored · {data.failed:,} failed · score column <code>{html.escape(opts.output_key)}</code></p></header>
<main>{_threshold(data, sample, svg)}
<section id="summary"><h2>Summary</h2>{_stats(data, quantiles)}</section>
<section id="lowest"><h2>Lowest scores</h2>{_cards(data.lowest, thumbs)}</section>
<section id="highest"><h2>Highest scores</h2>{_cards(data.highest, thumbs)}</section>
<section id="quantiles"><h2>Pairs around quantiles</h2>
<div class="qgrid">{around_html or '<p class="empty">no scored rows</p>'}</div>
<p class="note">The pairs nearest each quantile in a uniform sample of {len(data.pool):,} scored rows.</p></section>
<section id="failed"><h2>Failed rows</h2>{_failures(data, thumbs)}</section>
<p class="note">Row numbers count from 0, as pandas' <code>iloc</code>. Click a caption to read all of it; hover
over an image for its path. This page is self-contained: it loads nothing and works offline.</p></main>"""
    data_json = json.dumps(payload, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    page = files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    for name, value in (("title", html.escape(title)), ("thumb_css", thumbs.css()), ("body", body),
                        ("data", data_json)):
        page = page.replace("{{" + name + "}}", value)
    log.info("report: %d thumbnails embedded", thumbs.count)
    return page


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """Raise :class:`InputError` now, before any work, if the report cannot be written there."""
    out = Path(path)
    if not out.parent.is_dir():
        raise InputError(f"cannot write report {str(out)!r}: folder {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise InputError(f"cannot write report {str(out)!r}: it is a folder; name an .html file")
    return out


def write_report(scored: str | os.PathLike[str] | TableReader, html_path: str | os.PathLike[str],
                 opts: ReportOptions = ReportOptions()) -> ReportData:
    """Read a scored file (``.jsonl/.json/.csv/.parquet``) once and write the report to ``html_path`` atomically."""
    out = check_report_path(html_path)
    reader = scored if isinstance(scored, TableReader) else TableReader(scored)
    data = collect(reader, opts)
    page = render(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return data
