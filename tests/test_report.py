"""The report (no browser): statistics against numpy, exact kept counts, bounded memory on a large file, a page
that loads nothing, failed rows with their reasons, hostile captions and paths that stay text under a policy naming
the page's own code by hash, refusals of report paths up front; and longclip-run --report end to end."""

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import GOLDENS
from longclip.runtime.errors import InputError, error_code
from longclip.runtime.report.page import THUMB_SIZE, fill, slider_sample, write_report
from longclip.runtime.report.data import BINS, QUANTILES, ReportOptions, ScoreStats
from longclip.runtime.tables import read_table

IMG = GOLDENS / "images"
IMAGES = sorted(p.name for p in IMG.iterdir())
FAILURES = ["missing_file: image not found: 'gone.png'", "empty_text: text is empty or whitespace",
            "undecodable: cannot decode image 'cut.jpg': truncated"]


def scored_frame(n: int, seed: int = 0, fail_every: int = 17) -> pd.DataFrame:
    """A file as longclip-run writes it: images from the goldens, beta-distributed scores, some failed rows."""
    rng = np.random.default_rng(seed)
    scores = rng.beta(9, 6, n)
    errors = [""] * n
    images = [IMAGES[i % len(IMAGES)] for i in range(n)]
    for i in range(min(3, fail_every - 1), n, fail_every):
        errors[i] = FAILURES[i % len(FAILURES)]
        scores[i] = np.nan
        if errors[i].startswith("missing_file"):
            images[i] = "gone.png"
    texts = [f"pair {i}: a {'long ' * (i % 40)}caption about a red house by a river" for i in range(n)]
    return pd.DataFrame({"image_path": images, "text": texts, "longclip_score": scores,
                         "longclip_score_error": errors})


# Crawled captions and paths are hostile: each of these is a caption, an image path, a failure reason and a failure
# code in hostile_report(), and must show as itself, run nothing and load nothing.
HOSTILE = [
    # First (lowest score, so first in the page's JSON), and pasted into an attribute by a template that substitutes
    # {{data}} into an image path: this ran on focus in the report that had that bug.
    '" tabindex=0 autofocus onfocus=window.__pwned=1 x="',
    "{{data}}", "{{body}}", "{{title}}", "{{thumb_css}}", "{{csp}}", "{{", "}}", "x{{data}}.jpg", "{{data}}{{body}}",
    '"', "'", "\"'`", "</script>", "</style>", "</script><script>window.__pwned=1</script>",
    "<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=1">',
    '" autofocus onfocus="window.__pwned=1" x="', "' autofocus onfocus='window.__pwned=1' x='",
    "javascript:window.__pwned=1", "JaVaScRiPt:window.__pwned=1//x.jpg",
    "</textarea><script>window.__pwned=1</script>", "<!--", "<!-- <script>", "-->", "]]>", "<![CDATA[x",
    "line\u2028separator", "paragraph\u2029separator", "\u2028\u2029",
    "</title><script>window.__pwned=1</script>", "<style>* { display: none }</style>",
    'x"); } * { background-image: url("javascript:window.__pwned=1"); } .y { x: ("',
    "&amp; &lt; &#x3c; &#60", "<svg onload=window.__pwned=1>", '<iframe srcdoc="<script>parent.__pwned=1</script>">',
    "<object data=x></object><embed src=x>", "\\u003c/script\\u003e", "\\", "${window.__pwned=1}",
    '<a href="javascript:window.__pwned=1">click</a>',
]
HOSTILE_TITLE = '</title><script>window.__pwned=1</script>{{data}}<b onmouseover="window.__pwned=1">"\''
HOSTILE_KEY = 'score"{{data}}<b'  # --output-key: shown in the page and in its JSON (no ">": see HOSTILE[0])


def hostile_report(tmp_path) -> tuple:
    """A report of a file whose captions, image paths and failure reasons are all hostile: every entry of HOSTILE
    is the caption of a scored row (all of them among the lowest, highest and slider pairs), the image path of
    another (every other one a real image under that name, the rest missing files), the caption and the path of a
    failed row, and the code and the detail of a failure reason. The scored file's own name is hostile, too.
    Returns the page's path, the frame and the options."""
    n = len(HOSTILE)
    root = tmp_path / "images"
    for i, name in enumerate(HOSTILE[::2]):  # "</script>" is the file "script>" in the folder "<"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes((IMG / IMAGES[i % len(IMAGES)]).read_bytes())
    scored = {"image_path": [HOSTILE[(i + 7) % n] for i in range(n)], "text": HOSTILE,
              HOSTILE_KEY: [(200 + 10 * i) / 1000 for i in range(n)], f"{HOSTILE_KEY}_error": [""] * n}
    failed = {"image_path": HOSTILE, "text": [HOSTILE[(i + 11) % n] for i in range(n)], HOSTILE_KEY: [None] * n,
              f"{HOSTILE_KEY}_error": [f"{h}: {HOSTILE[(i + 5) % n]}" for i, h in enumerate(HOSTILE)]}
    frame = pd.concat([pd.DataFrame(scored), pd.DataFrame(failed)], ignore_index=True)
    path = tmp_path / 's"\'<b>{{data}}.parquet'
    frame.to_parquet(path, index=False)
    opts = ReportOptions(output_key=HOSTILE_KEY, image_root=str(root), title=HOSTILE_TITLE, extremes=n)
    write_report(path, tmp_path / "report.html", opts)
    return tmp_path / "report.html", frame, opts


# Every tag the report may hold; a caption that became markup would add others (img, iframe, a, textarea, ...).
TAGS = {"html", "head", "meta", "title", "style", "script", "body", "header", "h1", "h2", "h3", "p", "code", "main",
        "section", "div", "label", "input", "span", "b", "svg", "rect", "line", "text", "table", "tr", "th", "td",
        "figure", "figcaption"}
VOID = {"meta", "input", "br", "img", "link", "hr", "wbr", "source", "embed"}


class Parsed(HTMLParser):
    """A page as an HTML parser reads it: every start tag with its attributes (character references decoded), the
    text of its style and script elements, and its other text runs with the tag and class they sit in."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.code: list[list] = []  # [tag, attributes, text] of each style and script element
        self.texts: list[tuple[str, str, str]] = []  # (tag, class, text)
        self._open: list[tuple[str, dict]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("style", "script"):
            self.code.append([tag, dict(attrs), ""])
        if tag not in VOID:
            self._open.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        tag, attrs = self._open[-1] if self._open else ("", {})
        if tag in ("style", "script"):
            self.code[-1][2] += data
        else:
            self.texts.append((tag, attrs.get("class", ""), data))

    def text(self, tag: str, cls: str = "") -> list[str]:
        return [t for g, c, t in self.texts if g == tag and c == cls]


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def write(frame: pd.DataFrame, path):
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")).replace("NaN", "null"))
    else:
        path.write_text(json.dumps(frame.to_dict("records")).replace("NaN", "null"))
    return path


def file_scores(path) -> np.ndarray:
    """The finite scores as the file holds them (CSV writers may round the last digit)."""
    column = read_table(path)["longclip_score"].astype(object).replace("", None)
    return pd.to_numeric(column).dropna().to_numpy(dtype=float)


def page_data(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page,
                                re.S).group(1))


def kept_on_page(data: dict, k: int) -> int:
    """What the page's script shows for threshold k / bins: the counts from bin k up."""
    return int(sum(data["counts"][max(k - data["k0"], 0):])) if k <= data["k1"] else 0


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


def test_page_is_self_contained(tmp_path):
    path = write(scored_frame(300), tmp_path / "scored.parquet")
    write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG)))
    page = (tmp_path / "r.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"\b(src|href)\s*=", page)  # nothing to fetch: no <img src>, <link>, <script src>
    uris = re.findall(r"url\(([^)]*)\)", page)
    assert uris and all(u.startswith('"data:image/jpeg;base64,') for u in uris)
    assert len(uris) == len(IMAGES)  # each distinct image embedded once, however often it is shown
    sizes = {Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1].rstrip('"')))).size for u in uris}
    assert (82, 128) in sizes and (128, 43) in sizes  # rgb_333x517, rgb_wide_301x100: longest side THUMB_SIZE
    assert all(max(s) <= THUMB_SIZE for s in sizes)
    assert "default-src &#x27;none&#x27;" in page  # the browser itself refuses any load the page might try


def test_failed_rows_are_listed_with_reasons(tmp_path):
    frame = scored_frame(200)
    path = write(frame, tmp_path / "scored.jsonl")
    data = write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG)))
    want = Counter(e.split(":")[0] for e in frame["longclip_score_error"] if e)
    assert data.failures == want
    page = (tmp_path / "r.html").read_text()
    counts = re.search(r'id="failure-counts">(.*?)</table>', page, re.S).group(1)
    assert re.findall(r'class="reason">(\w+)</td><td class="n">(\d+)<', counts) == \
        [(code, str(n)) for code, n in want.most_common()]
    examples = re.search(r'id="failures">(.*?)</table>', page, re.S).group(1)
    assert examples.count("<tr>") == 1 + sum(min(n, 5) for n in want.values())
    assert "missing_file: image not found: &#x27;gone.png&#x27;" in examples
    assert 'class="th none" title="gone.png\nmissing_file: image not found:' in examples  # a placeholder thumbnail


MEASURE = """
import json, os, sys
from longclip.runtime.report.data import ReportOptions, collect
from longclip.runtime.tables import TableReader

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


def test_captions_are_escaped_and_long_ones_cut(tmp_path):
    frame = scored_frame(30, fail_every=1000)
    frame.loc[0, "text"] = "<script>alert(1)</script> & friends"
    frame.loc[1, "text"] = "word " * 1000
    frame.loc[[0, 1], "longclip_score"] = [0.01, 0.02]  # both among the lowest
    path = write(frame, tmp_path / "scored.parquet")
    write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG), title="Mine </title>"))
    page = (tmp_path / "r.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in page and "<script>alert" not in page
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e \\u0026 friends" in page  # in the JSON, too
    assert "… [+2000 characters]" in page
    assert "<title>Mine &lt;/title&gt;</title>" in page


def test_same_file_same_report(tmp_path):
    path = write(scored_frame(500), tmp_path / "scored.parquet")
    opts = ReportOptions(image_root=str(IMG), pool=50)
    write_report(path, tmp_path / "a.html", opts)
    write_report(path, tmp_path / "b.html", opts)
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_no_scored_rows(tmp_path):
    frame = scored_frame(10, fail_every=1)
    path = write(frame, tmp_path / "scored.csv")
    data = write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG)))
    assert (data.rows, data.stats.n, data.failed) == (10, 0, 10)
    page = (tmp_path / "r.html").read_text()
    assert "No scored rows." in page and 'id="threshold"' not in page


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


def test_cli_refusal_is_one_line(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"image_path": "a.png", "text": "t", "score": 0.5}\n')
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.report.cli", "s.jsonl", "-o", "r.html"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == ("longclip-report: error: column 'longclip_score' not in 's.jsonl'; columns are "
                           "['image_path', 'text', 'score']; did you mean 'score'? (pass --output-key score)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_report_folder_must_exist(tmp_path):
    path = write(scored_frame(5), tmp_path / "scored.parquet")
    with pytest.raises(InputError, match="folder .*nowhere' does not exist"):
        write_report(path, tmp_path / "nowhere" / "r.html")


def test_cli_writes_a_report(tmp_path):
    write(scored_frame(60), tmp_path / "scored.parquet")
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.report.cli", "scored.parquet", "-o", "r.html",
                           "--image-root", str(IMG), "--title", "Sixty pairs"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "report r.html: 60 rows, 56 scored, 4 failed" in proc.stderr
    assert "<h1>Sixty pairs</h1>" in (tmp_path / "r.html").read_text()


def test_longclip_run_with_report(tmp_path, tiny_model_dir):
    rows = [{"image_path": name, "text": f"caption {i} of a scene"} for i, name in enumerate(IMAGES * 2)]
    rows.append({"image_path": "gone.png", "text": "lost"})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.cli", "in.jsonl", "-m", str(tiny_model_dir),
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
    proc = subprocess.run([sys.executable, "-m", "longclip.runtime.cli", "in.jsonl", "-m", str(tiny_model_dir),
                           "-o", "out.jsonl", "--report", report], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr == f"longclip-run: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_fill_substitutes_each_placeholder_once():
    assert fill("<p>{{a}}</p><i>{{b}}</i>", {"a": "{{b}}{{a}}", "b": "{{a}}"}) == "<p>{{b}}{{a}}</p><i>{{a}}</i>"
    for template, values in [("{{a}}", {}), ("{{a}}", {"a": "1", "b": "2"}), ("{{a}}{{a}}", {"a": "1"}),
                             ("{{ a }}", {}), ("{{a}} }}", {"a": "1"})]:
        with pytest.raises(ValueError):
            fill(template, values)


def test_benign_page_has_no_placeholder_left(tmp_path):
    frame = scored_frame(50)
    frame.loc[0, "text"] = "{{data}}"  # a caption that is a placeholder: shown as itself, once, as text
    frame.loc[0, "longclip_score"] = 0.01
    write_report(write(frame, tmp_path / "scored.parquet"), tmp_path / "r.html", ReportOptions(image_root=str(IMG)))
    page = (tmp_path / "r.html").read_text()
    assert page.count("{{") == page.count("}}") == page.count("{{data}}") >= 2  # its cards, and the JSON
    assert '<p class="cap" title="click to expand">{{data}}</p>' in page
    assert page_data(page)["sample"][0]["t"] == "{{data}}"
    for once in ('id="report-data"', 'http-equiv="Content-Security-Policy"', "<head>", "<body>"):
        assert page.count(once) == 1, once


def test_hostile_page_as_an_html_parser_reads_it(tmp_path):
    """What the browser test checks, without a browser: hostile values stay text, no markup of theirs appears,
    and the policy names exactly the page's own style and script elements."""
    page_path, frame, _ = hostile_report(tmp_path)
    page = page_path.read_text(encoding="utf-8")
    parsed = Parsed(page)
    assert {tag for tag, _ in parsed.tags} <= TAGS
    attributes = {name for _, attrs in parsed.tags for name in attrs}
    assert not {a for a in attributes if a.startswith("on")} and not attributes & {"style", "src", "href", "autofocus"}
    styles = [text for tag, _, text in parsed.code if tag == "style"]
    scripts = [text for tag, attrs, text in parsed.code if tag == "script" and attrs.get("type") != "application/json"]
    assert len(styles) == 2 and len(scripts) == 1 and len(parsed.code) == 4
    csp = [attrs["content"] for tag, attrs in parsed.tags if attrs.get("http-equiv") == "Content-Security-Policy"]
    style_src = " ".join(map(sha256_source, styles))
    assert csp == [f"default-src 'none'; img-src data:; style-src {style_src}; script-src {sha256_source(scripts[0])}; "
                   "base-uri 'none'; form-action 'none'"]
    assert "unsafe" not in page

    n = len(HOSTILE)
    assert parsed.text("title")[0] == HOSTILE_TITLE and parsed.text("h1") == [HOSTILE_TITLE]  # then SVG titles
    captions = parsed.text("p", "cap")
    assert all(captions.count(h) >= 2 for h in HOSTILE)  # lowest and highest, and failed rows
    reasons = parsed.text("td", "reason")
    errors = list(frame[f"{HOSTILE_KEY}_error"].iloc[n:])
    assert all(e in reasons for e in errors) and all((error_code(e).strip() or "unknown") in reasons
                                                         for e in errors)
    assert all(h in parsed.text("td") for h in HOSTILE)  # image paths of failed rows
    hovers = [attrs["title"] for tag, attrs in parsed.tags if "th" in attrs.get("class", "").split()]
    assert all(any(t == h or t.startswith(h + "\n") for t in hovers) for h in HOSTILE)
    embedded = page_data(page)
    assert [p["t"] for p in embedded["sample"]] == HOSTILE and embedded["key"] == HOSTILE_KEY
    data_block = next(text for tag, attrs, text in parsed.code if attrs.get("type") == "application/json")
    assert not set(data_block) & set("<>&\u2028\u2029") and json.loads(data_block) == embedded


def test_lone_surrogates_show_as_replacement_characters(tmp_path):
    """A JSON escape may decode to half a surrogate pair, which UTF-8 cannot hold: the page shows U+FFFD."""
    (tmp_path / "s.jsonl").write_text(
        '{"image_path": "\\udc00.png", "text": "a \\ud800 b", "longclip_score": 0.5, "longclip_score_error": ""}\n'
        '{"image_path": "x.png", "text": "t", "longclip_score": null, "longclip_score_error": "bad_text: \\ud800"}\n')
    write_report(tmp_path / "s.jsonl", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "a \ufffd b" in page and "\ufffd.png" in page and "bad_text: \ufffd" in page


def report_cli(cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longclip.runtime.report.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def assert_one_line_refusal(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr == f"longclip-report: error: {message}\n", proc.stderr


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
