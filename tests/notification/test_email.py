"""Email pages end to end: real scheduling, incidents and notification services, real
Redis, and a real SMTP server (aiosmtpd) that the test starts."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from tests.notification.smtp_server import PASSWORD, USER, SmtpRecorder, smtp_server
from tests.notification.stack import ALICE, SMS, PagingStack, paging_stack
from tests.notification.test_settings import violations
from tests.tls_certs import Pki, make_pki
from tocsin.notification.channels import Message
from tocsin.notification.channels.email import (
    ConsoleEmailChannel,
    EmailChannel,
    classify_smtp_error,
    mask_email,
    normalize_email,
)
from tocsin.notification.providers import ProviderError
from tocsin.runtime.config import ConfigError, load_config
from tocsin.runtime.errors import InvalidArgument
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.timers import TimerWorker
from tocsin.scheduling.handoff_timers import HandoffTimers
from tocsin.scheduling.store import SchedulingStore
from tocsin.v1 import incidents_pb2, scheduling_pb2
from tocsin.v1 import notification_pb2 as pb

EMAIL = pb.CONTACT_METHOD_TYPE_EMAIL
FROM = "tocsin <pages@example.com>"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("smtp-pki"))


@pytest.fixture
def smtp(pki: Pki) -> Iterator[tuple[SmtpRecorder, int]]:
    """STARTTLS required, then AUTH: the password never crosses in clear."""
    with smtp_server(tls=(pki.server_cert, pki.server_key)) as running:
        yield running


def smtp_env(smtp: tuple[SmtpRecorder, int], pki: Pki) -> dict[str, str]:
    _, port = smtp
    return {
        "TOCSIN_SMTP_URL": f"smtp://{USER}:{PASSWORD.replace('/', '%2F')}@127.0.0.1:{port}",
        "TOCSIN_EMAIL_FROM": FROM,
        "TOCSIN_SMTP_CA": str(pki.ca),
    }


@pytest.fixture
async def stack(
    any_redis: RedisClient, smtp: tuple[SmtpRecorder, int], pki: Pki
) -> AsyncIterator[PagingStack]:
    """The paging stack (standalone Redis, then a Redis Cluster) with email over SMTP."""
    async with paging_stack(any_redis, smtp_env(smtp, pki)) as paging:
        yield paging
        paging.pager.check_all_expected()


async def add_email_user(stack: PagingStack, rules: list[tuple[str, int]]) -> None:
    """alice with an SMS method and an email method, and `rules` as (method, seconds)."""
    await stack.add_user("alice", ALICE, [(SMS, 600)])
    reply = await stack.client.notification.CreateContactMethod(
        pb.CreateContactMethodRequest(
            contact_method=pb.ContactMethod(
                id="alice-email", user_id="alice", type=EMAIL, address="Alice.Ops@Example.COM"
            )
        )
    )
    assert reply.contact_method.address == "Alice.Ops@example.com"
    await stack.client.notification.SetNotificationRules(
        pb.SetNotificationRulesRequest(
            user_id="alice",
            rules=[
                pb.NotificationRule(contact_method_id=m, delay=Duration(seconds=s))
                for m, s in rules
            ],
        )
    )


async def test_a_page_by_email_arrives_at_the_smtp_server_once_with_text_and_html(
    stack: PagingStack, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, _ = smtp
    await add_email_user(stack, [("alice-email", 0), ("alice-sms", 300)])
    incident_id = await stack.trigger("disk full on db1 <b>&</b>")
    number = (await stack.incident(incident_id)).number

    await stack.notify(incident_id, "alice")
    await stack.settle()

    assert len(recorder.received) == 1
    mail = recorder.received[0]
    assert mail.rcpt_tos == ["Alice.Ops@example.com"] and mail.login == USER and mail.tls
    assert mail.mail_from == "pages@example.com"
    assert mail.message["From"] == FROM
    assert mail.message["Subject"] == (
        f"[tocsin] #{number} Payments API: disk full on db1 <b>&</b>"
    )
    attempts = {a.contact_method_id: a for a in await stack.attempts(incident_id)}
    attempt = attempts["alice-email"]
    assert attempt.status == pb.ATTEMPT_STATUS_SENT
    assert mail.message["Message-ID"] == f"<{attempt.id}@example.com>"
    text = mail.part("plain")
    assert "disk full on db1 <b>&</b>" in text
    assert f"tocsin ack {number}" in text
    assert f"Open it: {stack.config.public_url}/i/{number}?s=" in text  # the incident's page
    assert f"to {stack.config.twilio.from_number if stack.config.twilio else ''}" in text
    page = mail.part("html")
    assert "disk full on db1 &lt;b&gt;&amp;&lt;/b&gt;" in page  # escaped, never markup
    assert f'href="{stack.config.public_url}/i/{number}?s=' in page

    # The SMS rule is still pending; acknowledging cancels it, nothing else is sent.
    await stack.pager.expect_no_more_pages()
    assert len(recorder.received) == 1


async def test_a_refused_recipient_moves_on_to_the_next_rule_at_once(
    stack: PagingStack, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, _ = smtp
    recorder.refuse.append("550 5.1.1 no such mailbox")
    await add_email_user(stack, [("alice-email", 0), ("alice-sms", 300)])
    incident_id = await stack.trigger()

    await stack.notify(incident_id, "alice")
    await stack.pager.expect_sms("alice", "disk full on db1")  # not 5 minutes later

    attempts = {a.contact_method_id: a for a in await stack.attempts(incident_id)}
    assert attempts["alice-email"].status == pb.ATTEMPT_STATUS_FAILED
    assert attempts["alice-email"].error_code == 550
    assert recorder.received == []
    timeline = [e.message for e in (await stack.incident(incident_id)).timeline]
    assert any(t.startswith("Email to alice (alice-email) failed: SMTP 550") for t in timeline)


async def test_a_test_page_goes_by_email_too(
    stack: PagingStack, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, _ = smtp
    await add_email_user(stack, [("alice-email", 0)])
    stack.pager.person("alice", ALICE)

    reply = await stack.client.notification.SendTestPage(pb.SendTestPageRequest(user_id="alice"))
    await stack.pager.expect_sms("alice", "test page")
    await stack.pager.expect_voice("alice", "test call")

    by_method = {a.contact_method_id: a for a in reply.attempts}
    assert by_method["alice-email"].status == pb.ATTEMPT_STATUS_SENT
    assert [m.message["Subject"] for m in recorder.received] == ["[tocsin] test page for Alice"]


async def test_a_bad_email_address_is_refused_naming_the_field(stack: PagingStack) -> None:
    await stack.add_user("alice", ALICE, [(SMS, 0)])
    for bad in ("alice", "alice@", "@example.com", "a b@example.com", "alice@localhost"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.client.notification.CreateContactMethod(
                pb.CreateContactMethodRequest(
                    contact_method=pb.ContactMethod(
                        id="alice-email", user_id="alice", type=EMAIL, address=bad
                    )
                )
            )
        assert violations(refused.value) == ["contact_method.address"], bad
        assert bad not in (refused.value.details() or "").replace("contact_method", "")


def test_addresses_are_normalised_or_refused() -> None:
    assert normalize_email(" bob@Mail.Example.ORG ", "f") == "bob@mail.example.org"
    with pytest.raises(InvalidArgument):
        normalize_email("bob@@example.org", "f")
    assert mask_email("alice@example.com") == "a***@example.com"


def test_smtp_failures_are_classified_so_nothing_is_sent_twice() -> None:
    import aiosmtplib

    later = classify_smtp_error(aiosmtplib.SMTPDataError(451, "later"), handed_over=True)
    assert later.retryable and later.code == 451
    never = classify_smtp_error(aiosmtplib.SMTPDataError(554, "no"), handed_over=True)
    assert never.permanent
    unknown = classify_smtp_error(aiosmtplib.SMTPServerDisconnected("bye"), handed_over=True)
    assert unknown.outcome_unknown
    before = classify_smtp_error(aiosmtplib.SMTPServerDisconnected("bye"), handed_over=False)
    assert before.retryable


async def test_without_smtp_email_pages_are_printed_with_the_address_masked() -> None:
    printed = io.StringIO()
    channel = ConsoleEmailChannel(printed)
    await channel.send("alice@example.com", Message("body", subject="[tocsin] #1 x"), "1-0-0")
    assert printed.getvalue() == "tocsin page: email to a***@example.com: [tocsin] #1 x\n"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TOCSIN_SMTP_URL": "smtp://h"}, "TOCSIN_SMTP_URL is set without TOCSIN_EMAIL_FROM"),
        ({"TOCSIN_EMAIL_FROM": "a@b.co"}, "TOCSIN_EMAIL_FROM is set without TOCSIN_SMTP_URL"),
        (
            {"TOCSIN_SMTP_URL": "imap://u:hunter2@h", "TOCSIN_EMAIL_FROM": "a@b.co"},
            "TOCSIN_SMTP_URL: expected smtp://",
        ),
        (
            {"TOCSIN_SMTP_URL": "smtp://u:hunter2@h", "TOCSIN_EMAIL_FROM": "nobody"},
            "TOCSIN_EMAIL_FROM: expected an address",
        ),
        (
            {"TOCSIN_SMTP_URL": "smtp://u:hunter2@h?starttls=no", "TOCSIN_EMAIL_FROM": "a@b.co"},
            "TOCSIN_SMTP_URL: starttls must be one of auto, require, off",
        ),
    ],
)
def test_bad_smtp_settings_stop_the_process_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("?", r"\?")) as refused:
        load_config(env)
    assert "hunter2" not in str(refused.value)


def test_smtp_settings() -> None:
    config = load_config(
        {"TOCSIN_SMTP_URL": "smtp://u%40x:p%2Fw@mail:2525", "TOCSIN_EMAIL_FROM": FROM}
    ).smtp
    assert config is not None
    assert (config.host, config.port, config.username, config.password) == (
        "mail",
        2525,
        "u@x",
        "p/w",
    )
    assert config.starttls == "require" and not config.implicit_tls  # credentials: TLS
    assert "p/w" not in repr(config)
    tls = load_config({"TOCSIN_SMTP_URL": "smtps://mail", "TOCSIN_EMAIL_FROM": FROM}).smtp
    assert tls is not None and (tls.port, tls.implicit_tls) == (465, True)
    relay = load_config({"TOCSIN_SMTP_URL": "smtp://relay", "TOCSIN_EMAIL_FROM": FROM}).smtp
    assert relay is not None and (relay.port, relay.starttls) == (587, "auto")


def _channel(port: int, *, ca: Path | None, query: str = "") -> EmailChannel:
    env = {
        "TOCSIN_SMTP_URL": f"smtp://{USER}:{PASSWORD.replace('/', '%2F')}@127.0.0.1:{port}{query}",
        "TOCSIN_EMAIL_FROM": FROM,
        **({"TOCSIN_SMTP_CA": str(ca)} if ca else {}),
    }
    config = load_config(env).smtp
    assert config is not None
    return EmailChannel(config)


MESSAGE = Message("hello", subject="[tocsin] #1 x", html="<p>hello</p>")


async def test_a_server_whose_certificate_is_not_trusted_gets_nothing(
    smtp: tuple[SmtpRecorder, int],
) -> None:
    recorder, port = smtp
    with pytest.raises(ProviderError) as refused:
        await _channel(port, ca=None).send("bob@example.com", MESSAGE, "1-0-0")
    assert refused.value.permanent, refused.value
    assert recorder.received == [] and recorder.logins == []  # the password stayed home


async def test_a_password_is_never_sent_without_tls() -> None:
    with smtp_server(auth=False) as (recorder, port):  # offers no STARTTLS
        with pytest.raises(ProviderError, match="does not offer STARTTLS") as refused:
            await _channel(port, ca=None).send("bob@example.com", MESSAGE, "1-0-0")
    assert refused.value.permanent and recorder.received == []


async def test_a_temporary_refusal_is_retryable_and_the_retry_delivers_once(
    smtp: tuple[SmtpRecorder, int], pki: Pki
) -> None:
    recorder, port = smtp
    recorder.refuse.append("451 4.3.0 try again later")
    channel = _channel(port, ca=pki.ca)
    with pytest.raises(ProviderError) as later:
        await channel.send("bob@example.com", MESSAGE, "1-0-0")
    assert later.value.retryable and later.value.code == 451
    result = await channel.send("bob@example.com", MESSAGE, "1-0-0")
    assert [m.message["Message-ID"] for m in recorder.received] == [result.sid]


async def test_the_email_shows_the_alerts_details(
    stack: PagingStack, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, _ = smtp
    await add_email_user(stack, [("alice-email", 0), ("alice-sms", 300)])
    details = Struct()
    details.update({"host": "db1", "mount": "/var <98%>"})
    reply = await stack.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api", summary="disk full", dedup_key="disk", details=details
        )
    )
    await stack.drain_events()

    await stack.notify(reply.incident.id, "alice")
    await stack.settle()

    [mail] = recorder.received
    assert '"host": "db1"' in mail.part("plain") and '"mount": "/var <98%>"' in mail.part("plain")
    assert "&quot;mount&quot;: &quot;/var &lt;98%&gt;&quot;" in mail.part("html")


async def test_email_pages_are_not_paced_by_the_phone_rate_limits(
    redis: RedisClient, smtp: tuple[SmtpRecorder, int], pki: Pki
) -> None:
    """TOCSIN_TWILIO_SENDS_PER_SECOND and TOCSIN_NUMBER_SEND_INTERVAL pace the phone
    channels; a storm's emails to one person all leave at once."""
    recorder, _ = smtp
    limits = {"TOCSIN_TWILIO_SENDS_PER_SECOND": "1", "TOCSIN_NUMBER_SEND_INTERVAL": "2s"}
    async with paging_stack(redis, {**smtp_env(smtp, pki), **limits}) as stack:
        await add_email_user(stack, [("alice-email", 0), ("alice-sms", 300)])
        storm = [await stack.trigger(f"alert {n}") for n in range(3)]
        for incident_id in storm:
            await stack.notify(incident_id, "alice")
        await stack.settle()  # the clock does not move

        alerts = sorted(str(m.message["Subject"]).rsplit(": ", 1)[1] for m in recorder.received)
        assert alerts == ["alert 0", "alert 1", "alert 2"]
        await stack.pager.expect_no_more_pages()


async def test_hand_off_notices_by_email_arrive_once_over_smtp(
    stack: PagingStack, smtp: tuple[SmtpRecorder, int]
) -> None:
    """Shift hand-off notices (issue 15) end to end by email: the scheduling timer fires on
    two workers at the shift's start, notification sends over STARTTLS with AUTH to the
    real SMTP server, once; the end notice follows at the shift's end; each is an attempt
    listed as a notice. The person's SMS gets them too, and no call."""
    recorder, _ = smtp
    await add_email_user(stack, [("alice-email", 0)])
    stack.pager.person("alice", ALICE)
    scheduling = stack.client.scheduling
    await scheduling.CreateUser(
        scheduling_pb2.CreateUserRequest(user=scheduling_pb2.User(id="bob", name="Bob"))
    )
    await scheduling.SetHandoffNotices(
        scheduling_pb2.SetHandoffNoticesRequest(user_id="alice", notices=["start", "end"])
    )
    await scheduling.CreateSchedule(
        scheduling_pb2.CreateScheduleRequest(
            schedule=scheduling_pb2.Schedule(
                id="primary",
                name="Primary",
                time_zone="UTC",
                layers=[
                    scheduling_pb2.Layer(
                        name="daily",
                        start="2026-11-27T09:00:00",
                        rotation_length="1d",
                        user_ids=["alice", "bob"],
                    )
                ],
            )
        )
    )

    def replica() -> TimerWorker:
        timers = HandoffTimers(
            SchedulingStore(stack.redis),
            stack.redis,
            stack.clock,
            lambda: stack.client.notification,
        )
        return timers.worker()

    one, two = replica(), replica()
    stack.clock.set(datetime(2026, 11, 27, 9, tzinfo=UTC))
    assert sorted(await asyncio.gather(one.run_once(), two.run_once())) == [0, 1]
    [start] = recorder.received
    assert start.rcpt_tos == ["Alice.Ops@example.com"]
    assert start.mail_from == "pages@example.com"
    assert (start.login, start.tls) == (USER, True)
    assert start.message["Subject"] == "tocsin: your on-call shift on Primary starts now."
    assert "your on-call shift on Primary starts now." in start.part("plain")
    await stack.pager.expect_sms("alice", "shift on Primary starts now")
    await stack.pager.expect_no_more_pages()

    stack.clock.advance(days=1)  # alice hands over to bob
    assert await two.run_once() == 1
    assert await one.run_once() == 0
    assert [m.message["Subject"] for m in recorder.received[1:]] == [
        "tocsin: your on-call shift on Primary has ended."
    ]
    await stack.pager.expect_sms("alice", "has ended")
    await stack.pager.expect_no_more_pages()
    listed = await stack.client.notification.ListAttempts(pb.ListAttemptsRequest(user_id="alice"))
    emails = [a for a in listed.attempts if a.contact_method_id == "alice-email"]
    assert [(a.kind, a.status, a.notice_key.rpartition("/")[2]) for a in emails] == [
        (pb.ATTEMPT_KIND_NOTICE, pb.ATTEMPT_STATUS_SENT, "start"),
        (pb.ATTEMPT_KIND_NOTICE, pb.ATTEMPT_STATUS_SENT, "end"),
    ]
