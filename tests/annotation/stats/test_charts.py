"""Charts that read at a glance: round tick values, legends with a swatch per series and the chance line, a chance
line that has no series' colour, labels that fit (the whole label in the tooltip), series side by side so one
interval does not hide another, and the shared "too few (n=…)" caption on charts, tables and metrics."""

import re

import pytest

from annotation.stats import plots
from annotation.stats.paired import paired_comparison
from training.ml.reporting import too_few


def _ticks(svg: str) -> list[str]:
    return re.findall(r'class="tick" text-anchor="end">([^<]+)<', svg)


def _legend(svg: str) -> list[str]:
    return re.findall(r'class="tick legend-label">([^<]+)<', svg)


@pytest.mark.parametrize("low, high, want", [
    (0.0, 1.0, [0.0, 0.25, 0.5, 0.75, 1.0]),
    (0.6, 0.69, [0.6, 0.625, 0.65, 0.675, 0.7]),
    (0.0, 37.0, [0.0, 10.0, 20.0, 30.0, 40.0]),
    (-0.13, 0.41, [-0.2, 0.0, 0.2, 0.4, 0.6]),
])
def test_nice_ticks_are_round_and_cover_the_range(low, high, want):
    ticks = plots.nice_ticks(low, high)
    assert ticks == pytest.approx(want)
    assert ticks[0] <= low and ticks[-1] >= high


def test_tick_labels_carry_the_decimals_the_step_needs():
    svg = plots.line_with_ci([("a", 0.61, 0.6, 0.63, 30), ("b", 0.67, 0.65, 0.69, 30)], title="t")
    labels = _ticks(svg)
    assert labels and len({len(t.split(".")[-1]) for t in labels}) == 1
    steps = {round(float(b) - float(a), 6) for a, b in zip(labels, labels[1:], strict=False)}
    assert len(steps) == 1  # evenly spaced: not 0.60/0.62/0.64/0.67/0.69
    assert _ticks(plots.bars_with_ci([("x", 0.5, 0.4, 0.6)], title="t")) == ["0.00", "0.25", "0.50", "0.75", "1.00"]


def test_legends_have_a_swatch_per_series_and_the_chance_line_its_own_colour():
    svg = plots.points_with_ci({"reader accuracy": [(1, 0.7, 0.6, 0.8), (2, 0.6, 0.5, 0.7)],
                                "fooling rate": [(1, 0.3, 0.2, 0.4), (2, 0.4, 0.3, 0.5)]},
                               title="readers", reference=0.5)
    assert _legend(svg) == ["reader accuracy", "fooling rate", "chance (0.5)"]
    assert svg.count('class="swatch"') == 3
    reference = re.search(r'<line [^>]*class="reference"[^>]*>', svg).group(0)
    assert plots.REFERENCE in reference and plots.REFERENCE not in plots.PALETTE
    histogram = plots.grouped_histogram({"round 1": {1: 2, 2: 5}, "round 2": {1: 1, 2: 7}}, title="h", values=[1, 2])
    assert _legend(histogram) == ["round 1", "round 2"] and histogram.count('class="swatch"') == 2


def test_series_sit_side_by_side_so_no_interval_hides_another():
    svg = plots.points_with_ci({"a": [(1, 0.5, 0.4, 0.6)], "b": [(1, 0.5, 0.4, 0.6)]}, title="t")
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)" cy="[\d.]+" r="3.5"', svg)]
    assert len(xs) == 2 and abs(xs[0] - xs[1]) >= 6


def test_long_labels_are_cut_to_fit_with_the_whole_label_in_the_tooltip():
    name = "tiny-domain+domain-adapt-7+finetune-12"
    svg = plots.bars_with_ci([(name, 0.4, 0.3, 0.5), ("other", 0.5, None, None)] * 4, title="fooling",
                             reference=None)
    assert "…" in svg and f"<title>{name}</title>" in svg
    shown = re.search(r'>([^<>]*…)<title>', svg).group(1)
    assert name.startswith(shown[:-1])


def test_a_missing_point_says_why_at_its_round_in_the_shared_wording():
    svg = plots.points_with_ci({"reward AUROC": [(1, None, None, None, too_few(5)), (2, 0.71, None, None)]},
                               title="reward")
    assert "too few (n=5)" in svg and "(no data yet)" not in svg
    only = plots.points_with_ci({"reward AUROC": [(1, None, None, None, too_few(4))]}, title="reward")
    assert "too few (n=4)" in only and "(no data yet)" not in only
    assert "too few (n=1)" in plots.line_with_ci([("v1", 0.5, None, None, 1), ("v2", 0.6, 0.5, 0.7, 9)], title="p")


def test_too_few_is_one_wording_for_charts_tables_and_metrics():
    assert too_few(3) == "too few (n=3)"
    assert paired_comparison([0.1, 0.2, 0.3], [0.2, 0.3, 0.5])["skipped"]["p_value"] == too_few(3)
    from django.template import Context, Template

    html = Template("{% include 'dashboard/_panel_stat.html' %}").render(
        Context({"s": {"mean": 0.5, "ci_low": None, "ci_high": None, "n": 1}, "n": 1}))
    assert too_few(1) in html
