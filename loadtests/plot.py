"""The HDR percentile plot of a run: latency against percentile, tail stretched out."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt
from hdrh.histogram import HdrHistogram
from matplotlib.ticker import FixedLocator, FuncFormatter


def _curve(histogram: HdrHistogram) -> tuple[list[float], list[float]]:
    """(1 / (1 - percentile), latency ms) from the median to the maximum."""
    nines = math.log10(max(10, histogram.get_total_count()))
    xs, ys = [], []
    steps = 200
    for step in range(steps + 1):
        x = 2 * 10 ** (step * (nines - math.log10(2)) / steps)  # 2 = the median
        percentile = 100 * (1 - 1 / x)
        xs.append(x)
        ys.append(histogram.get_value_at_percentile(percentile) / 1000)
    xs.append(10**nines * 1.5)
    ys.append(histogram.get_max_value() / 1000)
    return xs, ys


def percentile_plot(histograms: dict[str, HdrHistogram], title: str, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    for label, histogram in histograms.items():
        if histogram.get_total_count():
            xs, ys = _curve(histogram)
            axes.plot(xs, ys, label=f"{label} (n={histogram.get_total_count()})", linewidth=1.4)
    axes.set_xscale("log")
    axes.set_yscale("log")
    ticks = [2, 10, 100, 1000, 10000, 100000]
    axes.xaxis.set_major_locator(FixedLocator(ticks))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 * (1 - 1 / x):g}%"))
    axes.xaxis.set_minor_locator(FixedLocator([]))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    axes.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    axes.set_xlabel("percentile (the rightmost point of each line is its maximum)")
    axes.set_ylabel("latency, ms (log)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
