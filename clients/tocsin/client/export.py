"""`tocsin export`: the running configuration as a YAML document that `tocsin apply`
accepts (applying it back changes nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import grpc
import yaml
from google.protobuf.duration_pb2 import Duration

from tocsin.client.client import TocsinClient
from tocsin.client.configfile import ROLES, SEVERITIES, URGENCY_MODES
from tocsin.client.contact_types import CONTACT_TYPE_NAMES
from tocsin.client.maintenance_config import window_config
from tocsin.client.noise_config import grouping_config, heartbeat_config, rule_set_config
from tocsin.client.webhook_config import subscription_config, webhook_config
from tocsin.v1 import (
    common_pb2,
    escalation_pb2,
    incidents_pb2,
    notification_pb2,
    routing_pb2,
    scheduling_pb2,
    urgency_pb2,
    webhooks_pb2,
)

ROLE_NAMES = {value: name for name, value in ROLES.items()}
_MODE_NAMES = {value: name for name, value in URGENCY_MODES.items()}
_SEVERITY_NAMES = {value: name for name, value in SEVERITIES.items()}
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
            if user.handoff_notices:
                entry["handoff_notices"] = list(user.handoff_notices)
            entry["contact_methods"] = [
                {"id": cm.id, "type": _TYPES[cm.type], "address": cm.address}
                for cm in settings.contact_methods
            ]
            entry["notification_rules"] = [_rule(r) for r in settings.rules]
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
        services += [{**_service(svc), **_service_noise(svc)} for svc in service_page.services]
    config = {
        "users": users,
        "schedules": schedules,
        "escalation_policies": policies,
        "services": services,
    }
    await _noise_control(client, config)
    windows = await client.incidents.ListMaintenanceWindows(
        urgency_pb2.ListMaintenanceWindowsRequest()
    )  # those in progress or ahead: a window that is over for good is history
    if windows.windows:
        config["maintenance_windows"] = [window_config(w) for w in windows.windows]
    await _webhooks(client, config)
    return config


async def _webhooks(client: TocsinClient, config: dict[str, Any]) -> None:
    """Webhook subscriptions (without secrets: their `secret_env` names) and status
    subscriptions of services (an incident's are not configuration). Listing webhooks is
    for admins; anyone else's export leaves them out."""
    try:
        hooks = await client.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest())
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.PERMISSION_DENIED:
            raise
    else:
        if hooks.webhooks:
            config["webhooks"] = [webhook_config(h) for h in hooks.webhooks]
    subs = await client.webhooks.ListSubscriptions(webhooks_pb2.ListSubscriptionsRequest())
    by_service = [subscription_config(s) for s in subs.subscriptions if s.service_id]
    if by_service:
        config["status_subscriptions"] = by_service


def _service_noise(service: incidents_pb2.Service) -> dict[str, Any]:
    return {"grouping": grouping_config(service.grouping)} if service.HasField("grouping") else {}


async def _noise_control(client: TocsinClient, config: dict[str, Any]) -> None:
    """Event rules (the global ones on top, each service's on it) and heartbeat monitors."""
    reply = await client.incidents.ListEventRules(routing_pb2.ListEventRulesRequest())
    by_service = {svc["id"]: svc for svc in config["services"]}
    for rule_set in reply.rule_sets:
        rules = rule_set_config(rule_set)["rules"]
        if not rule_set.service_id:
            config["event_rules"] = rules
        elif rule_set.service_id in by_service:
            by_service[rule_set.service_id]["event_rules"] = rules
    monitors = await client.incidents.ListHeartbeatMonitors(
        routing_pb2.ListHeartbeatMonitorsRequest()
    )
    if monitors.monitors:
        config["heartbeats"] = [heartbeat_config(m) for m in monitors.monitors]


def _rule(rule: notification_pb2.NotificationRule) -> dict[str, Any]:
    entry = {"contact": rule.contact_method_id, "after": duration_text(rule.delay)}
    if rule.urgency == common_pb2.URGENCY_LOW:
        entry["urgency"] = "low"
    return entry


def _service(svc: incidents_pb2.Service) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": svc.id,
        "name": svc.name,
        "escalation_policy": svc.escalation_policy_id,
        "integration_key": svc.integration_key,
    }
    rule = svc.urgency
    if rule.mode != urgency_pb2.URGENCY_MODE_UNSPECIFIED:
        mode = _MODE_NAMES[rule.mode]
        options: dict[str, Any] = {}
        if rule.high_severities:
            options["high_severities"] = [_SEVERITY_NAMES[s] for s in rule.high_severities]
        if rule.low_inside_support_hours:
            options["low_inside_support_hours"] = True
        if rule.defer_low_outside_support_hours:
            options["defer_low_outside_support_hours"] = True
        entry["urgency"] = {"mode": mode, **options} if options else mode
    if svc.support_hours.windows:
        entry["support_hours"] = {
            "time_zone": svc.support_hours.time_zone,
            "windows": [_window(w) for w in svc.support_hours.windows],
        }
    if svc.ack_timeout.seconds:
        entry["ack_timeout"] = duration_text(svc.ack_timeout)
    if svc.page_after_maintenance:
        entry["page_after_maintenance"] = True
    return entry


def _window(window: scheduling_pb2.Restriction) -> dict[str, Any]:
    return {
        "days": [_DAYS[d - 1] for d in window.days],
        "from": getattr(window, "from"),
        "to": window.to,
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
            entry["restrictions"] = [_window(r) for r in layer.restrictions]
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
    if schedule.announce_slack_channel:
        result["announce_slack_channel"] = schedule.announce_slack_channel
    return result


def _policy(policy: escalation_pb2.EscalationPolicy) -> dict[str, Any]:
    return {
        "id": policy.id,
        "name": policy.name,
        "repeat": policy.repeat,
        "levels": [
            {
                "delay": duration_text(level.delay),
                **(
                    {"strategy": "round_robin"}
                    if level.strategy == escalation_pb2.LEVEL_STRATEGY_ROUND_ROBIN
                    else {}
                ),
                "targets": [_target(t) for t in level.targets],
            }
            for level in policy.levels
        ],
    }


def _target(target: escalation_pb2.EscalationTarget) -> dict[str, str]:
    kind = target.WhichOneof("target")
    if kind == "user_id":
        return {"user": target.user_id}
    if kind == "slack_channel":
        return {"slack_channel": target.slack_channel}
    if kind == "teams_channel":
        return {"teams_channel": target.teams_channel}
    return {"schedule": target.schedule_id}


def dump_yaml(config: dict[str, Any]) -> str:
    header = "# Exported by `tocsin export`; `tocsin apply -f` accepts it as it is.\n"
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)
