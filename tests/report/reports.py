"""Scored files to report on: a plain one (beta scores, some failed rows) and a hostile one (captions, paths
and reasons that try to become markup or code), and an HTML parser to read pages back."""

import base64
import hashlib
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd

from conftest import GOLDENS
from longclip.runtime.inputs.tables import read_table
from longclip.runtime.report.data import ReportOptions
from longclip.runtime.report.page import write_report

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
    failed = {"image_path": HOSTILE, "text": [HOSTILE[(i + 11) % n] for i in range(n)], HOSTILE_KEY: [np.nan] * n,
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
        "figure", "figcaption", "i", "button", "path"}
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
