from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.history.databases import database


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The archive on SQLite, then on a PostgreSQL database of its own."""
    async with database(request.param, tmp_path) as url:
        yield url
