"""A served process's lifecycle (runtime/service.py `run_service`), in a process of its
own as `tocsin serve` runs it: once started, what startup allocated is frozen out of the
garbage collector's reach and the young generation's threshold is raised (`tune_gc`)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tocsin.runtime.service import GC_THRESHOLDS

_PROBE = textwrap.dedent(
    """
    import asyncio, gc, os, signal
    from tocsin.runtime.config import load_config
    from tocsin.runtime.service import run_service

    class Started:
        def start_health(self, redis):
            asyncio.get_running_loop().call_soon(self.report)

        def report(self):
            print(*gc.get_threshold(), gc.get_freeze_count(), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

        async def stop(self):
            print("stopped", flush=True)

    async def create_server(deps, addr):
        print(*gc.get_threshold(), gc.get_freeze_count(), flush=True)
        return Started(), 0

    asyncio.run(run_service("scheduling", load_config(), create_server))
    """
)


def test_a_served_process_freezes_its_startup_and_raises_the_young_threshold(
    redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "TOCSIN_REDIS_URL": redis_url,
        "TOCSIN_METRICS_ADDR": "off",
        "TOCSIN_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    while_starting, once_started, stopped = done.stdout.splitlines()
    # Before the service is started the interpreter's defaults hold (nothing frozen yet):
    # startup's objects are what the freeze is for, so it must come after them.
    assert while_starting.split() == [*map(str, gc.get_threshold()), "0"]
    *threshold, frozen = map(int, once_started.split())
    assert tuple(threshold) == GC_THRESHOLDS
    assert frozen > 10_000  # modules, descriptors, clients: tens of thousands of objects
    assert stopped == "stopped"
