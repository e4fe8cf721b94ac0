"""How many SMS per second one process pushes through TwilioProvider to the fake Twilio.

The fake runs in its own process (as in a load test), so this measures the sending side:
twilio's client, aiohttp's pool, our error handling. Run with
`.venv/bin/pytest tests/benchmarks/test_twilio_bench.py -s` to see the rate.
"""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from tocsin.notification.providers import TwilioProvider

ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-token"
FROM = "+15005550006"
SENDS_PER_ROUND = 2000
CONCURRENCY = 64


@pytest.fixture(scope="module")
def fake_twilio_url() -> Iterator[str]:
    env = os.environ | {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "tocsin.faketwilio", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        yield line.removeprefix("fake twilio listening on ").strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _send_batch(base_url: str, count: int, concurrency: int) -> float:
    """Send `count` SMS with `concurrency` in flight; returns SMS per second."""
    provider = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, FROM, base_url=base_url)
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            await provider.send_sms(f"+1500556{n % 10_000:04d}", f"tocsin: page {n}", None)

    try:
        await provider.send_sms("+15005560000", "warm-up", None)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await provider.aclose()
    return count / elapsed


def test_sms_throughput_to_fake_twilio(benchmark: BenchmarkFixture, fake_twilio_url: str) -> None:
    rates: list[float] = []
    httpx.post(f"{fake_twilio_url}/_fake/reset")

    benchmark.pedantic(
        lambda: rates.append(
            asyncio.run(_send_batch(fake_twilio_url, SENDS_PER_ROUND, CONCURRENCY))
        ),
        rounds=3,
        iterations=1,
    )

    stats = httpx.get(f"{fake_twilio_url}/_fake/stats").json()
    # every send of every round that ran (one round when benchmarks are disabled) accepted
    assert stats["accepted"]["sms"] == len(rates) * (SENDS_PER_ROUND + 1)
    assert stats["rejected"] == 0
    benchmark.extra_info["sms_per_second"] = [round(rate) for rate in rates]
    print(f"\nSMS/s to the fake ({CONCURRENCY} in flight): {[round(r) for r in rates]}")
