"""Histograms in, figures out: percentiles in milliseconds and the machine they came from."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtests.openloop import latency_histogram, record_us

PERCENTILES = {"p50": 50.0, "p99": 99.0, "p999": 99.9}


def histogram_of_ns(values_ns: list[int]) -> HdrHistogram:
    histogram = latency_histogram()
    for value in values_ns:
        record_us(histogram, value)
    return histogram


def decode(encoded: bytes) -> HdrHistogram:
    return HdrHistogram.decode(encoded)


def summary_ms(histogram: HdrHistogram) -> dict[str, Any]:
    """count, p50, p99, p999 and max in milliseconds (None when nothing was recorded)."""
    count = histogram.get_total_count()
    figures: dict[str, Any] = {"count": count}
    for name, percentile in PERCENTILES.items():
        figures[name] = (
            round(histogram.get_value_at_percentile(percentile) / 1000, 3) if count else None
        )
    figures["max"] = round(histogram.get_max_value() / 1000, 3) if count else None
    # HdrHistogram's own compressed base64 form, in microseconds (HdrHistogram.decode).
    figures["hdr"] = histogram.encode().decode() if count else ""
    return figures


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
