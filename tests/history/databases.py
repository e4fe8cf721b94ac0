"""Archive databases for tests: a SQLite file in a temporary folder, and a PostgreSQL
database created for the test and dropped after it.

PostgreSQL: `TOCSIN_TEST_POSTGRES_URL` names a server and a database to connect to for
CREATE/DROP DATABASE (default `postgresql://postgres@127.0.0.1:5432/postgres`, trust
auth). When it cannot be reached the PostgreSQL cases are skipped, saying why, except in
CI (`CI` set), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

POSTGRES_VARIABLE = "TOCSIN_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get(POSTGRES_VARIABLE) or DEFAULT_POSTGRES


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh, empty database on the test PostgreSQL server; its URL."""
    admin = admin_url()
    try:
        conn = await asyncpg.connect(admin, timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        message = (
            f"PostgreSQL at {POSTGRES_VARIABLE} ({urlsplit(admin).hostname}) unreachable: {error}"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"tocsin_test_{secrets.token_hex(6)}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(admin)
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "postgresql":
        async with postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'history.sqlite3'}"
