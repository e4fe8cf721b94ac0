"""Pure incident rules: transitions, input checks, key ordering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tocsin.incidents import domain, keys, validation
from tocsin.runtime.errors import FailedPrecondition, InvalidArgument
from tocsin.v1 import common_pb2, incidents_pb2

NOW = 1_800_000_000_000
ALICE = common_pb2.Actor(channel=common_pb2.CHANNEL_CLI, display="alice")


def _incident(
    status: incidents_pb2.IncidentStatus.ValueType = domain.TRIGGERED,
    snoozed_until: int | None = None,
) -> incidents_pb2.Incident:
    incident = incidents_pb2.Incident(
        id="17",
        service_id="payments-api",
        dedup_key="k",
        status=status,
    )
    if snoozed_until is not None:
        incident.snoozed_until.CopyFrom(domain.timestamp(snoozed_until))
    return incident


def test_acknowledge_once() -> None:
    change = domain.acknowledge(_incident(), ALICE, NOW)
    assert change is not None
    assert change.incident.status == domain.ACKNOWLEDGED
    assert change.incident.acknowledged_by == ALICE
    assert change.incident.acknowledged_at.ToMilliseconds() == NOW
    assert change.event_kind == incidents_pb2.INCIDENT_EVENT_KIND_ACKNOWLEDGED
    assert change.entry.kind == incidents_pb2.TIMELINE_KIND_ACKNOWLEDGED
    assert change.snooze_timer is domain.SnoozeTimer.KEEP
    assert domain.acknowledge(change.incident, ALICE, NOW + 1) is None


def test_acknowledging_a_snoozed_incident_ends_the_snooze() -> None:
    snoozed = _incident(domain.ACKNOWLEDGED, snoozed_until=NOW + 60_000)
    change = domain.acknowledge(snoozed, ALICE, NOW)
    assert change is not None
    assert not change.incident.HasField("snoozed_until")
    assert change.snooze_timer is domain.SnoozeTimer.CANCEL


def test_resolved_is_final() -> None:
    resolved = _incident(domain.RESOLVED)
    assert domain.resolve(resolved, ALICE, NOW) is None
    with pytest.raises(FailedPrecondition):
        domain.acknowledge(resolved, ALICE, NOW)
    with pytest.raises(FailedPrecondition):
        domain.snooze(resolved, 60_000, ALICE, NOW)
    with pytest.raises(FailedPrecondition):
        domain.reassign(resolved, incidents_pb2.Assignment(user_id="bob"), ALICE, NOW)


def test_resolve_frees_the_dedup_key_and_cancels_a_snooze() -> None:
    change = domain.resolve(_incident(domain.ACKNOWLEDGED, snoozed_until=NOW + 1), ALICE, NOW)
    assert change is not None
    assert change.release_dedup
    assert change.snooze_timer is domain.SnoozeTimer.CANCEL
    assert change.incident.resolved_by == ALICE


def test_unsnooze_only_for_the_current_snooze() -> None:
    change = domain.snooze(_incident(), 30 * 60_000, ALICE, NOW)
    assert change.snooze_timer is domain.SnoozeTimer.ARM
    assert change.snooze_due_ms == NOW + 30 * 60_000
    snoozed = change.incident
    assert domain.unsnooze(snoozed, NOW + 1, NOW + 2) is None
    ended = domain.unsnooze(snoozed, change.snooze_due_ms, change.snooze_due_ms)
    assert ended is not None
    assert ended.incident.status == domain.TRIGGERED
    assert ended.entry.actor.channel == common_pb2.CHANNEL_AUTO
    assert domain.unsnooze(ended.incident, change.snooze_due_ms, NOW) is None


def test_reassign_triggers_and_ends_a_snooze() -> None:
    snoozed = _incident(domain.ACKNOWLEDGED, snoozed_until=NOW + 1)
    change = domain.reassign(
        snoozed, incidents_pb2.Assignment(escalation_policy_id="db"), ALICE, NOW
    )
    assert change.incident.status == domain.TRIGGERED
    assert change.incident.assignment.escalation_policy_id == "db"
    assert change.snooze_timer is domain.SnoozeTimer.CANCEL
    assert change.entry.attributes == {"escalation_policy_id": "db"}


def test_text_checks() -> None:
    check = validation.text_violations
    assert check("f", "fine", 10) == []
    assert [v.field for v in check("f", "", 10, required=True)] == ["f"]
    assert "at most 3" in check("f", "long", 3)[0].description
    assert "control" in check("f", "a\nb", 10)[0].description
    assert check("f", "a\nb\tc", 10, multiline=True) == []
    assert "control" in check("f", "a\x00", 10, multiline=True)[0].description
    assert "UTF-8" in check("f", "\ud800", 10)[0].description


def test_incident_ids() -> None:
    assert validation.parse_incident_id("4821") == "4821"
    for bad in ("", "0", "007", "12a", "-3", "1" * 19):
        with pytest.raises(InvalidArgument):
            validation.parse_incident_id(bad)


@given(st.text(max_size=40), st.text(max_size=40))
def test_dedup_shard_is_stable_and_in_range(service: str, key: str) -> None:
    shard = domain.dedup_shard(service, key)
    assert 0 <= shard < 16
    assert shard == domain.dedup_shard(service, key)


@given(
    st.tuples(st.integers(0, 10**13 - 1), st.integers(1, 10**16 - 1)),
    st.tuples(st.integers(0, 10**13 - 1), st.integers(1, 10**16 - 1)),
)
def test_index_members_sort_by_time_then_id(a: tuple[int, int], b: tuple[int, int]) -> None:
    member_a = keys.index_member(a[0], str(a[1]))
    member_b = keys.index_member(b[0], str(b[1]))
    assert (member_a < member_b) == (a < b)
    assert keys.member_id(member_a) == str(a[1])
