"""The scheduling service over real gRPC and real Redis: the same answers as the domain,
validation that names fields, and the rules that keep the directory consistent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.services import client_for, running
from tocsin.client.client import TocsinClient
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.redis import RedisClient
from tocsin.scheduling import domain
from tocsin.scheduling.convert import timestamp, to_domain_schedule
from tocsin.scheduling.server import create_server
from tocsin.v1 import scheduling_pb2 as pb

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def primary() -> pb.Schedule:
    """The "primary" schedule of shared/examples/oncall.yaml."""
    weekdays = [
        pb.WEEKDAY_MONDAY,
        pb.WEEKDAY_TUESDAY,
        pb.WEEKDAY_WEDNESDAY,
        pb.WEEKDAY_THURSDAY,
        pb.WEEKDAY_FRIDAY,
    ]
    restriction = pb.Restriction(days=weekdays, to="17:00")
    setattr(restriction, "from", "09:00")
    return pb.Schedule(
        id="primary",
        name="Payments primary",
        time_zone="America/New_York",
        layers=[
            pb.Layer(
                name="follow-the-week",
                start="2026-11-02T09:00",
                rotation_length="1w",
                user_ids=["alice", "bob", "carol"],
            ),
            pb.Layer(
                name="weekday-days",
                start="2026-11-02T09:00",
                rotation_length="1d",
                user_ids=["dave", "alice"],
                restrictions=[restriction],
            ),
        ],
        overrides=[
            pb.Override(
                id="cover",
                user_id="carol",
                start=timestamp(datetime(2026, 11, 27, 23, 0, tzinfo=UTC)),
                end=timestamp(datetime(2026, 11, 28, 14, 0, tzinfo=UTC)),
            ),
        ],
    )


@pytest.fixture
async def client(redis: RedisClient) -> AsyncIterator[TocsinClient]:
    async with running(create_server, redis, ManualClock(NOW)) as (_, target):
        async with client_for(scheduling=target) as tocsin:
            for user in ("alice", "bob", "carol", "dave"):
                await tocsin.scheduling.CreateUser(
                    pb.CreateUserRequest(
                        user=pb.User(id=user, name=user.title(), time_zone="America/New_York")
                    )
                )
            yield tocsin


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    bad = error_details_pb2.BadRequest()
    status_pb2.Status.FromString(raw).details[0].Unpack(bad)
    return {v.field: v.description for v in bad.field_violations}


async def test_who_is_on_call_and_shifts_agree_with_the_domain(client: TocsinClient) -> None:
    stored = (
        await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    ).schedule
    assert stored.version == 1
    model = to_domain_schedule(primary())
    start = datetime(2026, 11, 20, tzinfo=UTC)
    for hours in range(0, 14 * 24, 5):
        at = start + timedelta(hours=hours)
        reply = await client.scheduling.WhoIsOnCall(
            pb.WhoIsOnCallRequest(schedule_id="primary", at=timestamp(at))
        )
        expected = domain.who_is_on_call(model, at)
        assert (reply.shift.user_id or None) == (expected.user if expected else None), at
    window = pb.ListShiftsRequest(
        schedule_id="primary", start=timestamp(start), end=timestamp(start + timedelta(days=14))
    )
    shifts = (await client.scheduling.ListShifts(window)).shifts
    expected_shifts = domain.final_shifts(model, start, start + timedelta(days=14))
    assert [(s.user_id, s.start.ToDatetime(UTC), s.end.ToDatetime(UTC)) for s in shifts] == [
        (s.user, s.start, s.end) for s in expected_shifts
    ]


async def test_the_example_override_puts_carol_on_call_friday_night(client: TocsinClient) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    friday_night = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)  # 20:00 in New York
    reply = await client.scheduling.WhoIsOnCall(
        pb.WhoIsOnCallRequest(schedule_id="primary", at=timestamp(friday_night))
    )
    assert reply.shift.user_id == "carol"
    assert reply.shift.source == pb.SHIFT_SOURCE_OVERRIDE and reply.shift.source_name == "cover"
    await client.scheduling.DeleteOverride(
        pb.DeleteOverrideRequest(schedule_id="primary", override_id="cover")
    )
    reply = await client.scheduling.WhoIsOnCall(
        pb.WhoIsOnCallRequest(schedule_id="primary", at=timestamp(friday_night))
    )
    assert reply.shift.source == pb.SHIFT_SOURCE_LAYER and reply.shift.user_id != "carol"


async def test_who_is_on_call_defaults_to_the_injected_clock(client: TocsinClient) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    reply = await client.scheduling.WhoIsOnCall(pb.WhoIsOnCallRequest(schedule_id="primary"))
    expected = domain.who_is_on_call(to_domain_schedule(primary()), NOW)
    assert expected is not None and reply.shift.user_id == expected.user


async def test_a_new_override_is_its_own_call(client: TocsinClient) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    tonight = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    created = await client.scheduling.CreateOverride(
        pb.CreateOverrideRequest(
            schedule_id="primary",
            override=pb.Override(
                user_id="dave",
                start=timestamp(tonight),
                end=timestamp(tonight + timedelta(hours=10)),
            ),
        )
    )
    assert created.override.id
    reply = await client.scheduling.WhoIsOnCall(
        pb.WhoIsOnCallRequest(schedule_id="primary", at=timestamp(tonight + timedelta(hours=1)))
    )
    assert reply.shift.user_id == "dave" and reply.shift.source_name == created.override.id


async def test_a_schedule_deleted_and_created_again_answers_as_the_new_one(
    client: TocsinClient,
) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    ask = pb.WhoIsOnCallRequest(schedule_id="primary", at=timestamp(NOW))
    before = await client.scheduling.WhoIsOnCall(ask)  # compiled and kept
    await client.scheduling.DeleteSchedule(pb.DeleteScheduleRequest(id="primary"))
    again = primary()
    del again.overrides[:]
    del again.layers[1:]
    again.layers[0].user_ids[:] = ["dave"]
    created = await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=again))
    assert created.schedule.version == 1  # the same id and version as the one deleted
    after = await client.scheduling.WhoIsOnCall(ask)
    assert before.shift.user_id != "dave"
    assert after.shift.user_id == "dave"


async def test_nobody_on_call_is_an_answer(client: TocsinClient) -> None:
    schedule = primary()
    schedule.id = "later"
    del schedule.overrides[:]
    for layer in schedule.layers:
        layer.start = "2027-01-01T09:00"
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=schedule))
    reply = await client.scheduling.WhoIsOnCall(pb.WhoIsOnCallRequest(schedule_id="later"))
    assert not reply.HasField("shift")


async def test_invalid_schedules_name_every_bad_field(client: TocsinClient) -> None:
    bad = primary()
    bad.time_zone = "Mars/Olympus_Mons"
    bad.layers[0].rotation_length = "0d"
    bad.layers[1].user_ids.append("zed")
    del bad.layers[1].restrictions[0].days[:]
    bad.overrides[0].end.CopyFrom(timestamp(datetime(2026, 11, 27, 22, 0, tzinfo=UTC)))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=bad))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error.value)) >= {
        "schedule.time_zone",
        "schedule.layers[0].rotation_length",
        "schedule.layers[1].user_ids[2]",
        "schedule.layers[1].restrictions[0].days",
        "schedule.overrides[0].end",
    }
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.scheduling.GetSchedule(pb.GetScheduleRequest(id="primary"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # nothing half-written


async def test_empty_rotation_and_bad_user_are_rejected(client: TocsinClient) -> None:
    bad = primary()
    del bad.layers[0].user_ids[:]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=bad))
    assert "schedule.layers[0].user_ids" in violations(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.scheduling.CreateUser(
            pb.CreateUserRequest(user=pb.User(id="Eve!", name="", time_zone="Nowhere/City"))
        )
    assert set(violations(error.value)) == {"user.id", "user.name", "user.time_zone"}


async def test_a_user_on_a_rotation_cannot_be_deleted(client: TocsinClient) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.scheduling.DeleteUser(pb.DeleteUserRequest(id="carol"))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "primary" in (error.value.details() or "")
    await client.scheduling.DeleteSchedule(pb.DeleteScheduleRequest(id="primary"))
    await client.scheduling.DeleteUser(pb.DeleteUserRequest(id="carol"))
    users = (await client.scheduling.ListUsers(pb.ListUsersRequest())).users
    assert [u.id for u in users] == ["alice", "bob", "dave"]


async def test_updates_are_version_checked(client: TocsinClient) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    first = primary()
    first.version = 1
    first.name = "renamed"
    updated = (
        await client.scheduling.UpdateSchedule(pb.UpdateScheduleRequest(schedule=first))
    ).schedule
    assert updated.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.scheduling.UpdateSchedule(pb.UpdateScheduleRequest(schedule=first))
    assert error.value.code() == grpc.StatusCode.ABORTED


async def test_layers_are_added_updated_and_removed(client: TocsinClient) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    layer = pb.Layer(
        name="nights", start="2026-11-02T21:00", rotation_length="12h", user_ids=["bob"]
    )
    after = (
        await client.scheduling.CreateLayer(
            pb.CreateLayerRequest(schedule_id="primary", layer=layer, position=0)
        )
    ).schedule
    assert [la.name for la in after.layers] == ["nights", "follow-the-week", "weekday-days"]
    layer.user_ids.append("zed")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await client.scheduling.UpdateLayer(
            pb.UpdateLayerRequest(schedule_id="primary", layer=layer)
        )
    assert "schedule.layers[0].user_ids[1]" in violations(error.value)
    after = (
        await client.scheduling.DeleteLayer(
            pb.DeleteLayerRequest(schedule_id="primary", layer_name="nights")
        )
    ).schedule
    assert [la.name for la in after.layers] == ["follow-the-week", "weekday-days"]
    assert after.version == 3


async def test_user_shifts_span_schedules(client: TocsinClient) -> None:
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=primary()))
    secondary = pb.Schedule(
        id="secondary",
        name="Secondary",
        time_zone="Europe/London",
        layers=[
            pb.Layer(
                name="twelve-hour",
                start="2026-11-01T08:00",
                rotation_length="12h",
                user_ids=["bob", "dave"],
            )
        ],
    )
    await client.scheduling.CreateSchedule(pb.CreateScheduleRequest(schedule=secondary))
    start = datetime(2026, 11, 23, tzinfo=UTC)
    reply = await client.scheduling.ListUserShifts(
        pb.ListUserShiftsRequest(
            user_id="dave", start=timestamp(start), end=timestamp(start + timedelta(days=7))
        )
    )
    assert {s.schedule_id for s in reply.shifts} == {"primary", "secondary"}
    assert [s.start.ToDatetime() for s in reply.shifts] == sorted(
        s.start.ToDatetime() for s in reply.shifts
    )
