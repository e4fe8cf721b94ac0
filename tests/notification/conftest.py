"""Fixtures for notification tests (the stack itself is in stack.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.notification.stack import PagingStack, paging_stack
from tocsin.runtime.redis import RedisClient


@pytest.fixture
async def stack(redis: RedisClient) -> AsyncIterator[PagingStack]:
    """The paging stack on the standalone Redis; fails the test on any unexpected page."""
    async with paging_stack(redis) as paging:
        yield paging
        paging.pager.check_all_expected()
