"""Maintenance windows, as the on-call engineer lives them: during a window an alert is
recorded, listed and counted but pages nobody; an incident already open goes on paging;
ending the window from the CLI's RPC makes the next alert page again. And the
recurrence math: a weekly window keeps its local wall time across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tests.escalation.stack import FullStack, user
from tests.notification.stack import ALICE, SMS
from tocsin.incidents import maintenance
from tocsin.runtime.clock import ManualClock, datetime_to_ms
from tocsin.v1 import common_pb2, incidents_pb2, routing_pb2, urgency_pb2


async def trigger(stack: FullStack, summary: str) -> incidents_pb2.TriggerResponse:
    reply = await stack.client.incidents.Trigger(
        incidents_pb2.TriggerRequest(
            service_id="payments-api",
            summary=summary,
            dedup_key=summary,
            severity=common_pb2.SEVERITY_CRITICAL,
        )
    )
    await stack.run_until_quiet()
    return reply


async def test_an_alert_during_a_maintenance_window_pages_nobody_and_is_listed(
    stack: FullStack,
) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.policy(([user("alice")], 10), repeat=1)
    before = await trigger(stack, "disk full on db1")  # open before the window
    await stack.pager.expect_sms("alice", "disk full on db1")

    created = await stack.client.incidents.CreateMaintenanceWindow(
        urgency_pb2.CreateMaintenanceWindowRequest(
            window=urgency_pb2.MaintenanceWindow(
                id="db-upgrade",
                service_ids=["payments-api"],
                duration=Duration(seconds=3600),
                description="PostgreSQL 17 upgrade",
            )
        )
    )
    assert created.window.active
    during = await trigger(stack, "api restarted during deploy")
    assert not during.HasField("incident") and not during.created
    assert during.suppressed_by == "maintenance/db-upgrade"
    assert during.maintenance_window_id == "db-upgrade"
    repeat = await trigger(stack, "disk full on db1")  # the open incident's key: recorded too
    assert repeat.suppressed_by == "maintenance/db-upgrade"

    # The incident opened before the window goes on escalating (its second loop).
    await stack.tick(minutes=10)
    await stack.pager.expect_sms("alice", "disk full on db1")
    open_one = await stack.paging.incident(before.incident.id)
    assert open_one.alert_count == 1  # the repeat during the window did not join it

    listed = await stack.client.incidents.ListSuppressedAlerts(
        routing_pb2.ListSuppressedAlertsRequest(service_id="payments-api")
    )
    assert [(a.rule, a.summary) for a in listed.alerts] == [
        ("maintenance/db-upgrade", "disk full on db1"),
        ("maintenance/db-upgrade", "api restarted during deploy"),
    ]
    windows = await stack.client.incidents.ListMaintenanceWindows(
        urgency_pb2.ListMaintenanceWindowsRequest(service_id="payments-api")
    )
    assert [(w.id, w.active, w.alerts_recorded) for w in windows.windows] == [
        ("db-upgrade", True, 2)
    ]

    ended = await stack.client.incidents.EndMaintenanceWindow(
        urgency_pb2.EndMaintenanceWindowRequest(id="db-upgrade")
    )
    assert ended.changed and not ended.window.active
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()  # nothing that arrived during it pages now
    after = await trigger(stack, "payments down")
    assert after.created and not after.suppressed_by
    await stack.pager.expect_sms("alice", "payments down")
    again = await stack.client.incidents.EndMaintenanceWindow(
        urgency_pb2.EndMaintenanceWindowRequest(id="db-upgrade")
    )
    assert not again.changed


async def test_a_window_scheduled_ahead_begins_on_time(stack: FullStack) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.policy(([user("alice")], 30))
    start = Timestamp()
    start.FromMilliseconds(stack.paging.clock.now_ms() + 3_600_000)
    await stack.client.incidents.CreateMaintenanceWindow(
        urgency_pb2.CreateMaintenanceWindowRequest(
            window=urgency_pb2.MaintenanceWindow(
                id="nightly",
                service_ids=["payments-api"],
                start=start,
                duration=Duration(seconds=1800),
                rrule="FREQ=DAILY",
            )
        )
    )
    await trigger(stack, "before the window")
    await stack.pager.expect_sms("alice", "before the window")
    await stack.tick(hours=1)
    assert (await trigger(stack, "in the window")).suppressed_by == "maintenance/nightly"
    await stack.tick(minutes=30)  # over until tomorrow's occurrence
    await trigger(stack, "after the window")
    await stack.pager.expect_sms("alice", "after the window")
    await stack.tick(hours=23, minutes=30)  # tomorrow, same time
    assert (await trigger(stack, "tomorrow's window")).suppressed_by == "maintenance/nightly"


async def test_bad_windows_are_refused_naming_the_field(stack: FullStack) -> None:
    for window, field in (
        (urgency_pb2.MaintenanceWindow(service_ids=["payments-api"]), "window.duration"),
        (
            urgency_pb2.MaintenanceWindow(
                service_ids=["payments-api"], duration=Duration(seconds=600), rrule="FREQ=SOMETIMES"
            ),
            "window.rrule",
        ),
        (urgency_pb2.MaintenanceWindow(duration=Duration(seconds=600)), "window.service_ids"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stack.client.incidents.CreateMaintenanceWindow(
                urgency_pb2.CreateMaintenanceWindowRequest(window=window)
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (raised.value.details() or ""), raised.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.client.incidents.CreateMaintenanceWindow(
            urgency_pb2.CreateMaintenanceWindowRequest(
                window=urgency_pb2.MaintenanceWindow(
                    service_ids=["nope"], duration=Duration(seconds=600)
                )
            )
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _ms(year: int, month: int, day: int, hour: int, minute: int) -> int:
    return datetime_to_ms(datetime(year, month, day, hour, minute, tzinfo=UTC))


def test_a_weekly_window_keeps_its_local_time_across_dst() -> None:
    window = urgency_pb2.MaintenanceWindow(
        id="w",
        service_ids=["s"],
        duration=Duration(seconds=2 * 3600),
        rrule="FREQ=WEEKLY;BYDAY=SU",
        time_zone="Europe/London",
    )
    window.start.FromMilliseconds(_ms(2027, 3, 21, 3, 0))  # Sunday 03:00 GMT
    assert maintenance.current(window, _ms(2027, 3, 21, 2, 59)) is None
    assert maintenance.current(window, _ms(2027, 3, 21, 4, 59)) == (
        _ms(2027, 3, 21, 3, 0),
        _ms(2027, 3, 21, 5, 0),
    )
    # The clocks went forward on 28 March: 03:00 BST is 02:00Z.
    assert maintenance.upcoming(window, _ms(2027, 3, 22, 0, 0)) == (
        _ms(2027, 3, 28, 2, 0),
        _ms(2027, 3, 28, 4, 0),
    )
    assert maintenance.current(window, _ms(2027, 3, 28, 2, 30)) is not None
    assert maintenance.current(window, _ms(2027, 3, 28, 4, 0)) is None
    # Ended early: that occurrence is over, the next one comes as usual.
    window.ended_at.FromMilliseconds(_ms(2027, 3, 28, 2, 30))
    assert maintenance.current(window, _ms(2027, 3, 28, 2, 45)) is None
    assert maintenance.upcoming(window, _ms(2027, 3, 28, 2, 45)) == (
        _ms(2027, 4, 4, 2, 0),
        _ms(2027, 4, 4, 4, 0),
    )


async def test_a_service_may_ask_for_what_arrived_during_a_window_to_page_at_its_end(
    stack: FullStack,
) -> None:
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.policy(([user("alice")], 60))
    await stack.client.incidents.UpdateService(
        incidents_pb2.UpdateServiceRequest(
            service=incidents_pb2.Service(
                id="payments-api", escalation_policy_id="payments", page_after_maintenance=True
            )
        )
    )
    await stack.client.incidents.CreateMaintenanceWindow(
        urgency_pb2.CreateMaintenanceWindowRequest(
            window=urgency_pb2.MaintenanceWindow(
                id="deploy", service_ids=["payments-api"], duration=Duration(seconds=1800)
            )
        )
    )
    for _ in range(3):  # three alerts of one key, one of another: two incidents at the end
        assert (await trigger(stack, "api 500s")).suppressed_by == "maintenance/deploy"
    assert (await trigger(stack, "queue backlog")).suppressed_by == "maintenance/deploy"
    await stack.tick(minutes=29, seconds=59)
    await stack.pager.expect_no_more_pages()
    await stack.tick(seconds=1)  # the window ends: what it held pages now, once per key
    await stack.pager.expect_sms("alice")
    await stack.pager.expect_sms("alice")
    listed = await stack.client.incidents.ListIncidents(
        incidents_pb2.ListIncidentsRequest(service_ids=["payments-api"])
    )
    assert sorted(i.summary for i in listed.incidents) == ["api 500s", "queue backlog"]
    timeline = (await stack.paging.incident(listed.incidents[0].id)).timeline
    assert timeline[0].actor.display == "maintenance window deploy ended (held alert)"
    await stack.tick(minutes=30)
    await stack.pager.expect_no_more_pages()


async def _held_window(stack: FullStack) -> None:
    """payments-api pages alice, holds what arrives in window "deploy" (30 minutes)."""
    await stack.paging.add_user("alice", ALICE, [(SMS, 0)])
    await stack.policy(([user("alice")], 60))
    await stack.client.incidents.UpdateService(
        incidents_pb2.UpdateServiceRequest(
            service=incidents_pb2.Service(
                id="payments-api", escalation_policy_id="payments", page_after_maintenance=True
            )
        )
    )
    await stack.client.incidents.CreateMaintenanceWindow(
        urgency_pb2.CreateMaintenanceWindowRequest(
            window=urgency_pb2.MaintenanceWindow(
                id="deploy", service_ids=["payments-api"], duration=Duration(seconds=1800)
            )
        )
    )


def _held_request(summary: str) -> incidents_pb2.TriggerRequest:
    return incidents_pb2.TriggerRequest(
        service_id="payments-api",
        summary=summary,
        dedup_key=summary,
        severity=common_pb2.SEVERITY_CRITICAL,
    )


async def test_an_alert_held_by_a_replica_that_missed_the_early_end_pages_at_once(
    stack: FullStack,
) -> None:
    """Another incidents replica still has the window in its 1-second cache when the
    window is ended early, and holds an alert that arrives then. It must page at once,
    not at the planned end 30 minutes later (nor push back what was held before)."""
    await _held_window(stack)
    assert (await trigger(stack, "api 500s")).suppressed_by == "maintenance/deploy"
    replica = maintenance.Maintenance(stack.paging.redis, stack.paging.clock)
    window = await replica.active_for("payments-api")  # cached: in progress
    assert window is not None
    await stack.client.incidents.EndMaintenanceWindow(
        urgency_pb2.EndMaintenanceWindowRequest(id="deploy")
    )
    await replica.hold(window, _held_request("queue backlog"))  # its stale view
    await stack.tick(seconds=1)
    await stack.pager.expect_sms("alice")
    await stack.pager.expect_sms("alice")
    listed = await stack.client.incidents.ListIncidents(
        incidents_pb2.ListIncidentsRequest(service_ids=["payments-api"])
    )
    assert sorted(i.summary for i in listed.incidents) == ["api 500s", "queue backlog"]


async def test_an_alert_held_while_the_end_fires_is_not_dropped(
    stack: FullStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alert held between the firing's read of the hold and its drop (another
    replica, the same moment) pages too: the drop takes only what the firing triggered."""
    await _held_window(stack)
    assert (await trigger(stack, "api 500s")).suppressed_by == "maintenance/deploy"
    replica_clock = ManualClock(stack.paging.clock.now_ms())  # another replica's view
    replica = maintenance.Maintenance(stack.paging.redis, replica_clock)
    window = await replica.active_for("payments-api")
    assert window is not None
    read = maintenance.Maintenance.held

    async def held_then_another_arrives(
        self: maintenance.Maintenance, timer_id: str
    ) -> list[tuple[bytes, bytes]]:
        entries = await read(self, timer_id)
        # it arrived just before the end, on a replica whose clock runs a millisecond behind
        replica_clock.set(stack.paging.clock.now() - timedelta(milliseconds=1))
        await replica.hold(window, _held_request("queue backlog"))
        monkeypatch.setattr(maintenance.Maintenance, "held", read)
        return entries

    monkeypatch.setattr(maintenance.Maintenance, "held", held_then_another_arrives)
    await stack.tick(minutes=30)  # the planned end
    await stack.pager.expect_sms("alice")
    await stack.tick(seconds=1)  # the timer, armed again for what came meanwhile
    await stack.pager.expect_sms("alice")
    listed = await stack.client.incidents.ListIncidents(
        incidents_pb2.ListIncidentsRequest(service_ids=["payments-api"])
    )
    assert sorted(i.summary for i in listed.incidents) == ["api 500s", "queue backlog"]
