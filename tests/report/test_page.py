"""The report page (no browser): a page that loads nothing, failed rows with their reasons, hostile captions and
paths that stay text under a policy naming the page's own code by hash, one-pass templating."""

import base64
import io
import json
import os
import re
from collections import Counter

import pytest
from PIL import Image
from reports import (
    HOSTILE,
    HOSTILE_KEY,
    HOSTILE_TITLE,
    IMAGES,
    IMG,
    TAGS,
    Parsed,
    hostile_report,
    page_data,
    scored_frame,
    sha256_source,
    write,
)

from longclip.runtime.contract.errors import InputError, error_code
from longclip.runtime.report.data import ReportOptions
from longclip.runtime.report.page import THUMB_SIZE, fill, write_report


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


def test_report_folder_must_exist(tmp_path):
    path = write(scored_frame(5), tmp_path / "scored.parquet")
    with pytest.raises(InputError, match="folder .*nowhere' does not exist"):
        write_report(path, tmp_path / "nowhere" / "r.html")


def test_a_full_disk_is_a_write_error_naming_the_report_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import tempfile

    from longclip.runtime.contract.errors import WriteError

    path = write(scored_frame(5), tmp_path / "scored.parquet")
    real = os.fdopen

    def full(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        f.write = lambda _: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(os, "fdopen", full)
    with pytest.raises(WriteError, match=r"cannot write .*r\.html': \[Errno 28\] No space left on device"):
        write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG)))
    monkeypatch.setattr(tempfile, "mkstemp", lambda **_: (_ for _ in ()).throw(OSError(errno.EACCES, "denied")))
    with pytest.raises(WriteError, match=r"\[Errno 13\] denied"):
        write_report(path, tmp_path / "r.html", ReportOptions(image_root=str(IMG)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored.parquet"]


def test_the_report_gets_the_mode_of_a_new_file_under_the_umask(tmp_path):
    path = write(scored_frame(5), tmp_path / "scored.parquet")
    old = os.umask(0o077)
    try:
        write_report(path, tmp_path / "private.html", ReportOptions(image_root=str(IMG)))
    finally:
        os.umask(old)
    write_report(path, tmp_path / "shared.html", ReportOptions(image_root=str(IMG)))
    assert (tmp_path / "private.html").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared.html").stat().st_mode & 0o777 == 0o666 & ~old


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
