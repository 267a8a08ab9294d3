"""The trend chart (app.insights.chart), a pure function: well-formed SVG with a title and description for screen
readers, every text escaped, nothing the pages' Content-Security-Policy would refuse, and lines that say the days'
numbers exactly."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import date, timedelta

import pytest

from app.insights import chart
from app.insights.trend import LEVELS, Day

NS = "{http://www.w3.org/2000/svg}"
START = date(2026, 9, 7)


def days_of(counts: list[tuple[int, int, int, int]]) -> list[Day]:
    return [Day(START + timedelta(days=i), *c) for i, c in enumerate(counts)]


def parse(markup: str) -> ET.Element:
    return ET.fromstring(markup)


def drawn(svg: ET.Element) -> dict[str, list[int]]:
    """Each level's values, read back from its line's points and the top tick of the y axis."""
    top = max(int(t.text or "0") for t in svg.iter(f"{NS}text") if t.get("class") == "tick-y")
    return {
        str(p.get("data-level")): [chart.value_of(float(xy.split(",")[1]), top) for xy in p.get("points", "").split()]
        for p in svg.iter(f"{NS}polyline")
    }


def wavy(n: int = 90) -> list[Day]:
    return days_of([(i % 7, (i * 5) % 13, 40 - i % 40, 0 if i < 45 else 3) for i in range(n)])


def test_the_lines_say_the_days_numbers() -> None:
    days = wavy()
    svg = parse(chart.svg(days, "every image of acme", "trend-org"))
    values = drawn(svg)
    assert set(values) == set(LEVELS)
    for level in LEVELS:
        assert values[level] == [getattr(d, level) for d in days], level


def test_the_points_run_left_to_right_one_a_day_within_the_plot() -> None:
    svg = parse(chart.svg(wavy(), "x", "t"))
    for line in svg.iter(f"{NS}polyline"):
        points = [tuple(map(float, xy.split(","))) for xy in line.get("points", "").split()]
        xs = [x for x, _ in points]
        assert xs == sorted(xs) and len(set(xs)) == 90
        assert xs[0] == chart.PLOT_LEFT and xs[-1] == chart.PLOT_RIGHT
        assert all(chart.PLOT_TOP <= y <= chart.PLOT_BOTTOM for _, y in points)


def test_it_has_a_fixed_size_and_is_named_by_its_title_and_described_by_its_desc() -> None:
    days = wavy()
    svg = parse(chart.svg(days, "ghcr.io/acme/api in acme/api", "trend-image"))
    assert (svg.get("width"), svg.get("height"), svg.get("viewBox")) == ("720", "260", "0 0 720 260")
    assert svg.get("role") == "img" and svg.get("id") == "trend-image"
    title, desc = svg.find(f"{NS}title"), svg.find(f"{NS}desc")
    assert title is not None and desc is not None
    assert svg.get("aria-labelledby") == title.get("id") == "trend-image-title"
    assert svg.get("aria-describedby") == desc.get("id") == "trend-image-desc"
    assert title.text == "Findings by severity per day, last 90 days: ghcr.io/acme/api in acme/api"
    last = days[-1]
    assert f"On {last.day.isoformat()}: {last.critical} critical, {last.high} high, {last.medium} medium, 3 low" in (
        desc.text or ""
    )


def test_the_legend_names_each_line_with_its_last_count() -> None:
    days = wavy()
    svg = parse(chart.svg(days, "x", "t"))
    legend = {g.get("data-level"): "".join(g.itertext()) for g in svg.iter(f"{NS}g") if g.get("class") == "legend"}
    assert legend == {level: f"{level.capitalize()} {getattr(days[-1], level)}" for level in LEVELS}
    dashes = {p.get("data-level"): p.get("stroke-dasharray") for p in svg.iter(f"{NS}polyline")}
    assert len(set(dashes.values())) == 4  # told apart without colour too


def test_the_x_axis_names_the_first_and_last_days() -> None:
    svg = parse(chart.svg(wavy(), "x", "t"))
    named = [s.get("data-day") for s in svg.iter(f"{NS}tspan")]
    assert named[0] == START.isoformat() and named[-1] == (START + timedelta(days=89)).isoformat()
    assert len(named) == len(set(named)) >= 3


def test_text_from_uploads_is_escaped() -> None:
    hostile = '</title><script>alert(1)</script><title x="'
    markup = chart.svg(wavy(5), hostile, 'x" onload="alert(1)')
    svg = parse(markup)  # still well-formed
    assert [e.tag for e in svg.iter() if e.tag.endswith("script")] == []
    title = svg.find(f"{NS}title")
    assert title is not None and hostile in (title.text or "")
    assert not any(name.startswith("on") for e in svg.iter() for name in e.attrib)


def test_nothing_the_content_security_policy_refuses() -> None:
    markup = str(chart.svg(wavy(), "x", "t"))
    assert "<script" not in markup and "style=" not in markup and "<style" not in markup
    assert not re.search(r"\son[a-z]+=", markup) and "href" not in markup


@pytest.mark.parametrize(
    ("largest", "expected"),
    [
        (0, [0, 1]),
        (1, [0, 1]),
        (3, [0, 1, 2, 3]),
        (4, [0, 1, 2, 3, 4]),
        (5, [0, 2, 4, 6]),
        (12, [0, 5, 10, 15]),
        (40, [0, 10, 20, 30, 40]),
        (41, [0, 20, 40, 60]),
        (999, [0, 500, 1000]),
    ],
)
def test_the_y_axis_ticks_are_round_and_reach_the_largest(largest: int, expected: list[int]) -> None:
    assert chart.ticks(largest) == expected
    assert expected[-1] >= largest


def test_no_findings_at_all_draws_flat_lines_on_zero() -> None:
    svg = parse(chart.svg(days_of([(0, 0, 0, 0)] * 90), "x", "t"))
    assert drawn(svg) == {level: [0] * 90 for level in LEVELS}


@pytest.mark.parametrize("n", [0, 1, 2])
def test_short_or_empty_trends_still_draw(n: int) -> None:
    days = days_of([(n, 1, 0, 0)] * n)
    svg = parse(chart.svg(days, "x", "t"))
    if n:
        assert drawn(svg)["critical"] == [n] * n
    else:
        assert "No days to show." in "".join(svg.itertext())
