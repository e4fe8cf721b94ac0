"""The paging harness itself: it catches the pages a test did not expect."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, Pager, UnexpectedPages
from tocsin.faketwilio import create_fake_twilio
from tocsin.notification.messages import voice_twiml
from tocsin.notification.providers import TwilioProvider

ALICE = "+15005550010"


@pytest.fixture
async def phones() -> AsyncIterator[tuple[Pager, TwilioProvider]]:
    async with create_fake_twilio(ACCOUNT_SID, AUTH_TOKEN) as fake:
        assert fake.base_url is not None
        twilio = TwilioProvider(ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, base_url=fake.base_url)
        pager = Pager(fake, timeout_s=0.2)
        pager.person("alice", ALICE)
        yield pager, twilio
        await twilio.aclose()


async def test_a_page_nobody_expected_fails_the_test(
    phones: tuple[Pager, TwilioProvider],
) -> None:
    pager, twilio = phones
    await twilio.send_sms(ALICE, "tocsin: disk full", None)
    await twilio.send_sms(ALICE, "tocsin: disk full", None)

    await pager.expect_sms("alice", contains="disk full")

    with pytest.raises(UnexpectedPages, match="sms to alice: tocsin: disk full"):
        await pager.expect_no_more_pages()
    await pager.expect_sms("alice")
    await pager.expect_no_more_pages()


async def test_expectations_name_what_was_sent_instead(
    phones: tuple[Pager, TwilioProvider],
) -> None:
    pager, twilio = phones
    await twilio.place_call(
        ALICE, voice_twiml("Payments", "disk full", "https://t.example/v"), None
    )

    with pytest.raises(
        AssertionError, match="expected sms to alice; pages so far:\n  call to alice"
    ):
        await pager.expect_sms("alice")
    with pytest.raises(AssertionError, match="does not contain 'cpu'"):
        await pager.expect_voice("alice", contains="cpu")
    await pager.expect_no_more_pages()
