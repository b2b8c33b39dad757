"""A self-contained HTML report of a scored file, for choosing a filtering threshold by looking at pairs.

One streaming pass (:mod:`.report_data`) gathers counts and bounded samples; only then are the images of the
pairs to be shown opened, each once, and embedded as small JPEG data URIs. The page has no network references
(its Content-Security-Policy forbids them) and works offline; its one script drives the threshold slider.

Captions, image paths and reasons come from web crawls: hostile. Each value is escaped for where it goes (HTML
text or attribute, CSS ``url()``, JSON in a data block), the template is filled in one pass (a caption reading
``{{data}}`` stays that text), and the policy lets run only the page's own ``<style>`` and ``<script>`` elements,
named by their sha256: an injected script or style attribute would not run.

>>> write_report("scored.parquet", "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import threading
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np

from ..contract.atomic import PARTIAL, replacing
from ..contract.errors import MISSING_FILE, InputError, RowError, write_error
from ..contract.rows import cell_key, check_image_root, is_null, resolve_image_path
from ..decode.images import load_image
from ..inputs.tables import TableReader, same_file
from ..inputs.tarshards import MemberReader, ShardMember
from ..model.baseline import BLOCK, CAP, RATES, ROUGH, TRIES, suggest_threshold
from .data import BINS, QUANTILES, Pair, ReportData, ReportOptions, collect, grid_counts
from .svg import histogram_svg

log = logging.getLogger(__name__)

THUMB_SIZE = 128  # longest side, pixels
QUANTILE_PAIRS = 4  # pairs shown around each quantile
BOUNDARY = 4  # pairs shown on each side of the threshold
MAX_TEXT = 3000  # characters of a caption kept in the page
MISSING_WARN = 3  # warn when more than half of the images to show, and at least this many, are missing files
REPORT_SUFFIXES = (".html", ".htm")

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
JPEG_URI = re.compile(r"data:image/jpeg;base64,[A-Za-z0-9+/]*={0,2}")  # all a thumbnail may be: nothing to break out
INLINE = re.compile(r"<(style|script)\b([^>]*)>(.*?)</\1>", re.S)
JSON_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}
SURROGATE = re.compile("[\ud800-\udfff]")


def escape_html(value: object) -> str:
    """``value`` as HTML text or a quoted attribute value.

    >>> escape_html('" onfocus="x" <b>')
    '&quot; onfocus=&quot;x&quot; &lt;b&gt;'
    """
    return html.escape(str(value), quote=True)


def script_json(value: object) -> str:
    r"""JSON for a ``<script type="application/json">`` element, read back with ``JSON.parse(el.textContent)``:
    ``<``, ``>`` and ``&`` as ``\uXXXX`` (no ``</script>`` or ``<!--`` can end or bend the element), and U+2028,
    U+2029 too (line ends to a JavaScript parser, should the block ever be read as code). JSON's own syntax has none
    of these, so only strings change, and ``JSON.parse`` restores them.

    >>> print(script_json({"t": "</script><!--\u2028&"}))
    {"t": "\u003c/script\u003e\u003c!--\u2028\u0026"}
    """
    return json.dumps(value, ensure_ascii=False, allow_nan=False).translate(JSON_ESCAPES)


def css_url(uri: str) -> str | None:
    """``url("...")`` for a thumbnail, or None unless ``uri`` is a base64 JPEG data URI: its alphabet has no quote,
    parenthesis, backslash or ``<``, so it cannot end the string, the rule or the ``<style>`` element.

    >>> css_url("data:image/jpeg;base64,/9j/4AA=")
    'url("data:image/jpeg;base64,/9j/4AA=")'
    >>> css_url('data:image/jpeg;base64,x"); } * { color: red') is None
    True
    """
    return f'url("{uri}")' if JPEG_URI.fullmatch(uri) else None


def fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{{name}}`` replaced by ``values[name]``, in one pass: what goes in is never scanned
    again, so a value holding ``{{data}}`` keeps it as text. A placeholder without a value, a value without its
    placeholder, a placeholder used twice or a stray ``{{`` / ``}}`` is a bug of ours: :class:`ValueError`.

    >>> fill("<p>{{a}}</p><i>{{b}}</i>", {"a": "{{b}}", "b": "2"})
    '<p>{{b}}</p><i>2</i>'
    """
    names = PLACEHOLDER.findall(template)
    stray = re.search(r".{0,30}?(\{\{|\}\}).{0,30}", PLACEHOLDER.sub("", template))
    if stray:
        raise ValueError(f"template has a stray {stray[1]!r} in {stray[0]!r}; placeholders are {{{{name}}}}")
    if sorted(names) != sorted(set(names)) or set(names) != set(values):
        raise ValueError(f"template placeholders {sorted(names)} do not match the values {sorted(values)}")
    return PLACEHOLDER.sub(lambda m: values[m[1]], template)


def inline_code(page: str) -> tuple[list[str], list[str]]:
    """The text of ``page``'s ``<style>`` elements and of its ``<script>`` elements that run (a
    ``type="application/json"`` data block never runs, and CSP does not look at it).

    >>> inline_code('<style>p { }</style><script type="application/json">{}</script><script>go()</script>')
    (['p { }'], ['go()'])
    """
    styles, scripts = [], []
    for tag, attributes, text in INLINE.findall(page):
        if tag == "style":
            styles.append(text)
        elif "application/json" not in attributes:
            scripts.append(text)
    return styles, scripts


def csp_hash(text: str) -> str:
    """A CSP hash source for an inline element: base64 of the sha256 of its UTF-8 text.

    >>> csp_hash("")
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
    """
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def content_security_policy(styles: list[str], scripts: list[str]) -> str:
    """The page's policy: nothing loads but ``data:`` images, and only the listed style and script elements apply
    or run (no ``'unsafe-inline'``: no style attributes, no event handler attributes, no injected element)."""
    def sources(texts: list[str]) -> str:
        return " ".join(dict.fromkeys(map(csp_hash, texts))) or "'none'"

    return (f"default-src 'none'; img-src data:; style-src {sources(styles)}; script-src {sources(scripts)}; "
            "base-uri 'none'; form-action 'none'")


def thumbnail_uri(source: Path | bytes, size: int = THUMB_SIZE) -> str:
    """A JPEG data URI of the image at ``source`` (a path, or the image's bytes), longest side ``size``;
    :class:`ImageError` if it cannot be read.

    >>> thumbnail_uri(Path("photo.jpg"))[:23]  # doctest: +SKIP
    'data:image/jpeg;base64,'
    """
    image = load_image(source)
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
        self._members = MemberReader()  # WebDataset rows: shards opened once, read one member at a time
        self._lock = threading.Lock()

    def _make(self, value: object) -> str | RowError:
        try:
            if isinstance(value, (bytes, bytearray, memoryview)):  # an image column of bytes (parquet)
                return thumbnail_uri(bytes(value), self.size)
            if isinstance(value, ShardMember):  # a WebDataset row: read from its shard
                shard = resolve_image_path(value.shard, self.root)
                if shard.is_dir():  # a folder of files read as one shard (inputs.folder): the member is a file
                    return thumbnail_uri(shard / value.name, self.size)
                with self._lock:
                    data = self._members.read(shard, value.name)
                return thumbnail_uri(data, self.size)
            return thumbnail_uri(resolve_image_path(value, self.root), self.size)
        except RowError as exc:
            return exc

    def close(self) -> None:
        self._members.close()

    def prefetch(self, values: Iterable[object]) -> None:
        """Make the thumbnails of ``values`` now, a few at a time (Pillow decodes without holding the GIL)."""
        todo = {cell_key(v): v for v in values if cell_key(v) not in self._made}
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            self._made.update(zip(todo, pool.map(self._make, todo.values())))

    def __call__(self, value: object) -> tuple[str, str]:
        """``(css class, hover text)`` for an image cell."""
        key = cell_key(value)
        if key not in self._classes:
            if key not in self._made:  # not prefetched
                self._made[key] = self._make(value)
            made = self._made[key]
            if isinstance(made, RowError):
                self._classes[key] = ("none", f"{value}\n{made}")
            else:
                self._classes[key] = self._rule(made, value)
        return self._classes[key]

    def _rule(self, uri: str, value: object) -> tuple[str, str]:
        url = css_url(uri)
        if url is None:  # not what thumbnail_uri makes; never pasted into CSS
            return "none", f"{value}\nno thumbnail: not a base64 JPEG data URI"
        name = f"t{len(self._rules)}"
        self._rules.append(f".{name} {{ background-image: {url}; }}")
        return name, str(value)

    def missing(self) -> tuple[int, int]:
        """``(missing files, images tried)`` so far."""
        made = self._made.values()
        return sum(isinstance(m, RowError) and m.code == MISSING_FILE for m in made), len(made)

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
    return (f'<figure class="card"><div class="th {css}" title="{escape_html(hover)}"></div><figcaption>'
            f'<div class="meta"><b>{pair.score:.4f}</b><span>row {pair.row}</span>'
            f'<i class="cos">cos {2 * pair.score - 1:.4f}</i></div>'
            f'<p class="cap" title="click to expand">{escape_html(_text(pair.text))}</p></figcaption></figure>')


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
    counts = "".join(f'<tr><td class="reason">{escape_html(code)}</td><td class="n">{n:,}</td></tr>'
                     for code, n in data.failures.most_common())
    examples = []
    for code, _ in data.failures.most_common():
        for p in data.failure_examples.get(code, []):
            css, hover = thumbs(p.image)
            examples.append(f'<tr><td><div class="th {css}" title="{escape_html(hover)}"></div></td>'
                            f'<td class="n">{p.row}</td><td>{escape_html(p.image)}</td>'
                            f'<td><p class="cap" title="click to expand">{escape_html(_text(p.text))}</p></td>'
                            f'<td class="reason">{escape_html(p.error)}</td></tr>')
    return (f'<table class="fail" id="failure-counts"><tr><th>reason</th><th>rows</th></tr>{counts}</table>'
            f'<h3>Examples (up to {data.options.failure_examples} per reason)</h3><table class="fail" id="failures">'
            f'<tr><th></th><th>row</th><th>image</th><th>text</th><th>error</th></tr>{"".join(examples)}</table>')


def _threshold(data: ReportData, sample: list[Pair], svg: str) -> str:
    if not data.stats.n:
        return '<section id="choose"><h2>Choose a threshold</h2><p class="empty">No scored rows.</p></section>'
    lo, hi = _grid_range(data)
    key = escape_html(data.options.output_key)
    return f"""<section id="choose"><h2>Choose a threshold</h2>
<div class="controls" role="radiogroup" aria-label="how to cut"><label><input type="radio" name="mode" id="mode-score"
value="score" checked> a score threshold</label><label><input type="radio" name="mode" id="mode-top" value="top">
keep the top X % (DataComp style)</label></div>
<div class="controls" id="score-controls"><label for="threshold">Keep rows with <code>{key}</code> ≥</label>
<input type="range" id="threshold" min="{lo / BINS}" max="{hi / BINS}" step="{1 / BINS}">
<input type="number" id="threshold-num" min="{lo / BINS}" max="{hi / BINS}" step="{1 / BINS}" aria-label="threshold">
<span class="cosine">cos ≥ <b id="threshold-cos"></b></span></div>
<div class="controls" id="top-controls" hidden><label for="top">Keep the top</label>
<input type="range" id="top" min="0.1" max="100" step="0.1" value="30">
<input type="number" id="top-num" min="0.1" max="100" step="0.1" value="30" aria-label="percent kept"> % of scored
rows</div>
<div class="controls"><span class="kept">kept <b id="kept-count"></b> of {data.stats.n:,} scored (<b id="kept-pct"></b>),
dropped <span id="dropped-count"></span></span>{_false_keep(data)}</div>
<p class="note">Counts are exact at every step of {1 / BINS:g}; cos = 2 · score − 1 (raw CLIP thresholds are
cosines, typically 0.25–0.3). Failed rows ({data.failed:,}) have no score and are dropped by any threshold.
pandas: <code id="filter-code"></code></p>
{_baseline_note(data)}
{svg}
<div class="boundary"><div><h3>Just below — dropped</h3><div class="cards" id="below"></div></div>
<div><h3>Just above — kept</h3><div class="cards" id="above"></div></div></div>
<p class="note">Boundary pairs come from a sample of {len(sample):,} pairs spread over the score range (the
lowest and highest included); their scores show how close to the threshold they sit.</p></section>"""


def suggested(data: ReportData) -> dict[str, float]:
    """The thresholds at which 1 % and 0.1 % of the baseline's mismatched pairs pass (``{"1": t, "0.1": t}``);
    empty without a baseline, and a rate no grid threshold reaches is left out."""
    if data.baseline is None or not len(data.baseline):
        return {}
    cuts = {f"{100 * r:g}": suggest_threshold(data.baseline, r, BINS) for r in RATES}
    return {name: t for name, t in cuts.items() if not math.isnan(t)}


def _false_keep(data: ReportData) -> str:
    if data.baseline is None or not len(data.baseline):
        return ""
    buttons = "".join(f'<button type="button" class="suggest" data-t="{t:.4f}" id="suggest-{name.replace(".", "_")}">'
                      f"{name} % pass: ≥ {t:.4f} (cos {2 * t - 1:.4f})</button>"
                      for name, t in suggested(data).items())
    return (f'<span class="falsekeep">mismatched pairs passing: <b id="false-keep"></b> '
            f'(<span id="false-keep-count"></span> of {len(data.baseline):,})</span>'
            f'<span class="suggestions">suggested: {buttons or "none (too few pairs)"}</span>')


def _baseline_note(data: ReportData) -> str:
    """What the baseline is, how it was drawn and how far to trust it; or that it is absent and how to get it."""
    if data.baseline is None:
        return ('<p class="note baseline" id="baseline-note">No baseline of mismatched pairs: this report was made '
                "from a scored file alone, so it cannot say how often an unrelated pair would pass a threshold. "
                "Get one with <code>longclip-run INPUT -m MODEL -o OUTPUT --report report.html</code> (the local "
                "engine draws it while scoring, at no model cost).</p>")
    n = len(data.baseline)
    rough = (f' <b class="rough">Rough: fewer than {ROUGH:,} mismatched pairs; the rates below 1 % rest on a handful '
             "of pairs.</b>" if n < ROUGH else "")
    return (f'<p class="note baseline" id="baseline-note">Baseline: {n:,} mismatched pairs (outlined in the '
            f"histogram, scaled to the number of scored rows). Drawn while scoring: rows cut into blocks of {BLOCK} "
            f"by row number, each row's image scored against the caption of the next row of its block (up to "
            f"{TRIES} tried) that shares neither its image nor its caption; at most {CAP:,} pairs kept, chosen by a "
            "hash of their row numbers. The share passing is the threshold's false-positive rate on unrelated pairs, "
            "not the share of kept rows that are wrong: that needs how many of your rows are unrelated, which no "
            f"one knows.{rough}</p>")


def _grid_range(data: ReportData) -> tuple[int, int]:
    """The bins the histogram spans: the scores' and the baseline's, on one axis."""
    counts = data.stats.counts + (grid_counts(data.baseline) if data.baseline is not None else 0)
    nonzero = np.flatnonzero(counts)
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
    thumbs.close()  # every thumbnail is made: the shards a WebDataset report read from are closed
    k0, k1 = _grid_range(data) if stats.n else (0, 0)
    base = grid_counts(data.baseline)[k0 : k1 + 1] if data.baseline is not None and stats.n else None
    svg, geometry = histogram_svg(stats.counts[k0 : k1 + 1], k0, BINS, base) if stats.n else ("", {})
    payload = {"bins": BINS, "k0": k0, "k1": k1, "counts": stats.counts[k0 : k1 + 1].tolist(), "scored": stats.n,
               "rows": data.rows, "key": opts.output_key, "boundary": BOUNDARY,
               "base": None if base is None else base.tolist(), "suggested": suggested(data),
               "start": quantiles[10] if stats.n else 0, **geometry,
               "sample": [{"s": p.score, "r": p.row, "t": _text(p.text), "c": thumbs(p.image)[0],
                           "p": thumbs(p.image)[1]} for p in sample]}
    around_html = "".join(f'<div class="qrow"><h3>p{q} <span>{_num(quantiles[q])}</span></h3>{_cards(pairs, thumbs)}'
                          "</div>" for q, pairs in around.items())
    title = opts.title or f"LongCLIP scores: {data.path.name}"
    body = f"""<header><h1>{escape_html(title)}</h1><p>{escape_html(data.path)} · {data.rows:,} rows ·
{stats.n:,} scored · {data.failed:,} failed · score column <code>{escape_html(opts.output_key)}</code></p></header>
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
    warn_missing_images(thumbs)
    log.info("report: %d thumbnails embedded", thumbs.count)
    return page_html(title, thumbs.css(), body, payload)


def page_html(title: str, thumb_css: str, body: str, payload: dict[str, object]) -> str:
    """The template filled with the page's parts: ``title`` as text, ``thumb_css`` (rules built by
    :class:`Thumbnails`) and ``body`` (markup whose values are escaped already) as they are, ``payload`` as JSON.
    The Content-Security-Policy names the hashes of the page's style and script elements as filled: the thumbnail
    rules change with every file."""
    template = files(__package__).joinpath("template.html").read_text(encoding="utf-8")
    values = {"title": escape_html(title), "thumb_css": thumb_css, "body": body, "data": script_json(payload)}
    # A lone surrogate (a JSON "\ud800" escape) cannot be written as UTF-8; it shows as U+FFFD instead.
    values = {name: SURROGATE.sub("\ufffd", value) for name, value in values.items()}
    # The policy sits outside the elements it hashes: hash them in the page filled without it, then fill again.
    styles, scripts = inline_code(fill(template, {**values, "csp": ""}))
    page = fill(template, {**values, "csp": escape_html(content_security_policy(styles, scripts))})
    if inline_code(page) != (styles, scripts):
        raise ValueError("the report's style and script elements changed after they were hashed")
    return page


def warn_missing_images(thumbs: Thumbnails) -> None:
    """One warning when most images to show are missing files: relative paths resolved against the wrong folder."""
    missing, tried = thumbs.missing()
    if missing >= MISSING_WARN and 2 * missing > tried:
        where = (f"--image-root {str(thumbs.root)!r}" if thumbs.root is not None
                 else f"the current directory {os.getcwd()!r}")
        log.warning("%d of the %d images to show are missing files; relative image paths were resolved against %s: "
                    "pass --image-root naming the folder they are relative to", missing, tried, where)


def check_report_path(path: str | os.PathLike[str], scored: str | os.PathLike[str] | None = None) -> Path:
    """Raise :class:`InputError` now, before any work, if the report cannot be written at ``path``: it would be
    the ``scored`` file itself (however spelled), it does not end in ``.html`` / ``.htm``, or its folder is
    missing.

    >>> for name in ("report.HTML", "report.txt", "./scored.csv"):  # doctest: +NORMALIZE_WHITESPACE
    ...     try:
    ...         _ = check_report_path(name, "scored.csv")
    ...     except InputError as exc:
    ...         print(exc)
    report 'report.txt' does not end in .html or .htm; name it so, e.g. 'report.html'
    report 'scored.csv' is the scored file 'scored.csv' itself: writing it would overwrite the input;
    name another file, e.g. 'scored.html'
    """
    out = Path(path)
    hint = repr(str(_report_name(out)))
    if scored is not None and same_file(out, scored):
        raise InputError(f"report {str(out)!r} is the scored file {str(scored)!r} itself: writing it would overwrite "
                         f"the input; name another file, e.g. {hint}")
    if out.suffix.lower() not in REPORT_SUFFIXES:
        raise InputError(f"report {str(out)!r} does not end in .html or .htm; name it so, e.g. {hint}")
    if not out.parent.is_dir():
        raise InputError(f"cannot write report {str(out)!r}: folder {str(out.parent)!r} does not exist")
    if out.is_dir():
        raise InputError(f"cannot write report {str(out)!r}: it is a folder; name an .html file")
    return out


def _report_name(out: Path) -> Path:
    """A name to suggest in place of ``out``."""
    if not out.name:
        return Path("report.html")
    if out.suffix.lower() in REPORT_SUFFIXES:  # a hard link to the input: suggest a name beside it
        return out.with_name(f"{out.stem}.report.html")
    return out.with_suffix(".html")


def write_report(scored: str | os.PathLike[str] | TableReader, html_path: str | os.PathLike[str],
                 opts: ReportOptions = ReportOptions(), baseline: np.ndarray | None = None) -> ReportData:
    """Read a scored file (``.jsonl/.json/.csv/.parquet``) once and write the report to ``html_path`` atomically.
    ``baseline``: the run's mismatched pairs' scores (``RunSummary.baseline``), drawn over the histogram."""
    out = check_report_path(html_path, scored.path if isinstance(scored, TableReader) else scored)
    check_image_root(opts.image_root)
    reader = scored if isinstance(scored, TableReader) else TableReader(scored)
    data = collect(reader, opts)
    data.baseline = None if baseline is None else np.asarray(baseline, dtype=np.float32)
    page = render(data)
    try:
        with replacing(out, suffix=PARTIAL) as f:
            f.write(page.encode("utf-8"))
    except OSError as exc:
        raise write_error(out, exc) from None
    return data
