"""`tocsin export`: the running configuration as a YAML document that `tocsin apply`
accepts (applying it back changes nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import yaml
from google.protobuf.duration_pb2 import Duration

from tocsin.client.client import TocsinClient
from tocsin.client.configfile import ROLES
from tocsin.client.contact_types import CONTACT_TYPE_NAMES
from tocsin.v1 import escalation_pb2, incidents_pb2, notification_pb2, scheduling_pb2

ROLE_NAMES = {value: name for name, value in ROLES.items()}
_TYPES = CONTACT_TYPE_NAMES
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Page(Protocol):
    next_page_token: str


R = TypeVar("R", bound=_Page)


async def _all_pages(fetch: Callable[[str], Awaitable[R]]) -> AsyncIterator[R]:
    token = ""
    while True:
        page = await fetch(token)
        yield page
        token = page.next_page_token
        if not token:
            return


def duration_text(value: Duration) -> str:
    """The shortest exact form: 90s, 5m, 2h, 1d, 1w; zero is 0m."""
    seconds = value.seconds
    if seconds == 0:
        return "0m"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def export_config(client: TocsinClient) -> dict[str, Any]:
    s, n, e, i = client.scheduling, client.notification, client.escalation, client.incidents
    users = []
    async for page in _all_pages(
        lambda t: s.ListUsers(scheduling_pb2.ListUsersRequest(page_size=1000, page_token=t))
    ):
        for user in page.users:
            settings = await n.GetUserNotificationSettings(
                notification_pb2.GetUserNotificationSettingsRequest(user_id=user.id)
            )
            entry: dict[str, Any] = {"id": user.id, "name": user.name}
            if user.time_zone:
                entry["time_zone"] = user.time_zone
            if user.email:
                entry["email"] = user.email
            entry["role"] = ROLE_NAMES.get(user.role, "responder")
            entry["contact_methods"] = [
                {"id": cm.id, "type": _TYPES[cm.type], "address": cm.address}
                for cm in settings.contact_methods
            ]
            entry["notification_rules"] = [
                {"contact": r.contact_method_id, "after": duration_text(r.delay)}
                for r in settings.rules
            ]
            users.append(entry)
    schedules = []
    async for sched_page in _all_pages(
        lambda t: s.ListSchedules(scheduling_pb2.ListSchedulesRequest(page_size=1000, page_token=t))
    ):
        schedules += [_schedule(schedule) for schedule in sched_page.schedules]
    policies = []
    async for policy_page in _all_pages(
        lambda t: e.ListPolicies(escalation_pb2.ListPoliciesRequest(page_size=1000, page_token=t))
    ):
        policies += [_policy(policy) for policy in policy_page.policies]
    services = []
    async for service_page in _all_pages(
        lambda t: i.ListServices(incidents_pb2.ListServicesRequest(page_size=1000, page_token=t))
    ):
        services += [
            {
                "id": svc.id,
                "name": svc.name,
                "escalation_policy": svc.escalation_policy_id,
                "integration_key": svc.integration_key,
            }
            for svc in service_page.services
        ]
    return {
        "users": users,
        "schedules": schedules,
        "escalation_policies": policies,
        "services": services,
    }


def _schedule(schedule: scheduling_pb2.Schedule) -> dict[str, Any]:
    zone = ZoneInfo(schedule.time_zone)
    layers = []
    for layer in schedule.layers:
        entry: dict[str, Any] = {
            "name": layer.name,
            "start": layer.start,
            "rotation": {"length": layer.rotation_length},
            "users": list(layer.user_ids),
        }
        if layer.restrictions:
            entry["restrictions"] = [
                {
                    "days": [_DAYS[d - 1] for d in r.days],
                    "from": getattr(r, "from"),
                    "to": r.to,
                }
                for r in layer.restrictions
            ]
        layers.append(entry)
    overrides = [
        {
            "user": o.user_id,
            # with the offset, so the exported file means exactly the stored instant
            "from": o.start.ToDatetime(UTC).astimezone(zone).isoformat(timespec="minutes"),
            "to": o.end.ToDatetime(UTC).astimezone(zone).isoformat(timespec="minutes"),
        }
        for o in schedule.overrides
    ]
    result: dict[str, Any] = {
        "id": schedule.id,
        "name": schedule.name,
        "time_zone": schedule.time_zone,
        "layers": layers,
    }
    if overrides:
        result["overrides"] = overrides
    return result


def _policy(policy: escalation_pb2.EscalationPolicy) -> dict[str, Any]:
    return {
        "id": policy.id,
        "name": policy.name,
        "repeat": policy.repeat,
        "levels": [
            {
                "delay": duration_text(level.delay),
                "targets": [
                    {"user": t.user_id}
                    if t.WhichOneof("target") == "user_id"
                    else {"schedule": t.schedule_id}
                    for t in level.targets
                ],
            }
            for level in policy.levels
        ],
    }


def dump_yaml(config: dict[str, Any]) -> str:
    header = "# Exported by `tocsin export`; `tocsin apply -f` accepts it as it is.\n"
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)
