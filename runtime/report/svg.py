"""The report's score histogram as inline SVG: fine-grid counts merged into at most ``MAX_BARS`` bars."""

from __future__ import annotations

import math

import numpy as np

MAX_BARS = 120
WIDTH, HEIGHT = 960, 250
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 26, 30  # margins: y labels, -, threshold label, x labels


def nice_ticks(lo: float, hi: float, target: int = 8) -> list[float]:
    """Round numbers (1, 2 or 5 times a power of ten apart) inside ``[lo, hi]``.

    >>> nice_ticks(0.52, 0.8)
    [0.55, 0.6, 0.65, 0.7, 0.75, 0.8]
    """
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = [round(n * step, 10) for n in range(first, int(math.floor(hi / step + 1e-9)) + 1)]
    return ticks


def histogram_svg(counts: np.ndarray, k0: int, bins: int,
                  baseline: np.ndarray | None = None) -> tuple[str, dict[str, float]]:
    """``counts[i]`` scores lie in grid bin ``k0 + i`` (width ``1/bins``); ``baseline``: the mismatched pairs'
    counts on the same bins, drawn as an outline scaled to as many pairs as there are scores. Returns the SVG and
    the geometry the page's script needs to place the threshold line: ``x0`` and ``width`` of the plot."""
    span = len(counts)
    per_bar = math.ceil(span / min(MAX_BARS, span))
    n_bars = math.ceil(span / per_bar)
    merged = np.add.reduceat(counts, np.arange(0, span, per_bar))
    scaled = None
    if baseline is not None and baseline.sum():
        scaled = np.add.reduceat(baseline, np.arange(0, span, per_bar)) * (counts.sum() / baseline.sum())
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    top = max(int(merged.max()), math.ceil(scaled.max()) if scaled is not None else 0) or 1
    bar_w = plot_w / n_bars
    parts = [f'<svg class="hist" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="score histogram">']
    for i, n in enumerate(merged):
        h = plot_h * int(n) / top
        start = k0 + i * per_bar
        parts.append(f'<rect class="bar" data-k="{start}" data-end="{min(start + per_bar, k0 + span)}" '
                     f'x="{LEFT + i * bar_w:.2f}" y="{base - h:.2f}" width="{max(bar_w - 1, 0.6):.2f}" '
                     f'height="{h:.2f}"><title>{start / bins:.4f}–{(start + per_bar) / bins:.4f}: {int(n):,}'
                     "</title></rect>")
    if scaled is not None:
        bar_w = plot_w / n_bars
        steps = [f"M{LEFT:.2f},{base:.2f}"]
        for i, n in enumerate(scaled):
            y = base - plot_h * float(n) / top
            steps.append(f"L{LEFT + i * bar_w:.2f},{y:.2f}L{LEFT + (i + 1) * bar_w:.2f},{y:.2f}")
        steps.append(f"L{LEFT + plot_w:.2f},{base:.2f}")
        parts.append(f'<path class="base" id="baseline-outline" d="{"".join(steps)}"><title>mismatched pairs '
                     "(baseline), scaled to the number of scored rows</title></path>")
    lo, hi = k0 / bins, (k0 + span) / bins
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{LEFT + plot_w}" y2="{base}"/>')
    for tick in nice_ticks(lo, hi):
        x = LEFT + (tick - lo) / (hi - lo) * plot_w
        parts.append(f'<line class="axis" x1="{x:.2f}" y1="{base}" x2="{x:.2f}" y2="{base + 4}"/>'
                     f'<text x="{x:.2f}" y="{base + 18}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top:,}</text>'
                 f'<text x="{LEFT - 6}" y="{base}" text-anchor="end">0</text>'
                 f'<text x="{LEFT - 6}" y="{TOP + plot_h / 2}" text-anchor="end">rows</text>')
    parts.append(f'<line id="thr-line" x1="{LEFT}" y1="{TOP - 4}" x2="{LEFT}" y2="{base}"/>'
                 f'<text id="thr-label" x="{LEFT + 6}" y="{TOP - 10}"></text></svg>')
    return "".join(parts), {"x0": LEFT, "width": plot_w}
