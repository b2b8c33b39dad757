"""The report in a real headless Chromium, driven over the DevTools protocol: it loads with no console error and no
request beyond its own file, the threshold slider shows the exact kept count, and the page paints; hostile captions,
image paths and reasons show as text and run nothing; its Content-Security-Policy is enforced.

Skips when Chromium or websocket-client is missing; .ci/run installs both.
"""

import base64
import io
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from cdp import Browser, find_chromium
from PIL import Image
from reports import HOSTILE, HOSTILE_KEY, HOSTILE_TITLE, IMG, TAGS, hostile_report, page_data, scored_frame

from longclip.runtime.contract.errors import error_code
from longclip.runtime.report.data import BINS, ReportOptions
from longclip.runtime.report.page import BOUNDARY, write_report

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                         ".ci/run installs it)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("websocket", reason="needs websocket-client (the test extra)")
    with Browser(CHROMIUM, tmp_path_factory.mktemp("chromium")) as b:
        b.before_each_page(WATCH)
        yield b


# Injected before the page's own script (DevTools scripts are exempt from the page's CSP): every CSP violation the
# page causes, and any script of a caption that gets to run, is noted.
WATCH = """window.__violations = [];
window.addEventListener("securitypolicyviolation",
                        (e) => window.__violations.push(e.violatedDirective + " " + (e.sample || e.blockedURI)), true);
"""


def kept_text(browser: Browser, value: str) -> dict:
    """Move the slider as a person would (value, then an input event) and read what the page shows."""
    return browser.evaluate(f"""(() => {{
        const s = document.getElementById("threshold");
        s.value = "{value}";
        s.dispatchEvent(new Event("input", {{bubbles: true}}));
        const scores = (id) => Array.from(document.querySelectorAll("#" + id + " .meta b"), (b) => +b.textContent);
        return {{count: document.getElementById("kept-count").textContent,
                 pct: document.getElementById("kept-pct").textContent,
                 number: document.getElementById("threshold-num").value,
                 above: scores("above"), below: scores("below"),
                 thumbs: document.querySelectorAll("#above .th:not(.none), #below .th:not(.none)").length}};
    }})()""")


def test_report_in_a_real_browser(tmp_path, browser):
    frame = scored_frame(2000, seed=5)
    frame.to_parquet(tmp_path / "scored.parquet", index=False)
    write_report(tmp_path / "scored.parquet", tmp_path / "report.html", ReportOptions(image_root=str(IMG)))
    good = pd.read_parquet(tmp_path / "scored.parquet")["longclip_score"].dropna().to_numpy()

    browser.open((tmp_path / "report.html").as_uri())
    start = browser.evaluate('document.getElementById("kept-count").textContent')
    p10 = int(round(np.quantile(good, 0.10) * BINS))
    assert int(start.replace(",", "")) == int((good >= p10 / BINS).sum())  # opens at the 10th percentile

    for k in (int(np.median(good) * BINS), int(np.quantile(good, 0.9) * BINS) + 1):
        t = k / BINS
        shown = kept_text(browser, f"{t:.4f}")
        kept = int((good >= t).sum())
        assert int(shown["count"].replace(",", "")) == kept != int(start.replace(",", ""))
        assert shown["pct"] == f"{100 * kept / len(good):.1f}%" and shown["number"] == f"{t:.4f}"
        assert len(shown["above"]) == len(shown["below"]) == BOUNDARY and shown["thumbs"] == 2 * BOUNDARY
        assert min(shown["above"]) >= round(t, 4) > max(shown["below"])  # the pairs either side of the cut

    png = base64.b64decode(browser.page("Page.captureScreenshot", format="png")["data"])
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[:2] == (1600, 1280)
    not_white = (image.min(axis=2) < 235).mean()
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert not_white > 0.15 and colours > 2000, (not_white, colours)  # text, bars and thumbnails painted

    assert browser.errors() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []


PAGE_STATE = """(() => {
    const all = Array.from(document.querySelectorAll("*"));
    const card = (c) => ({row: +c.querySelector(".meta span").textContent.replace("row ", ""),
                          cap: c.querySelector(".cap").textContent, title: c.querySelector(".th").title,
                          thumb: !c.querySelector(".th").classList.contains("none")});
    return {pwned: typeof window.__pwned, violations: window.__violations,
            handlers: all.flatMap((e) => Array.from(e.attributes, (a) => a.name))
                         .filter((n) => n.startsWith("on") || n === "style" || n === "autofocus" || n === "href"),
            tags: Array.from(new Set(all.map((e) => e.localName))),
            scripts: document.scripts.length, styles: document.querySelectorAll("style").length,
            sheets: document.styleSheets.length,
            title: document.title, h1: document.querySelector("h1").textContent,
            header: document.querySelector("header p").textContent,
            filter: document.getElementById("filter-code").textContent,
            lowest: Array.from(document.querySelectorAll("#lowest .card"), card),
            highest: Array.from(document.querySelectorAll("#highest .card"), card),
            codes: Array.from(document.querySelectorAll("#failure-counts tr"),
                              (tr) => Array.from(tr.cells, (td) => td.textContent)).slice(1),
            failed: Array.from(document.querySelectorAll("#failures tr"), (tr) => Array.from(tr.cells,
                               (td) => td.querySelector(".th") ? td.querySelector(".th").title : td.textContent))
                         .slice(1),
            data: JSON.parse(document.getElementById("report-data").textContent)};
})()"""

# Moves the slider to each score in turn and reads the first pair just above the cut: that row itself.
BOUNDARY_CARDS = """((scores) => {
    const s = document.getElementById("threshold");
    return scores.map((v) => {
        s.value = String(v);
        s.dispatchEvent(new Event("input", {bubbles: true}));
        const c = document.querySelector("#above .card");
        return {row: +c.querySelector(".meta span").textContent.replace("row ", ""),
                cap: c.querySelector(".cap").textContent, title: c.querySelector(".th").title,
                thumb: !c.querySelector(".th").classList.contains("none")};
    });
})"""


def shown_image(card: dict, path: str) -> bool:
    """A card's hover text: the image path, and on the next line the reason when there is no thumbnail."""
    return card["title"] == path if card["thumb"] else card["title"].startswith(path + "\n")


def test_hostile_values_show_as_text_and_run_nothing(tmp_path, browser):
    page_path, frame, _ = hostile_report(tmp_path)
    n = len(HOSTILE)
    browser.open(page_path.as_uri())
    state = browser.evaluate(PAGE_STATE)

    assert state["pwned"] == "undefined" and state["violations"] == []
    assert state["handlers"] == [] and set(state["tags"]) <= TAGS | {"tbody"}, state["tags"]  # tbody: the parser's
    assert (state["scripts"], state["styles"], state["sheets"]) == (2, 2, 2)  # the page's own: data + code, 2 styles
    assert state["title"] == state["h1"] == HOSTILE_TITLE
    assert str(tmp_path / 's"\'<b>{{data}}.parquet') in state["header"] and HOSTILE_KEY in state["header"]
    assert state["filter"].startswith(f'df[df["{HOSTILE_KEY}"] >= ')

    scored = frame.iloc[:n]
    for side in ("lowest", "highest"):  # every scored row is shown on both: captions as text, paths on hover
        cards = state[side]
        assert sorted(c["row"] for c in cards) == list(range(n))
        for c in cards:
            assert c["cap"] == scored.text[c["row"]], c
            assert shown_image(c, scored.image_path[c["row"]]), c
    shown = sum(c["thumb"] for c in state["lowest"])
    assert 0 < shown < n  # both kinds of hover text: thumbnails of real files, and missing (or bad) paths

    # the slider's boundary pairs are built by the page's script from the JSON: the same, as text
    boundary = browser.evaluate(f"{BOUNDARY_CARDS}({json.dumps(list(scored[HOSTILE_KEY]))})")
    assert [c["row"] for c in boundary] == list(range(n))
    for c in boundary:
        assert c["cap"] == scored.text[c["row"]] and shown_image(c, scored.image_path[c["row"]]), c

    failed = frame.iloc[n:]
    errors = list(failed[f"{HOSTILE_KEY}_error"])
    want_codes = Counter(error_code(e).strip() or "unknown" for e in errors)
    assert Counter({code: int(count) for code, count in state["codes"]}) == want_codes
    rows = {int(row): (title, image, text, reason) for title, row, image, text, reason in state["failed"]}
    assert sorted(rows) == list(failed.index)
    for i, (title, image, text, reason) in rows.items():
        assert (image, text, reason) == (failed.image_path[i], failed.text[i], failed[f"{HOSTILE_KEY}_error"][i])
        assert title.startswith(failed.image_path[i]), title

    on_disk = page_data(page_path.read_text(encoding="utf-8"))
    assert state["data"] == on_disk  # the JSON the page parsed is the JSON written, key and captions intact
    assert state["data"]["key"] == HOSTILE_KEY
    assert sorted((p["r"], p["t"]) for p in state["data"]["sample"]) == list(zip(range(n), HOSTILE))
    assert browser.errors() == []
    assert [u for u in browser.requests() if not u.startswith(("file:", "data:"))] == []


def test_the_content_security_policy_is_enforced(tmp_path, browser):
    """The same page with an inline script and a style attribute of its own: the browser refuses both, and the
    page's own script, which the policy names by its hash, still runs."""
    frame = scored_frame(200)
    frame.to_parquet(tmp_path / "scored.parquet", index=False)
    write_report(tmp_path / "scored.parquet", tmp_path / "report.html", ReportOptions(image_root=str(IMG)))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    browser.open((tmp_path / "report.html").as_uri())
    assert browser.evaluate("window.__violations") == [] and browser.errors() == []

    extra = page.replace("</body>", '<p id="styled" style="color: red">x</p><script>window.__extra = 1</script>'
                         "</body>")
    (tmp_path / "tampered.html").write_text(extra, encoding="utf-8")
    browser.open((tmp_path / "tampered.html").as_uri())
    state = browser.evaluate("""({extra: typeof window.__extra, violations: window.__violations,
        colour: getComputedStyle(document.getElementById("styled")).color,
        kept: document.getElementById("kept-count").textContent})""")
    assert state["extra"] == "undefined" and state["colour"] != "rgb(255, 0, 0)"
    assert sorted(v.split()[0] for v in state["violations"]) == ["script-src-elem", "style-src-attr"], state
    assert state["kept"]  # the page's own script ran


def shown_cut(browser: Browser) -> dict:
    return browser.evaluate("""(() => {
        const text = (id) => document.getElementById(id).textContent;
        return {t: document.getElementById("threshold-num").value, cos: text("threshold-cos"), kept: text("kept-count"),
                false_keep: text("false-keep"), passing: text("false-keep-count"), code: text("filter-code"),
                top_shown: !document.getElementById("top-controls").hidden,
                score_shown: !document.getElementById("score-controls").hidden};
    })()""")


def test_the_baseline_in_a_real_browser(tmp_path, browser):
    """Both modes driven as a person would: the share of mismatched pairs passing at each cut is the exact share of
    the baseline at or above it; a suggested threshold lets 1 % pass; the section with its outline paints."""
    frame = scored_frame(2000, seed=5)
    frame.to_parquet(tmp_path / "scored.parquet", index=False)
    baseline = np.random.default_rng(1).normal(0.45, 0.04, 4000).astype(np.float32)
    write_report(tmp_path / "scored.parquet", tmp_path / "report.html", ReportOptions(image_root=str(IMG)),
                 baseline=baseline)
    good = frame["longclip_score"].dropna().to_numpy()
    browser.open((tmp_path / "report.html").as_uri())

    def passing(t: float) -> int:
        return int((baseline.astype(np.float64) >= t).sum())

    for t in (0.45, 0.5):
        kept_text(browser, f"{t:.4f}")
        shown = shown_cut(browser)
        assert shown["passing"] == f"{passing(t):,}" and shown["false_keep"] == f"{100 * passing(t) / 4000:.2f}%"
        assert shown["cos"] == f"{2 * t - 1:.4f}" and shown["score_shown"] and not shown["top_shown"]

    browser.evaluate('document.getElementById("suggest-1").click()')
    shown = shown_cut(browser)
    assert 0 < passing(float(shown["t"])) <= 40 < passing(float(shown["t"]) - 1 / BINS)  # 1 % of 4,000
    assert shown["false_keep"] == f"{100 * passing(float(shown['t'])) / 4000:.2f}%"

    browser.evaluate("""(() => {
        const m = document.getElementById("mode-top");
        m.click();
        const s = document.getElementById("top");
        s.value = "10";
        s.dispatchEvent(new Event("input", {bubbles: true}));
    })()""")
    shown = shown_cut(browser)
    t = float(shown["t"])
    kept = int((good >= t).sum())
    assert shown["top_shown"] and not shown["score_shown"]
    assert shown["kept"] == f"{kept:,}" and kept >= 0.1 * len(good) > int((good >= t + 1 / BINS).sum())
    assert shown["code"] == f'df[df["longclip_score"] >= {t:.4f}]  # the top 10 %: {kept:,} rows'
    assert shown["passing"] == f"{passing(t):,}"

    def section() -> np.ndarray:
        box = browser.evaluate("""(() => { const r = document.getElementById("choose").getBoundingClientRect();
            return {x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}; })()""")
        png = browser.page("Page.captureScreenshot", format="png", clip={**box, "scale": 1},
                           captureBeyondViewport=True)["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB"))

    with_outline = section()
    assert (with_outline.min(axis=2) < 235).mean() > 0.05  # text, bars and controls painted
    browser.evaluate('document.getElementById("baseline-outline").remove()')
    without = section()
    assert with_outline.shape == without.shape
    assert (np.abs(with_outline.astype(int) - without).sum(axis=2) > 60).sum() > 300  # the outline itself painted
    assert browser.evaluate("window.__violations") == [] and browser.errors() == []
