"""`tocsin apply`: make the running system match a configuration file.

Each object is compared with what runs and created or updated only when it differs, so a
second apply changes nothing and says so. Objects that run but are not in the file are
left alone (apply never deletes; a user whose entry has no `notification_rules` keeps the
rules it has). Order follows the references: users, their contact methods and rules,
schedules, escalation policies, services, event rules, heartbeats, webhooks and status
subscriptions.

Nothing is half-applied for a reason the servers could have told in advance: apply first
plans every change (reads only), then sends each one with `validate_only`, so every
server runs its own checks (phone numbers, time zones, rotations, policies, integration
keys...) and writes nothing; only when all of them pass does it write, in order. A dry run
is the same without the last step, so it refuses exactly what the real apply would. Should
a write still fail (a server down, a concurrent edit), the error says which changes were
applied and which were not. Every problem is reported as `file:line: field: why`.

The plan also says who could not be reached once it is applied (`reachability`): a user
with no usable contact method or rule, and schedules, policy levels and services left
with nobody reachable. Those are warnings: the configuration is applied all the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import grpc
import phonenumbers
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from tocsin.client.client import TocsinClient
from tocsin.client.configfile import DesiredState, UserConfig
from tocsin.client.webhook_config import same_webhook
from tocsin.v1 import (
    escalation_pb2,
    incidents_pb2,
    notification_pb2,
    routing_pb2,
    scheduling_pb2,
    urgency_pb2,
    webhooks_pb2,
)

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Change:
    action: str  # "create" | "update"
    kind: str  # "user", "contact method", ...
    id: str

    def __str__(self) -> str:
        return f"{self.action} {self.kind} {self.id}"


@dataclass(frozen=True)
class _Step:
    """One planned write: `send(validate_only)` makes the call."""

    change: Change
    path: str  # where the object is in the file, e.g. `users[0].contact_methods[1]`
    field_prefix: str  # the request field the object is in, e.g. `contact_method`
    send: Callable[[bool], Awaitable[object]]


class ApplyError(Exception):
    """Apply stopped: `problems` as `file:line: field: why`; `applied` were written (in
    order), `not_applied` were not."""

    def __init__(
        self, problems: list[str], applied: list[Change], not_applied: list[Change]
    ) -> None:
        self.problems = problems
        self.applied = applied
        self.not_applied = not_applied
        super().__init__("\n".join(problems))


@dataclass
class ApplyResult:
    changes: list[Change]
    warnings: list[str] = field(default_factory=list)


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


def _rule_order(rule: notification_pb2.NotificationRule) -> tuple[int, str, int]:
    """Rules compared as a set: by delay, contact method and urgency."""
    return (rule.delay.seconds, rule.contact_method_id, rule.urgency)


def _e164(number: str) -> str:
    """The number as notification stores it, so an unchanged one compares equal (the
    server validates it; an unparseable one is sent as written and refused there)."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


# Request field names -> the file's names, where they differ.
_FILE_NAMES = (
    ("contact_method_id", "contact"),
    ("rules", "notification_rules"),
    ("rotation_length", "rotation.length"),
    ("user_ids", "users"),
    ("escalation_policy_id", "escalation_policy"),
    ("service_ids", "services"),
    ("user_id", "user"),
    ("schedule_id", "schedule"),
    ("delay", "after"),
)


def _file_field(step: _Step, request_field: str) -> str:
    """`contact_method.address` of a contact method's request -> its path in the file."""
    if step.field_prefix == "rule_set":
        return _rule_field(step.path, request_field)
    rest = request_field
    if step.field_prefix and (rest == step.field_prefix or rest.startswith(step.field_prefix)):
        rest = rest[len(step.field_prefix) :].lstrip(".")
    if not rest:
        return step.path
    parts = []
    for part in rest.split("."):
        name, bracket, index = part.partition("[")
        for request_name, file_name in _FILE_NAMES:
            if name == request_name and not (
                request_name == "delay" and step.change.kind != "notification rules"
            ):
                name = file_name
                break
        parts.append(name + bracket + index)
    return f"{step.path}.{'.'.join(parts)}"


_RULE_NAMES = {
    "conditions": "when",
    "route_to_service_id": "route_to",
    "dedup_key_template": "dedup_key",
}


def _rule_field(path: str, request_field: str) -> str:
    """`rule_set.rules[2].conditions[0].field` -> `<path>[2].when[0].field`; an action's
    field is the rule's own (`actions.severity` -> `<path>[i].severity`)."""
    rest = request_field.removeprefix("rule_set").lstrip(".")
    if not rest.startswith("rules["):
        return path
    rest = rest.removeprefix("rules")
    parts = []
    for part in rest.split("."):
        name, bracket, index = part.partition("[")
        if name == "actions":
            continue
        parts.append(_RULE_NAMES.get(name, name) + bracket + index)
    if parts and parts[-1] == "value":
        parts.pop()  # the operator's key holds the value
    return path + ".".join(parts).replace(".[", "[")


def _problems(state: DesiredState, step: _Step, error: grpc.aio.AioRpcError) -> list[str]:
    """The server's answer as `file:line: field: why` lines (one per field violation)."""
    trailers = dict(error.trailing_metadata() or ())
    raw = trailers.get("grpc-status-details-bin")
    lines: list[str] = []
    if isinstance(raw, bytes):
        for detail in status_pb2.Status.FromString(raw).details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                lines += [
                    f"{state.where(_file_field(step, v.field))}: {v.description}"
                    for v in bad.field_violations
                ]
    if not lines:
        lines.append(
            f"{state.where(step.path)}: {step.change} refused: "
            f"{error.code().name}: {error.details()}"
        )
    return lines


class Applier:
    def __init__(self, client: TocsinClient, dry_run: bool) -> None:
        self.client = client
        self.dry_run = dry_run
        self.steps: list[_Step] = []
        self.settings: dict[str, notification_pb2.GetUserNotificationSettingsResponse] = {}
        self._webhooks: dict[str, webhooks_pb2.Webhook] | None = None

    @property
    def changes(self) -> list[Change]:
        return [step.change for step in self.steps]

    async def apply(self, state: DesiredState) -> ApplyResult:
        """Plan, validate everything, then (unless a dry run) write. ApplyError if the
        servers refuse anything (nothing written) or a write fails (what was, was not)."""
        for i, user in enumerate(state.users):
            await self._user(user, f"users[{i}]")
        for i, schedule in enumerate(state.schedules):
            await self._schedule(schedule, f"schedules[{i}]")
        for i, policy in enumerate(state.policies):
            await self._policy(policy, f"escalation_policies[{i}]")
        for i, service in enumerate(state.services):
            await self._service(service, f"services[{i}]")
        for rule_set, path in state.rule_sets:
            await self._event_rules(rule_set, path)
        for i, monitor in enumerate(state.heartbeats):
            await self._heartbeat(monitor, f"heartbeats[{i}]")
        if state.maintenance_windows:
            await self._maintenance_windows(state.maintenance_windows)
        for i, hook in enumerate(state.webhooks):
            await self._webhook(hook, f"webhooks[{i}]")
        for i, sub in enumerate(state.status_subscriptions):
            await self._status_subscription(sub, f"status_subscriptions[{i}]")
        problems: list[str] = []
        for step in self.steps:
            try:
                await step.send(True)
            except grpc.aio.AioRpcError as error:
                if error.code() not in _REFUSALS:
                    raise
                problems += _problems(state, step, error)
        if problems:
            raise ApplyError(problems, [], self.changes)
        result = ApplyResult(self.changes, reachability(state, self.settings))
        if self.dry_run:
            return result
        for done, step in enumerate(self.steps):
            try:
                await step.send(False)
            except grpc.aio.AioRpcError as error:
                raise ApplyError(
                    _problems(state, step, error), self.changes[:done], self.changes[done:]
                ) from None
        return result

    def _plan(
        self,
        action: str,
        kind: str,
        id_: str,
        path: str,
        field_prefix: str,
        send: Callable[[bool], Awaitable[object]],
    ) -> None:
        self.steps.append(_Step(Change(action, kind, id_), path, field_prefix, send))

    async def _user(self, config: UserConfig, path: str) -> None:
        s = self.client.scheduling
        user = config.user
        reply = await _existing(lambda: s.GetUser(scheduling_pb2.GetUserRequest(id=user.id)))
        current = reply.user if reply else None
        if current is not None and not config.handoff_given:
            # A user's own choice (SetHandoffNotices) stays unless the file names one.
            del user.handoff_notices[:]
            user.handoff_notices.extend(current.handoff_notices)
        if current is None:
            self._plan(
                "create",
                "user",
                user.id,
                path,
                "user",
                lambda check: s.CreateUser(
                    scheduling_pb2.CreateUserRequest(user=user, validate_only=check)
                ),
            )
        elif not _same(user, current, ()):
            self._plan(
                "update",
                "user",
                user.id,
                path,
                "user",
                lambda check: s.UpdateUser(
                    scheduling_pb2.UpdateUserRequest(user=user, validate_only=check)
                ),
            )
        await self._notification_settings(config, path, user_is_new=current is None)

    async def _notification_settings(
        self, config: UserConfig, path: str, user_is_new: bool
    ) -> None:
        n = self.client.notification
        user_id = config.user.id
        settings = notification_pb2.GetUserNotificationSettingsResponse()
        if not user_is_new:
            settings = await n.GetUserNotificationSettings(
                notification_pb2.GetUserNotificationSettingsRequest(user_id=user_id)
            )
        self.settings[user_id] = settings
        methods = {cm.id: cm for cm in settings.contact_methods}
        for j, method in enumerate(config.contact_methods):
            desired = notification_pb2.ContactMethod()
            desired.CopyFrom(method)
            desired.address = _e164(method.address)
            current = methods.get(method.id)
            if current is None:
                create = notification_pb2.CreateContactMethodRequest(contact_method=desired)
                self._plan(
                    "create",
                    "contact method",
                    method.id,
                    f"{path}.contact_methods[{j}]",
                    "contact_method",
                    partial(_with_check, n.CreateContactMethod, create),
                )
            elif not _same(desired, current, ("disabled",)):
                update = notification_pb2.UpdateContactMethodRequest(contact_method=desired)
                self._plan(
                    "update",
                    "contact method",
                    method.id,
                    f"{path}.contact_methods[{j}]",
                    "contact_method",
                    partial(_with_check, n.UpdateContactMethod, update),
                )
        if not config.rules_given:
            return
        desired_rules = sorted(config.rules, key=_rule_order)
        current_rules = sorted(settings.rules, key=_rule_order)
        if desired_rules != current_rules:
            request = notification_pb2.SetNotificationRulesRequest(
                user_id=user_id, rules=config.rules
            )
            self._plan(
                "update" if settings.rules else "create",
                "notification rules",
                user_id,
                path,
                "",
                partial(_with_check, n.SetNotificationRules, request),
            )

    async def _schedule(self, schedule: scheduling_pb2.Schedule, path: str) -> None:
        s = self.client.scheduling
        reply = await _existing(
            lambda: s.GetSchedule(scheduling_pb2.GetScheduleRequest(id=schedule.id))
        )
        current = reply.schedule if reply else None
        if current is not None:
            schedule = _keep_override_ids(schedule, current)
        if current is None:
            self._plan(
                "create",
                "schedule",
                schedule.id,
                path,
                "schedule",
                lambda check: s.CreateSchedule(
                    scheduling_pb2.CreateScheduleRequest(schedule=schedule, validate_only=check)
                ),
            )
        elif not _same(schedule, current):
            self._plan(
                "update",
                "schedule",
                schedule.id,
                path,
                "schedule",
                lambda check: s.UpdateSchedule(
                    scheduling_pb2.UpdateScheduleRequest(schedule=schedule, validate_only=check)
                ),
            )

    async def _policy(self, policy: escalation_pb2.EscalationPolicy, path: str) -> None:
        e = self.client.escalation
        reply = await _existing(lambda: e.GetPolicy(escalation_pb2.GetPolicyRequest(id=policy.id)))
        current = reply.policy if reply else None
        if current is None:
            self._plan(
                "create",
                "escalation policy",
                policy.id,
                path,
                "policy",
                lambda check: e.CreatePolicy(
                    escalation_pb2.CreatePolicyRequest(policy=policy, validate_only=check)
                ),
            )
        elif not _same(policy, current):
            self._plan(
                "update",
                "escalation policy",
                policy.id,
                path,
                "policy",
                lambda check: e.UpdatePolicy(
                    escalation_pb2.UpdatePolicyRequest(policy=policy, validate_only=check)
                ),
            )

    async def _service(self, service: incidents_pb2.Service, path: str) -> None:
        i = self.client.incidents
        reply = await _existing(
            lambda: i.GetService(incidents_pb2.GetServiceRequest(id=service.id))
        )
        current = reply.service if reply else None
        desired = incidents_pb2.Service()
        desired.CopyFrom(service)
        if current is not None and not desired.integration_key:
            desired.integration_key = current.integration_key
        if current is not None and not desired.name:
            desired.name = current.name  # the server names a service by its id
        if current is None:
            self._plan(
                "create",
                "service",
                _id_of(desired),
                path,
                "service",
                lambda check: i.CreateService(
                    incidents_pb2.CreateServiceRequest(service=desired, validate_only=check)
                ),
            )
        elif not _same(desired, current, ()):
            self._plan(
                "update",
                "service",
                _id_of(desired),
                path,
                "service",
                lambda check: i.UpdateService(
                    incidents_pb2.UpdateServiceRequest(service=desired, validate_only=check)
                ),
            )

    async def _webhook(self, hook: webhooks_pb2.Webhook, path: str) -> None:
        w = self.client.webhooks
        if self._webhooks is None:
            reply = await w.ListWebhooks(webhooks_pb2.ListWebhooksRequest())
            self._webhooks = {h.id: h for h in reply.webhooks}
        current = self._webhooks.get(hook.id)
        if current is not None and same_webhook(hook, current):
            return
        self._plan(
            "create" if current is None else "update",
            "webhook",
            hook.id,
            path,
            "webhook",
            lambda check: w.PutWebhook(
                webhooks_pb2.PutWebhookRequest(webhook=hook, validate_only=check)
            ),
        )

    async def _status_subscription(self, sub: webhooks_pb2.Subscription, path: str) -> None:
        w = self.client.webhooks
        reply = await w.ListSubscriptions(
            webhooks_pb2.ListSubscriptionsRequest(service_id=sub.service_id)
        )
        current = next((s for s in reply.subscriptions if s.id == sub.id), None)
        if current is not None and current == sub:
            return
        self._plan(
            "create" if current is None else "update",
            "status subscription",
            sub.id,
            path,
            "subscription",
            lambda check: w.Subscribe(
                webhooks_pb2.SubscribeRequest(subscription=sub, validate_only=check)
            ),
        )

    async def _event_rules(self, rule_set: routing_pb2.EventRuleSet, path: str) -> None:
        i = self.client.incidents
        reply = await _existing(
            lambda: i.GetEventRules(
                routing_pb2.GetEventRulesRequest(service_id=rule_set.service_id)
            )
        )
        current = reply.rule_set if reply else None
        if current is not None and _same(rule_set, current):
            return
        self._plan(
            "set",
            "event rules",
            rule_set.service_id or "global",
            path,
            "rule_set",
            lambda check: i.SetEventRules(
                routing_pb2.SetEventRulesRequest(rule_set=rule_set, validate_only=check)
            ),
        )

    async def _heartbeat(self, monitor: routing_pb2.HeartbeatMonitor, path: str) -> None:
        i = self.client.incidents
        reply = await _existing(
            lambda: i.GetHeartbeatMonitor(routing_pb2.GetHeartbeatMonitorRequest(id=monitor.id))
        )
        current = reply.monitor if reply else None
        desired = routing_pb2.HeartbeatMonitor()
        desired.CopyFrom(monitor)
        desired.name = desired.name or desired.id
        if current is None:
            self._plan(
                "create",
                "heartbeat monitor",
                monitor.id,
                path,
                "monitor",
                lambda check: i.CreateHeartbeatMonitor(
                    routing_pb2.CreateHeartbeatMonitorRequest(monitor=desired, validate_only=check)
                ),
            )
            return
        if not desired.token:
            desired.token = current.token  # the file keeps no secret: the running one stays
        if not _same(desired, current, ("last_ping_at", "deadline", "missed")):
            self._plan(
                "update",
                "heartbeat monitor",
                monitor.id,
                path,
                "monitor",
                lambda check: i.UpdateHeartbeatMonitor(
                    routing_pb2.UpdateHeartbeatMonitorRequest(monitor=desired, validate_only=check)
                ),
            )

    async def _maintenance_windows(self, windows: list[urgency_pb2.MaintenanceWindow]) -> None:
        i = self.client.incidents
        listed = await i.ListMaintenanceWindows(
            urgency_pb2.ListMaintenanceWindowsRequest(include_past=True)
        )
        running = {w.id: w for w in listed.windows}
        state = ("alerts_recorded", "active", "next_start", "next_end", "ended_at")
        for k, window in enumerate(windows):
            path = f"maintenance_windows[{k}]"
            current = running.get(window.id)
            desired = urgency_pb2.MaintenanceWindow()
            desired.CopyFrom(window)
            if current is None:
                self._plan(
                    "create",
                    "maintenance window",
                    window.id,
                    path,
                    "window",
                    partial(_maintenance_call, i.CreateMaintenanceWindow, desired, create=True),
                )
            elif not _same(desired, current, state):
                self._plan(
                    "update",
                    "maintenance window",
                    window.id,
                    path,
                    "window",
                    partial(_maintenance_call, i.UpdateMaintenanceWindow, desired, create=False),
                )


def _maintenance_call(
    call: Callable[[Any], Awaitable[Message]],
    window: urgency_pb2.MaintenanceWindow,
    check: bool,
    *,
    create: bool,
) -> Awaitable[Message]:
    if create:
        return call(urgency_pb2.CreateMaintenanceWindowRequest(window=window, validate_only=check))
    return call(urgency_pb2.UpdateMaintenanceWindowRequest(window=window, validate_only=check))


# Answers that mean "this request is wrong", reported with the file's lines. Anything else
# (UNAVAILABLE, UNAUTHENTICATED, ...) is not about the file and is raised as it is.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


R = TypeVar("R", bound=Message)


def _with_check(
    call: Callable[[R], Awaitable[object]], request: R, check: bool
) -> Awaitable[object]:
    """`call(request)` with its `validate_only` set to `check` (on a copy)."""
    copy = type(request)()
    copy.CopyFrom(request)
    setattr(copy, "validate_only", check)  # noqa: B010 - every request here has the field
    return call(copy)


def unpageable_reason(
    settings: notification_pb2.GetUserNotificationSettingsResponse,
) -> str | None:
    """Why a user with these settings cannot be paged, or None if a rule can reach them."""
    methods = {m.id: m for m in settings.contact_methods}
    if not methods:
        return "has no contact method"
    if not settings.rules:
        return "has no notification rule"
    if all(
        r.contact_method_id not in methods or methods[r.contact_method_id].disabled
        for r in settings.rules
    ):
        return "every contact method its rules use is disabled (the number replied STOP)"
    return None


def reachability(
    state: DesiredState,
    running: dict[str, notification_pb2.GetUserNotificationSettingsResponse],
) -> list[str]:
    """Warnings, as `file:line: warning: field: why`, for what the applied configuration
    leaves unable to page anyone: users, schedules, policy levels, services."""
    warnings: list[str] = []

    def warn(path: str, message: str) -> None:
        warnings.append(f"{state.location(path)}: warning: {path}: {message}")

    why_not: dict[str, str] = {}  # user id -> why they cannot be paged
    for i, config in enumerate(state.users):
        current = running.get(
            config.user.id, notification_pb2.GetUserNotificationSettingsResponse()
        )
        methods = {m.id: m for m in current.contact_methods}
        for method in config.contact_methods:
            kept = methods.get(method.id)
            copy = notification_pb2.ContactMethod()
            copy.CopyFrom(method)
            copy.disabled = bool(kept and kept.disabled and kept.address == _e164(method.address))
            methods[method.id] = copy
        merged = notification_pb2.GetUserNotificationSettingsResponse(
            contact_methods=list(methods.values()),
            rules=config.rules if config.rules_given else list(current.rules),
        )
        reason = unpageable_reason(merged)
        if reason is None:
            continue
        why_not[config.user.id] = reason
        warn(f"users[{i}]", f"{config.user.id} cannot be paged: {reason}")

    def nobody(users: set[str]) -> bool:
        return users <= why_not.keys()

    unreachable_schedules: set[str] = set()
    for i, schedule in enumerate(state.schedules):
        users = {u for layer in schedule.layers for u in layer.user_ids}
        users |= {o.user_id for o in schedule.overrides}
        if nobody(users):
            unreachable_schedules.add(schedule.id)
            warn(
                f"schedules[{i}]",
                f"nobody on {schedule.id} can be paged ({', '.join(sorted(users))})"
                if users
                else f"{schedule.id} has nobody on it",
            )

    policies_reaching: dict[str, bool] = {}
    for i, policy in enumerate(state.policies):
        reaching = False
        for j, level in enumerate(policy.levels):
            targets = [t.user_id or t.schedule_id for t in level.targets]
            if all(
                (t.user_id and t.user_id in why_not)
                or (t.schedule_id and t.schedule_id in unreachable_schedules)
                for t in level.targets
            ):
                warn(
                    f"escalation_policies[{i}].levels[{j}]",
                    f"no target can be paged ({', '.join(targets) or 'none'}): "
                    "the level moves on to the next at once",
                )
            else:
                reaching = True
        policies_reaching[policy.id] = reaching
    for i, service in enumerate(state.services):
        if policies_reaching.get(service.escalation_policy_id) is False:
            warn(
                f"services[{i}]",
                f"no level of policy {service.escalation_policy_id} can page anyone: "
                f"incidents on {service.id} would page nobody",
            )
    return warnings
