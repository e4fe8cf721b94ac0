"""Fixtures for the webhook tests: the paging stack with email (a real SMTP server) and
the webhook channel's secret, on standalone Redis and a 3-master Cluster, and a receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.notification.smtp_server import SmtpRecorder, smtp_server
from tests.notification.stack import PagingStack, paging_stack
from tests.webhooks.receiver import Receiver, running_receiver
from tocsin.runtime.redis import RedisClient

SECRET = "whsec-subscription-0123456789"
CHANNEL_SECRET = "whsec-channel-secret-0123456789"
FROM = "tocsin@example.org"


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpRecorder, int]]:
    with smtp_server(auth=False) as running:
        yield running


@pytest.fixture
async def stack(
    any_redis: RedisClient, smtp: tuple[SmtpRecorder, int]
) -> AsyncIterator[PagingStack]:
    _, port = smtp
    env = {
        "TOCSIN_WEBHOOK_SECRET": CHANNEL_SECRET,
        "TOCSIN_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "TOCSIN_EMAIL_FROM": FROM,
    }
    async with paging_stack(any_redis, env) as paging:
        yield paging


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver(SECRET) as running:
        yield running
