"""The trend drawn as an SVG line chart, server-side: a pure function of the days, no script, every text escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

from markupsafe import Markup

from app.insights.trend import LEVELS, Day

WIDTH, HEIGHT = 720, 260
PLOT_LEFT, PLOT_RIGHT = 48, 590  # x of the first and of the last day
PLOT_TOP, PLOT_BOTTOM = 16, 224  # y of the top tick and of zero
LEGEND_X = 608
# Colour and dash per level: the lines differ by dash too, and the legend names them, so colour is never alone.
# The colours keep 4.5:1 contrast on white.
STYLE = {
    "critical": ("#a40e26", ""),
    "high": ("#bc4c00", "8 4"),
    "medium": ("#7d4e00", "2 3"),
    "low": ("#0550ae", "10 3 2 3"),
}
X_LABEL_EVERY = 30  # days between the dates under the x axis


def nice_step(largest: int, intervals: int = 4) -> int:
    """A whole step of 1, 2 or 5 times a power of ten that splits 0..largest into at most `intervals` ticks."""
    if largest <= intervals:
        return 1
    raw = largest / intervals
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return int(factor * power)
    return int(10 * power)  # not reached: factor 10 always covers raw


def ticks(largest: int) -> list[int]:
    """The y axis' tick values, from 0 to a top at or above `largest` (at least 1, so an all-zero chart has an axis)."""
    step = nice_step(largest)
    top = max(step, math.ceil(largest / step) * step)
    return list(range(0, top + 1, step))


def x_of(index: int, count: int) -> float:
    if count <= 1:
        return (PLOT_LEFT + PLOT_RIGHT) / 2
    return PLOT_LEFT + index * (PLOT_RIGHT - PLOT_LEFT) / (count - 1)


def y_of(value: int, top: int) -> float:
    return PLOT_BOTTOM - value * (PLOT_BOTTOM - PLOT_TOP) / top


def value_of(y: float, top: int) -> int:
    """A drawn point's value read back from its y (what a test of the chart does)."""
    return round((PLOT_BOTTOM - y) * top / (PLOT_BOTTOM - PLOT_TOP))


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _short(day: date) -> str:
    return f"{day.day} {day:%b}"


def svg(days: Sequence[Day], subject: str, element_id: str) -> Markup:
    """`days` (oldest first) as an inline SVG chart: one line per severity, the y axis in findings, the x axis in
    days; its <title> (its accessible name) names `subject`, and its <desc> (its description) says the first and last
    days' counts in words. `element_id` prefixes the ids they carry (unique on the page)."""
    title_id, desc_id = f"{element_id}-title", f"{element_id}-desc"
    largest = max((max(d.counts) for d in days), default=0)
    axis = ticks(largest)
    top = axis[-1]
    parts = [
        Markup(
            '<svg xmlns="http://www.w3.org/2000/svg" class="trend-chart" id="{}" role="img" '
            'aria-labelledby="{}" aria-describedby="{}" width="{}" height="{}" viewBox="0 0 {} {}" '
            'font-family="system-ui, sans-serif" font-size="12">'
        ).format(element_id, title_id, desc_id, WIDTH, HEIGHT, WIDTH, HEIGHT),
        Markup('<title id="{}">{}</title>').format(title_id, _title(days, subject)),
        Markup('<desc id="{}">{}</desc>').format(desc_id, _desc(days)),
    ]
    # The y axis: a line and a label per tick.
    for value in axis:
        y = _num(y_of(value, top))
        parts.append(
            Markup(
                '<line class="grid" x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="1"/>'
                '<text class="tick-y" x="{}" y="{}" text-anchor="end" dominant-baseline="middle" fill="#57606a">{}'
                "</text>"
            ).format(PLOT_LEFT, y, PLOT_RIGHT, y, "#8c959f" if value == 0 else "#d0d7de", PLOT_LEFT - 6, y, value)
        )
    # The x axis: a date every X_LABEL_EVERY days back from the last, and the first.
    if days:
        last = len(days) - 1
        shown = sorted({0, *range(last, -1, -X_LABEL_EVERY)})
        if len(shown) > 1 and shown[1] - shown[0] < X_LABEL_EVERY // 2:  # too close to the first date to read
            shown.pop(1)
        for index in shown:
            x = _num(x_of(index, len(days)))
            anchor = "start" if index == 0 and len(days) > 1 else "end" if index == last and last else "middle"
            parts.append(
                Markup(
                    '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#8c959f" stroke-width="1"/>'
                    '<text class="tick-x" x="{}" y="{}" text-anchor="{}" fill="#57606a">'
                    '<tspan data-day="{}">{}</tspan></text>'
                ).format(
                    x,
                    PLOT_BOTTOM,
                    x,
                    PLOT_BOTTOM + 4,
                    x,
                    PLOT_BOTTOM + 18,
                    anchor,
                    days[index].day.isoformat(),
                    _short(days[index].day),
                )
            )
    # The lines, least severe first so critical is drawn on top; a single day is a dot.
    for level in reversed(LEVELS):
        colour, dash = STYLE[level]
        points = " ".join(
            f"{_num(x_of(i, len(days)))},{_num(y_of(getattr(d, level), top))}" for i, d in enumerate(days)
        )
        parts.append(
            Markup(
                '<polyline class="line" data-level="{}" points="{}" fill="none" stroke="{}" stroke-width="2" '
                'stroke-linejoin="round" stroke-linecap="round"{}/>'
            ).format(level, points, colour, Markup(' stroke-dasharray="{}"').format(dash) if dash else "")
        )
    # The legend: each line's sample, name and last count.
    latest = days[-1] if days else None
    for n, level in enumerate(LEVELS):
        colour, dash = STYLE[level]
        row_y = PLOT_TOP + 8 + n * 22
        parts.append(
            Markup(
                '<g class="legend" data-level="{}">'
                '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"{}/>'
                '<text x="{}" y="{}" dominant-baseline="middle" fill="#1f2328">{} {}</text></g>'
            ).format(
                level,
                LEGEND_X,
                row_y,
                LEGEND_X + 26,
                row_y,
                colour,
                Markup(' stroke-dasharray="{}"').format(dash) if dash else "",
                LEGEND_X + 32,
                row_y,
                level.capitalize(),
                getattr(latest, level) if latest else 0,
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def _title(days: Sequence[Day], subject: str) -> str:
    return f"Findings by severity per day, last {len(days)} days: {subject}"


def _desc(days: Sequence[Day]) -> str:
    if not days:
        return "No days to show."
    last, first = days[-1], days[0]
    now = ", ".join(f"{getattr(last, level)} {level}" for level in LEVELS)
    then = ", ".join(f"{getattr(first, level)} {level}" for level in LEVELS)
    return (
        f"Counts of the latest scans' findings each day from {first.day.isoformat()} to {last.day.isoformat()}. "
        f"On {last.day.isoformat()}: {now}. On {first.day.isoformat()}: {then}. "
        "Every day's numbers are in the table beside the chart."
    )
