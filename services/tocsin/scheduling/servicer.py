"""SchedulingService: adapts the protobuf API to the store and the shift arithmetic."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc

from tocsin.runtime import channeltargets
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import Conflict, FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.ids import id_violations
from tocsin.runtime.paging import page_size
from tocsin.scheduling import domain, handoff
from tocsin.scheduling.convert import from_timestamp, shift_message
from tocsin.scheduling.handoff_timers import HandoffTimers
from tocsin.scheduling.store import SchedulingStore
from tocsin.v1 import common_pb2, scheduling_pb2, scheduling_pb2_grpc
from tocsin.v1 import scheduling_pb2 as pb

log = logging.getLogger(__name__)

MAX_WINDOW = timedelta(days=400)


_ROLES = (common_pb2.ROLE_ADMIN, common_pb2.ROLE_RESPONDER, common_pb2.ROLE_OBSERVER)


def _validate_user(user: pb.User) -> None:
    """Checks `user`, naming every bad field; an unspecified role becomes responder."""
    violations = id_violations(user.id, "user.id")
    if user.role == common_pb2.ROLE_UNSPECIFIED:
        user.role = common_pb2.ROLE_RESPONDER
    elif user.role not in _ROLES:
        violations.append(
            FieldViolation(
                "user.role", f"unknown role {user.role}; expected admin, responder or observer"
            )
        )
    if not user.name.strip():
        violations.append(FieldViolation("user.name", "must not be empty"))
    if user.time_zone:
        try:
            ZoneInfo(user.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            violations.append(
                FieldViolation("user.time_zone", f"unknown time zone {user.time_zone!r}")
            )
    violations += _notice_violations(user.handoff_notices, "user.handoff_notices")
    if violations:
        raise InvalidArgument(violations)


def _notice_violations(notices: Any, field: str) -> list[FieldViolation]:
    known = ", ".join(handoff.KINDS)
    return [
        FieldViolation(f"{field}[{i}]", f"must be one of {known}, got {kind!r}")
        for i, kind in enumerate(notices)
        if kind not in handoff.KINDS
    ]


def _validate_announce(schedule: pb.Schedule) -> None:
    if schedule.announce_slack_channel:
        schedule.announce_slack_channel = schedule.announce_slack_channel.strip().upper()
        found = channeltargets.violations(
            channeltargets.SLACK_CHANNEL,
            schedule.announce_slack_channel,
            "schedule.announce_slack_channel",
        )
        if found:
            raise InvalidArgument(found)


class SchedulingServicer(scheduling_pb2_grpc.SchedulingServiceServicer):
    def __init__(self, store: SchedulingStore, clock: Clock, audit: AuditLog | None = None) -> None:
        self.store = store
        self.clock = clock
        self.audit = audit
        self.handoffs: HandoffTimers | None = None
        """Re-armed on every schedule change (set by the server)."""

    async def _rearm(self, schedule_id: str) -> None:
        """Re-arm the schedule's hand-off timer after a change that is already stored. If
        the schedule kept changing meanwhile, the newer changes arm it: this change still
        succeeded, so no error is returned for it."""
        if self.handoffs is None:
            return
        try:
            await self.handoffs.rearm(schedule_id)
        except Conflict as error:
            log.warning("%s", error)

    async def _user_or_none(self, user_id: str) -> pb.User | None:
        try:
            return await self.store.get_user(user_id)
        except NotFound:
            return None

    async def _schedule_or_none(self, schedule_id: str) -> pb.Schedule | None:
        try:
            return await self.store.get_schedule(schedule_id)
        except NotFound:
            return None

    async def _record(
        self, action: str, kind: str, object_id: str, before: Any, after: Any
    ) -> None:
        """An audit entry for a change (none if nothing changed); a schedule's version,
        which every write bumps, is no change of its own."""
        if self.audit is None:
            return
        before, after = _unversioned(before), _unversioned(after)
        await self.audit.record(action, kind, object_id, before, after)

    # users

    async def CreateUser(
        self, request: pb.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateUserResponse:
        _validate_user(request.user)
        if not request.validate_only:
            await self.store.create_user(request.user)
            await self._record("user.create", "user", request.user.id, None, request.user)
        return pb.CreateUserResponse(user=request.user)

    async def GetUser(
        self, request: pb.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUserResponse:
        return pb.GetUserResponse(user=await self.store.get_user(request.id))

    async def ListUsers(
        self, request: pb.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUsersResponse:
        size = page_size(request.page_size)
        users = await self.store.list_users(request.page_token, size + 1)
        more = len(users) > size
        users = users[:size]
        return pb.ListUsersResponse(
            users=users, next_page_token=users[-1].id if more and users else ""
        )

    async def UpdateUser(
        self, request: pb.UpdateUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateUserResponse:
        _validate_user(request.user)
        if not request.validate_only:
            before = await self._user_or_none(request.user.id)
            await self.store.update_user(request.user)
            await self._record("user.update", "user", request.user.id, before, request.user)
        return pb.UpdateUserResponse(user=request.user)

    async def SetHandoffNotices(
        self, request: pb.SetHandoffNoticesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetHandoffNoticesResponse:
        violations = _notice_violations(request.notices, "notices")
        if violations:
            raise InvalidArgument(violations)
        before = await self.store.get_user(request.user_id)
        after = pb.User()
        after.CopyFrom(before)
        del after.handoff_notices[:]
        after.handoff_notices.extend(dict.fromkeys(request.notices))
        await self.store.update_user(after)
        await self._record("user.update", "user", after.id, before, after)
        return pb.SetHandoffNoticesResponse(user=after)

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserResponse:
        before = await self._user_or_none(request.id)
        await self.store.delete_user(request.id)
        await self._record("user.delete", "user", request.id, before, None)
        return pb.DeleteUserResponse()

    # schedules

    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateScheduleResponse:
        schedule = _with_override_ids(request.schedule)
        _require_id(schedule.id, "schedule.id")
        _validate_announce(schedule)
        await self.store.validate(schedule, assume_users=request.validate_only)
        if request.validate_only:
            return pb.CreateScheduleResponse(schedule=schedule)
        created = await self.store.create_schedule(schedule)
        await self._record("schedule.create", "schedule", created.id, None, created)
        await self._rearm(created.id)
        return pb.CreateScheduleResponse(schedule=created)

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetScheduleResponse:
        return pb.GetScheduleResponse(schedule=await self.store.get_schedule(request.id))

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSchedulesResponse:
        size = page_size(request.page_size)
        schedules = await self.store.list_schedules(request.page_token, size + 1)
        more = len(schedules) > size
        schedules = schedules[:size]
        token = schedules[-1].id if more and schedules else ""
        return pb.ListSchedulesResponse(schedules=schedules, next_page_token=token)

    async def UpdateSchedule(
        self, request: pb.UpdateScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateScheduleResponse:
        schedule = _with_override_ids(request.schedule)
        _validate_announce(schedule)
        await self.store.validate(schedule, assume_users=request.validate_only)
        if request.validate_only:
            return pb.UpdateScheduleResponse(schedule=schedule)
        before = await self._schedule_or_none(schedule.id)
        stored = await self.store.replace_schedule(schedule, request.schedule.version)
        await self._record("schedule.update", "schedule", stored.id, before, stored)
        await self._rearm(stored.id)
        return pb.UpdateScheduleResponse(schedule=stored)

    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteScheduleResponse:
        before = await self._schedule_or_none(request.id)
        await self.store.delete_schedule(request.id)
        await self._record("schedule.delete", "schedule", request.id, before, None)
        await self._rearm(request.id)
        return pb.DeleteScheduleResponse()

    # layers

    async def CreateLayer(
        self, request: pb.CreateLayerRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateLayerResponse:
        def add(schedule: pb.Schedule) -> None:
            layers = list(schedule.layers)
            position = request.position if request.HasField("position") else len(layers)
            if not 0 <= position <= len(layers):
                raise InvalidArgument.one("position", f"must be between 0 and {len(layers)}")
            layers.insert(position, request.layer)
            del schedule.layers[:]
            schedule.layers.extend(layers)

        return pb.CreateLayerResponse(
            schedule=await self._modify("layer.create", request.schedule_id, add)
        )

    async def UpdateLayer(
        self, request: pb.UpdateLayerRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateLayerResponse:
        def update(schedule: pb.Schedule) -> None:
            schedule.layers[_layer_index(schedule, request.layer.name)].CopyFrom(request.layer)

        return pb.UpdateLayerResponse(
            schedule=await self._modify("layer.update", request.schedule_id, update)
        )

    async def DeleteLayer(
        self, request: pb.DeleteLayerRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteLayerResponse:
        def delete(schedule: pb.Schedule) -> None:
            del schedule.layers[_layer_index(schedule, request.layer_name)]

        return pb.DeleteLayerResponse(
            schedule=await self._modify("layer.delete", request.schedule_id, delete)
        )

    # overrides

    async def CreateOverride(
        self, request: pb.CreateOverrideRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOverrideResponse:
        override = pb.Override()
        override.CopyFrom(request.override)
        override.id = override.id or uuid.uuid4().hex[:12]

        def add(schedule: pb.Schedule) -> None:
            if any(o.id == override.id for o in schedule.overrides):
                raise InvalidArgument.one("override.id", f"{override.id!r} is already used")
            schedule.overrides.append(override)

        await self._modify("override.create", request.schedule_id, add)
        return pb.CreateOverrideResponse(override=override)

    async def DeleteOverride(
        self, request: pb.DeleteOverrideRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteOverrideResponse:
        def delete(schedule: pb.Schedule) -> None:
            for i, override in enumerate(schedule.overrides):
                if override.id == request.override_id:
                    del schedule.overrides[i]
                    return
            raise NotFound(f"override {request.override_id!r} not found")

        await self._modify("override.delete", request.schedule_id, delete)
        return pb.DeleteOverrideResponse()

    async def _modify(
        self, action: str, schedule_id: str, change: Callable[[pb.Schedule], None]
    ) -> pb.Schedule:
        before = await self._schedule_or_none(schedule_id)
        after = await self.store.modify_schedule(schedule_id, change)
        await self._record(action, "schedule", schedule_id, before, after)
        await self._rearm(schedule_id)
        return after

    # questions

    async def WhoIsOnCall(
        self, request: pb.WhoIsOnCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.WhoIsOnCallResponse:
        schedule = await self.store.compiled(request.schedule_id)
        at = from_timestamp(request.at) if request.HasField("at") else self.clock.now()
        on_call = domain.who_is_on_call(schedule, at)
        if on_call is None:
            return pb.WhoIsOnCallResponse()
        shift = domain.shift_at_fast(schedule, at)
        assert shift is not None
        message = shift_message(schedule.id, shift)
        message.source = (
            pb.SHIFT_SOURCE_LAYER if on_call.source.kind == "layer" else pb.SHIFT_SOURCE_OVERRIDE
        )
        message.source_name = on_call.source.name
        return pb.WhoIsOnCallResponse(shift=message)

    async def ListShifts(
        self, request: pb.ListShiftsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListShiftsResponse:
        start, end = _window(request)
        schedule = await self.store.compiled(request.schedule_id)
        shifts = domain.final_shifts(schedule, start, end)
        return pb.ListShiftsResponse(shifts=[shift_message(schedule.id, s) for s in shifts])

    async def ListUserShifts(
        self, request: pb.ListUserShiftsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUserShiftsResponse:
        start, end = _window(request)
        await self.store.get_user(request.user_id)
        found = domain.user_shifts(await self.store.all_compiled(), request.user_id, start, end)
        return pb.ListUserShiftsResponse(
            shifts=[shift_message(s.schedule_id, s.shift) for s in found]
        )


def _window(request: pb.ListShiftsRequest | pb.ListUserShiftsRequest) -> tuple[datetime, datetime]:
    violations = [
        FieldViolation(field, "is required")
        for field in ("start", "end")
        if not request.HasField(field)
    ]
    if violations:
        raise InvalidArgument(violations)
    start, end = from_timestamp(request.start), from_timestamp(request.end)
    if end <= start:
        raise InvalidArgument.one("end", "must be after start")
    if end - start > MAX_WINDOW:
        raise InvalidArgument.one("end", f"the window may span at most {MAX_WINDOW.days} days")
    return start, end


def _unversioned(message: Any) -> Any:
    if isinstance(message, pb.Schedule):
        copy = pb.Schedule()
        copy.CopyFrom(message)
        copy.version = 0
        return copy
    return message


def _layer_index(schedule: pb.Schedule, name: str) -> int:
    for i, layer in enumerate(schedule.layers):
        if layer.name == name:
            return i
    raise NotFound(f"schedule {schedule.id!r} has no layer {name!r}")


def _require_id(value: str, field: str) -> None:
    violations = id_violations(value, field)
    if violations:
        raise InvalidArgument(violations)


def _with_override_ids(schedule: pb.Schedule) -> pb.Schedule:
    """A copy in which every override has an id (generated where the caller gave none)."""
    copy = scheduling_pb2.Schedule()
    copy.CopyFrom(schedule)
    for override in copy.overrides:
        override.id = override.id or uuid.uuid4().hex[:12]
    return copy
