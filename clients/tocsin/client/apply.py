"""`tocsin apply`: make the running system match a configuration file.

Each object is compared with what runs and created or updated only when it differs, so a
second apply changes nothing and says so. Objects that run but are not in the file are
left alone (apply never deletes). Order follows the references: users, their contact
methods and rules, schedules, escalation policies, services.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import grpc
import phonenumbers
from google.protobuf.message import Message

from tocsin.client.client import TocsinClient
from tocsin.client.configfile import DesiredState, UserConfig
from tocsin.v1 import escalation_pb2, incidents_pb2, notification_pb2, scheduling_pb2

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Change:
    action: str  # "create" | "update"
    kind: str  # "user", "contact method", ...
    id: str

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.id}"


async def _existing(call: Callable[[], Awaitable[M]]) -> M | None:
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def _id_of(message: Message) -> str:
    """The `id` field every configuration object has."""
    value = getattr(message, "id")  # noqa: B009 - Message has no typed `id`
    return str(value)


def _same(desired: Message, current: Message, ignore: tuple[str, ...] = ("version",)) -> bool:
    a, b = type(desired)(), type(current)()
    a.CopyFrom(desired)
    b.CopyFrom(current)
    for name in ignore:
        a.ClearField(name)
        b.ClearField(name)
    return a == b


def _keep_override_ids(
    desired: scheduling_pb2.Schedule, current: scheduling_pb2.Schedule
) -> scheduling_pb2.Schedule:
    """The same override (user, start, end) keeps the id it runs under, whatever id the
    file would give it (e.g. one made with `tocsin override`, then exported)."""
    running = {(o.user_id, o.start.ToSeconds(), o.end.ToSeconds()): o.id for o in current.overrides}
    copy = scheduling_pb2.Schedule()
    copy.CopyFrom(desired)
    for override in copy.overrides:
        key = (override.user_id, override.start.ToSeconds(), override.end.ToSeconds())
        override.id = running.get(key, override.id)
    return copy


def _e164(number: str) -> str:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


class Applier:
    def __init__(self, client: TocsinClient, dry_run: bool) -> None:
        self.client = client
        self.dry_run = dry_run
        self.changes: list[Change] = []

    async def apply(self, state: DesiredState) -> list[Change]:
        for user in state.users:
            await self._user(user)
        for schedule in state.schedules:
            await self._schedule(schedule)
        for policy in state.policies:
            await self._policy(policy)
        for service in state.services:
            await self._service(service)
        return self.changes

    async def _record(
        self, action: str, kind: str, id_: str, call: Callable[[], Awaitable[object]]
    ) -> None:
        self.changes.append(Change(action, kind, id_))
        if not self.dry_run:
            await call()

    async def _user(self, config: UserConfig) -> None:
        s = self.client.scheduling
        user = config.user
        reply = await _existing(lambda: s.GetUser(scheduling_pb2.GetUserRequest(id=user.id)))
        current = reply.user if reply else None
        await self._converge(
            "user",
            user,
            current,
            lambda: s.CreateUser(scheduling_pb2.CreateUserRequest(user=user)),
            lambda: s.UpdateUser(scheduling_pb2.UpdateUserRequest(user=user)),
            ignore=(),
        )
        await self._notification_settings(config, user_is_new=current is None)

    async def _notification_settings(self, config: UserConfig, user_is_new: bool) -> None:
        n = self.client.notification
        user_id = config.user.id
        if user_is_new and self.dry_run:
            methods: dict[str, notification_pb2.ContactMethod] = {}
            rules: list[notification_pb2.NotificationRule] = []
        else:
            settings = await n.GetUserNotificationSettings(
                notification_pb2.GetUserNotificationSettingsRequest(user_id=user_id)
            )
            methods = {cm.id: cm for cm in settings.contact_methods}
            rules = list(settings.rules)
        for method in config.contact_methods:
            desired = notification_pb2.ContactMethod()
            desired.CopyFrom(method)
            desired.address = _e164(method.address)
            current = methods.get(method.id)
            if current is None:
                await self._record(
                    "create",
                    "contact method",
                    method.id,
                    partial(
                        n.CreateContactMethod,
                        notification_pb2.CreateContactMethodRequest(contact_method=desired),
                    ),
                )
            elif not _same(desired, current, ("disabled",)):
                await self._record(
                    "update",
                    "contact method",
                    method.id,
                    partial(
                        n.UpdateContactMethod,
                        notification_pb2.UpdateContactMethodRequest(contact_method=desired),
                    ),
                )
        desired_rules = sorted(config.rules, key=lambda r: (r.delay.seconds, r.contact_method_id))
        current_rules = sorted(rules, key=lambda r: (r.delay.seconds, r.contact_method_id))
        if desired_rules != current_rules:
            await self._record(
                "update" if rules else "create",
                "notification rules",
                user_id,
                lambda: n.SetNotificationRules(
                    notification_pb2.SetNotificationRulesRequest(
                        user_id=user_id, rules=config.rules
                    )
                ),
            )

    async def _converge(
        self,
        kind: str,
        desired: M,
        current: M | None,
        create: Callable[[], Awaitable[object]],
        update: Callable[[], Awaitable[object]],
        ignore: tuple[str, ...] = ("version",),
    ) -> None:
        """Create what is missing, update what differs (ignoring `ignore`), else nothing."""
        object_id = _id_of(desired)
        if current is None:
            await self._record("create", kind, object_id, create)
        elif not _same(desired, current, ignore):
            await self._record("update", kind, object_id, update)

    async def _schedule(self, schedule: scheduling_pb2.Schedule) -> None:
        s = self.client.scheduling
        reply = await _existing(
            lambda: s.GetSchedule(scheduling_pb2.GetScheduleRequest(id=schedule.id))
        )
        current = reply.schedule if reply else None
        if current is not None:
            schedule = _keep_override_ids(schedule, current)
        await self._converge(
            "schedule",
            schedule,
            current,
            lambda: s.CreateSchedule(scheduling_pb2.CreateScheduleRequest(schedule=schedule)),
            lambda: s.UpdateSchedule(scheduling_pb2.UpdateScheduleRequest(schedule=schedule)),
        )

    async def _policy(self, policy: escalation_pb2.EscalationPolicy) -> None:
        e = self.client.escalation
        reply = await _existing(lambda: e.GetPolicy(escalation_pb2.GetPolicyRequest(id=policy.id)))
        await self._converge(
            "escalation policy",
            policy,
            reply.policy if reply else None,
            lambda: e.CreatePolicy(escalation_pb2.CreatePolicyRequest(policy=policy)),
            lambda: e.UpdatePolicy(escalation_pb2.UpdatePolicyRequest(policy=policy)),
        )

    async def _service(self, service: incidents_pb2.Service) -> None:
        i = self.client.incidents
        reply = await _existing(
            lambda: i.GetService(incidents_pb2.GetServiceRequest(id=service.id))
        )
        current = reply.service if reply else None
        desired = incidents_pb2.Service()
        desired.CopyFrom(service)
        if current is not None and not desired.integration_key:
            desired.integration_key = current.integration_key
        await self._converge(
            "service",
            desired,
            current,
            lambda: i.CreateService(incidents_pb2.CreateServiceRequest(service=desired)),
            lambda: i.UpdateService(incidents_pb2.UpdateServiceRequest(service=desired)),
            ignore=(),
        )
