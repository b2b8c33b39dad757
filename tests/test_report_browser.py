"""The report in a real headless Chromium, driven over the DevTools protocol: it loads with no console error and no
request beyond its own file, the threshold slider shows the exact kept count, and the page paints.

Skips when Chromium or websocket-client is missing; .ci/run installs both.
"""

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cdp import Browser, find_chromium
from test_report import IMG, scored_frame
from longclip.runtime.report.page import BOUNDARY, write_report
from longclip.runtime.report.data import BINS, ReportOptions

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                         ".ci/run installs it)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("websocket", reason="needs websocket-client (the test extra)")
    with Browser(CHROMIUM, tmp_path_factory.mktemp("chromium")) as b:
        yield b


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
