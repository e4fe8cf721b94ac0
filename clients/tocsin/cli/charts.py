"""Charts of a report (`tocsin report --chart FILE`): MTTA and MTTR per week, and pages
per person by hour of day.

`.svg` is written by this module alone (plain SVG, no dependency); `.png` needs
matplotlib (the `load` extra, `pip install matplotlib`) and says so when it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from tocsin.v1 import history_pb2

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f")
PEOPLE_SHOWN = 6
WIDTH, PANEL_H, MARGIN = 900, 300, 60


class ChartError(ValueError):
    """The chart cannot be written as asked (unknown format, matplotlib missing)."""


def write(report: history_pb2.GetReportResponse, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(svg(report))
    elif suffix == ".png":
        _png(report, path)
    else:
        raise ChartError(f"--chart {path}: expected a file name ending in .svg or .png")


def _weeks(report: history_pb2.GetReportResponse) -> tuple[list[str], list[float], list[float]]:
    weeks = list(report.total_weeks)
    return (
        [w.week for w in weeks],
        [w.times.mtta_median_seconds / 60 for w in weeks],
        [w.times.mttr_median_seconds / 60 for w in weeks],
    )


def _people(report: history_pb2.GetReportResponse) -> list[tuple[str, list[int]]]:
    shown = [(p.user_id, list(p.by_hour)) for p in report.people[:PEOPLE_SHOWN]]
    rest = report.people[PEOPLE_SHOWN:]
    if rest:
        shown.append((f"{len(rest)} others", [sum(p.by_hour[h] for p in rest) for h in range(24)]))
    return shown


def svg(report: history_pb2.GetReportResponse) -> str:
    """Both charts, one above the other, as one SVG document."""
    height = 2 * PANEL_H + 3 * MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
    ]
    labels, mtta, mttr = _weeks(report)
    parts += _bars(
        "MTTA and MTTR per week (median, minutes)",
        MARGIN,
        labels,
        [("MTTA p50", mtta), ("MTTR p50", mttr)],
        stacked=False,
    )
    people = _people(report)
    parts += _bars(
        "Pages per person by hour of day (their local time)",
        PANEL_H + 2 * MARGIN,
        [f"{h:02d}" for h in range(24)],
        [(name, [float(v) for v in hours]) for name, hours in people],
        stacked=True,
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _bars(
    title: str,
    top: float,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    stacked: bool,
) -> list[str]:
    left, right = MARGIN, WIDTH - MARGIN // 2
    bottom = top + PANEL_H
    out = [
        f'<text x="{left}" y="{top - 20}" font-size="14" font-weight="bold">{escape(title)}</text>'
    ]
    if not labels or not series:
        out.append(f'<text x="{left}" y="{top + PANEL_H / 2}">no data</text>')
        return out
    totals = [
        sum(s[i] for _, s in series) if stacked else max(s[i] for _, s in series)
        for i in range(len(labels))
    ]
    peak = max(totals) or 1.0
    slot = (right - left) / len(labels)
    bar = slot * 0.8 / (1 if stacked else len(series))
    scale = PANEL_H / peak
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>')
    for tick in range(5):
        value = peak * tick / 4
        y = bottom - value * scale
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
    for i, label in enumerate(labels):
        x0 = left + slot * i + slot * 0.1
        base = bottom
        for n, (name, values) in enumerate(series):
            height = values[i] * scale
            x = x0 if stacked else x0 + n * bar
            y = base - height if stacked else bottom - height
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" '
                f'fill="{COLORS[n % len(COLORS)]}"><title>{escape(name)} {escape(label)}: '
                f"{values[i]:.3g}</title></rect>"
            )
            if stacked:
                base -= height
        out.append(
            f'<text x="{left + slot * (i + 0.5):.1f}" y="{bottom + 14}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    for n, (name, _) in enumerate(series):
        x = left + 10 + n * 140
        color = COLORS[n % len(COLORS)]
        out.append(f'<rect x="{x}" y="{top - 12}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="{top - 3}">{escape(name)}</text>')
    return out


def _png(report: history_pb2.GetReportResponse, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartError(
            "--chart: writing PNG needs matplotlib (pip install matplotlib); "
            "or write .svg, which needs nothing"
        ) from None
    figure, (weeks_axis, hours_axis) = plt.subplots(2, 1, figsize=(10, 8))
    labels, mtta, mttr = _weeks(report)
    positions = range(len(labels))
    weeks_axis.bar([p - 0.2 for p in positions], mtta, width=0.4, label="MTTA p50")
    weeks_axis.bar([p + 0.2 for p in positions], mttr, width=0.4, label="MTTR p50")
    weeks_axis.set_xticks(list(positions), labels)
    weeks_axis.set_ylabel("minutes")
    weeks_axis.set_title("MTTA and MTTR per week (median)")
    weeks_axis.legend()
    bottom = [0] * 24
    for name, hours in _people(report):
        hours_axis.bar(range(24), hours, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, hours, strict=True)]
    hours_axis.set_xticks(range(24), [f"{h:02d}" for h in range(24)])
    hours_axis.set_title("Pages per person by hour of day (their local time)")
    hours_axis.set_ylabel("pages")
    if report.people:
        hours_axis.legend()
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
