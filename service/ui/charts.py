"""Line charts as inline SVG, drawn on the server: readable without JavaScript, styled by
console.css (classes, no inline style: the pages' CSP allows none).

A chart has a title, labelled axes with round ticks, one line per series with a point (and
its value in a `<title>` tooltip) on every non-zero value, a legend, and the same numbers in
a table below it for anyone who would rather read them (or cannot see the picture).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 40


@dataclass(frozen=True, slots=True)
class Series:
    """One line: a name for the legend and a value per x (None: not known, a gap)."""

    name: str
    css: str  # the class that colours it (console.css: .series-<css>)
    values: Sequence[float | None]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def line_chart(
    *,
    chart_id: str,
    title: str,
    y_label: str,
    times: Sequence[datetime],
    series: Sequence[Series],
    x_ticks_every: int,
    x_label: str = "time (UTC)",
) -> Markup:
    """A `<figure>` holding the chart and its table; `times` are the x values (buckets'
    starts), a tick labelled on every `x_ticks_every`-th one."""
    count = len(times)
    known = [v for s in series for v in s.values if v is not None]
    top = nice_ceiling(max(known, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts: list[str] = []
    # Horizontal grid and y ticks: 0, a quarter, ... the top.
    for k in range(5):
        level = top * k / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level):.1f}" '
            f'y2="{y(level):.1f}"/><text class="tick" x="{LEFT - 6}" y="{y(level) + 4:.1f}" '
            f'text-anchor="end">{escape(_number(level))}</text>'
        )
    for i in range(0, count, max(1, x_ticks_every)):
        parts.append(
            f'<line class="axis" x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{TOP + plot_h}" '
            f'y2="{TOP + plot_h + 4}"/><text class="tick" x="{x(i):.1f}" '
            f'y="{TOP + plot_h + 16}" text-anchor="middle">{times[i]:%H:%M}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" '
        f'y2="{TOP + plot_h}"/><line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" '
        f'y2="{TOP + plot_h}"/>'
        f'<text class="label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="label" transform="translate(12 {TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    for s in series:
        css = escape(s.css)
        # One path per run of known values: an unknown value is a gap, not a zero.
        runs: list[list[str]] = [[]]
        for i, v in enumerate(s.values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(i):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline class="line series-{css}" points="{" ".join(run)}"/>')
        for i, v in enumerate(s.values):
            if v:
                parts.append(
                    f'<circle class="point series-{css}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" '
                    f'data-value="{v:g}"><title>{escape(s.name)}: {escape(_number(v))} at '
                    f"{times[i]:%H:%M} UTC</title></circle>"
                )
    legend = "".join(
        f'<li><span class="swatch series-{escape(s.css)}" aria-hidden="true"></span>'
        f"{escape(s.name)}</li>"
        for s in series
    )
    head = "".join(f'<th scope="col">{escape(s.name)}</th>' for s in series)
    rows = "".join(
        f'<tr><th scope="row">{t:%Y-%m-%d %H:%M}</th>'
        + "".join(
            f'<td class="num">{"—" if s.values[i] is None else escape(_number(s.values[i] or 0))}'
            "</td>"
            for s in series
        )
        + "</tr>"
        for i, t in enumerate(times)
        if any(s.values[i] for s in series)
    )
    table = (
        f"<details><summary>The numbers</summary><table><thead><tr>"
        f'<th scope="col">From (UTC)</th>{head}</tr></thead><tbody>'
        f"{rows or f'<tr><td colspan={len(series) + 1} class=empty>All zero.</td></tr>'}"
        "</tbody></table></details>"
    )
    # Every text above is escaped or a number we formatted: the markup is ours.
    return Markup(  # noqa: S704
        f'<figure class="chart" id="{escape(chart_id)}" aria-labelledby="{escape(chart_id)}-title">'
        f'<figcaption id="{escape(chart_id)}-title">{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{escape(chart_id)}-title"'
        f' xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
        f'<ul class="legend">{legend}</ul>{table}</figure>'
    )
