from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.identity.stack import IdentityStack, identity_stack
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def stack(
    any_redis: RedisClient, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[IdentityStack]:
    """Every service with people signed in, on the standalone server then the cluster."""
    async with identity_stack(any_redis, clock, tmp_path / "history.db") as built:
        yield built
