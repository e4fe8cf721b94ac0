"""Authorization: one table of who may call which RPC, and the one interceptor that
enforces it on every tocsin gRPC server.

Guarantee: no RPC runs unless its caller is authenticated (runtime/auth.py) and the table
allows the caller's role. An RPC missing from the table is refused to everyone but the
service credential, and tests/runtime/test_authz.py walks every RPC of every service from
the protobuf descriptors with every role, so a new RPC without an entry fails there.

Levels (the README's "Identity and access" has the same table for people):

- PUBLIC: anyone, even without a credential (signing in);
- READ: observer, responder, admin;
- RESPOND: responder, admin (act on incidents);
- ADMIN: admin (configuration, users, keys, the audit log);
- INTERNAL: the service credential only (calls between services);
- OWN: admin, or a person of `own_roles` when the request concerns themselves, decided by
  a named ownership check (a field of the request, or one the service registers, e.g.
  "the caller is on this schedule").

The service credential may call everything. Without a credential a call is
UNAUTHENTICATED (but for PUBLIC RPCs and health checks); a refused one is
PERMISSION_DENIED naming the role and the RPC, before the servicer runs, so it writes
nothing.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from tocsin.client.channel import CHANNEL_METADATA
from tocsin.runtime.auth import (
    Authenticator,
    Principal,
    Role,
    TocsinError,
    Unauthenticated,
    reset_principal,
    set_principal,
)


class Access(enum.Enum):
    PUBLIC = "public"
    READ = "read"
    RESPOND = "respond"
    ADMIN = "admin"
    INTERNAL = "internal"
    OWN = "own"


_LEVEL_ROLES = {
    Access.PUBLIC: frozenset(Role),
    Access.READ: frozenset(Role),
    Access.RESPOND: frozenset({Role.RESPONDER, Role.ADMIN}),
    Access.ADMIN: frozenset({Role.ADMIN}),
    Access.INTERNAL: frozenset(),
    Access.OWN: frozenset({Role.ADMIN}),
}


@dataclass(frozen=True)
class Rule:
    access: Access
    own: str = ""
    """OWN only: the ownership check, "field:<path>" (that request field names the caller)
    or a check the serving service registers by name."""
    own_roles: frozenset[Role] = frozenset({Role.RESPONDER})
    """OWN only: who besides admins may call it for themselves."""

    def allows_always(self, principal: Principal) -> bool:
        if principal.is_service:
            return True
        return principal.role in _LEVEL_ROLES[self.access]

    def may_own(self, principal: Principal) -> bool:
        return self.access is Access.OWN and principal.role in self.own_roles


PUBLIC = Rule(Access.PUBLIC)
READ = Rule(Access.READ)
RESPOND = Rule(Access.RESPOND)
ADMIN = Rule(Access.ADMIN)
INTERNAL = Rule(Access.INTERNAL)


def own(check: str, roles: frozenset[Role] = frozenset({Role.RESPONDER})) -> Rule:
    return Rule(Access.OWN, check, roles)


_EVERY_ROLE = frozenset(Role)
_S = "/tocsin.v1.SchedulingService/"
_I = "/tocsin.v1.IncidentService/"
_E = "/tocsin.v1.EscalationService/"
_N = "/tocsin.v1.NotificationService/"
_ID = "/tocsin.v1.IdentityService/"
_H = "/tocsin.v1.HistoryService/"
_W = "/tocsin.v1.WebhookService/"

TABLE: Mapping[str, Rule] = {
    # scheduling: the directory and rotations
    _S + "CreateUser": ADMIN,
    _S + "GetUser": READ,
    _S + "ListUsers": READ,
    _S + "UpdateUser": ADMIN,
    _S + "DeleteUser": ADMIN,
    _S + "SetHandoffNotices": own("field:user_id"),
    _S + "CreateSchedule": ADMIN,
    _S + "GetSchedule": READ,
    _S + "ListSchedules": READ,
    _S + "UpdateSchedule": ADMIN,
    _S + "DeleteSchedule": ADMIN,
    _S + "CreateLayer": ADMIN,
    _S + "UpdateLayer": ADMIN,
    _S + "DeleteLayer": ADMIN,
    _S + "CreateOverride": own("schedule_member"),
    _S + "DeleteOverride": own("schedule_member"),
    _S + "WhoIsOnCall": READ,
    _S + "ListShifts": READ,
    _S + "ListUserShifts": READ,
    # incidents
    _I + "CreateService": ADMIN,
    _I + "GetService": READ,
    _I + "ListServices": READ,
    _I + "UpdateService": ADMIN,
    _I + "DeleteService": ADMIN,
    _I + "Trigger": RESPOND,
    _I + "TriggerBatch": RESPOND,
    _I + "Acknowledge": RESPOND,
    _I + "Resolve": RESPOND,
    _I + "Snooze": RESPOND,
    _I + "Reassign": RESPOND,
    _I + "AddNote": RESPOND,
    _I + "PostStatusUpdate": RESPOND,
    _I + "AppendTimeline": INTERNAL,
    _I + "AppendTimelineBatch": INTERNAL,
    _I + "GetIncident": READ,
    _I + "ListIncidents": READ,
    # incidents: noise control (event rules, merging, heartbeat monitors)
    _I + "SetEventRules": ADMIN,
    _I + "GetEventRules": READ,
    _I + "ListEventRules": READ,
    _I + "ListSuppressedAlerts": READ,
    _I + "MergeIncidents": RESPOND,
    _I + "CreateHeartbeatMonitor": ADMIN,
    _I + "UpdateHeartbeatMonitor": ADMIN,
    _I + "GetHeartbeatMonitor": READ,
    _I + "ListHeartbeatMonitors": READ,
    _I + "DeleteHeartbeatMonitor": ADMIN,
    _I + "PingHeartbeat": RESPOND,
    _I + "CreateMaintenanceWindow": RESPOND,
    _I + "UpdateMaintenanceWindow": RESPOND,
    _I + "ListMaintenanceWindows": READ,
    _I + "EndMaintenanceWindow": RESPOND,
    _I + "DeleteMaintenanceWindow": ADMIN,
    _I + "WatchIncidents": READ,
    # escalation
    _E + "CreatePolicy": ADMIN,
    _E + "GetPolicy": READ,
    _E + "ListPolicies": READ,
    _E + "UpdatePolicy": ADMIN,
    _E + "DeletePolicy": ADMIN,
    _E + "GetEscalation": READ,
    _E + "Escalate": RESPOND,
    _E + "ReportUnreachable": INTERNAL,
    _E + "ReportPageOut": INTERNAL,
    _E + "ReportPageOutBatch": INTERNAL,
    # notification
    _N + "CreateContactMethod": own("field:contact_method.user_id"),
    _N + "UpdateContactMethod": own("contact_method"),
    _N + "DeleteContactMethod": own("contact_method"),
    _N + "GetUserNotificationSettings": own("field:user_id", _EVERY_ROLE),
    _N + "SetNotificationRules": own("field:user_id"),
    _N + "Notify": INTERNAL,
    _N + "NotifyBatch": INTERNAL,
    _N + "SendNotice": INTERNAL,
    _N + "CancelNotifications": INTERNAL,
    _N + "ListAttempts": READ,
    _N + "SendTestPage": own("field:user_id"),
    _N + "HandleIncomingSms": INTERNAL,
    _N + "HandleVoiceKeypress": INTERNAL,
    _N + "HandleDeliveryStatus": INTERNAL,
    _N + "HandleDeliveryStatusBatch": INTERNAL,
    _N + "HandleSlackAction": INTERNAL,
    # webhooks: outgoing webhook subscriptions (configuration, with secrets) and
    # stakeholder subscriptions (responders add stakeholders to an incident)
    _W + "PutWebhook": ADMIN,
    _W + "ListWebhooks": ADMIN,
    _W + "DeleteWebhook": ADMIN,
    _W + "TestWebhook": ADMIN,
    _W + "ListWebhookDeliveries": ADMIN,
    _W + "Subscribe": RESPOND,
    _W + "Unsubscribe": RESPOND,
    _W + "ListSubscriptions": READ,
    # history: the incident archive
    _H + "SearchIncidents": READ,
    _H + "GetArchivedIncident": READ,
    _H + "SimilarIncidents": READ,
    _H + "GetReport": READ,
    _H + "RebuildArchive": ADMIN,
    # identity (served by the scheduling process)
    _ID + "Login": PUBLIC,
    _ID + "Logout": READ,
    _ID + "WhoAmI": READ,
    _ID + "SetPassword": own("field:user_id", _EVERY_ROLE),
    _ID + "IssueToken": INTERNAL,
    _ID + "CreateApiKey": own("field:user_id", _EVERY_ROLE),
    _ID + "ListApiKeys": own("field:user_id", _EVERY_ROLE),
    _ID + "RevokeApiKey": own("api_key", _EVERY_ROLE),
    _ID + "ListAuditEntries": ADMIN,
    # server reflection: what any caller may learn about the API
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": READ,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": READ,
}
"""Which role may call which RPC. Every RPC of every tocsin service has an entry."""

_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_UNLISTED = INTERNAL

OwnCheck = Callable[[Any, Principal], Awaitable[bool]]
"""Does this request concern the caller (a person with a role the rule lets own it)?"""


def rule_for(method: str) -> Rule:
    return TABLE.get(method, _UNLISTED)


def _field_check(path: str) -> OwnCheck:
    names = path.split(".")

    async def check(request: Any, principal: Principal) -> bool:
        value = request
        for name in names:
            value = getattr(value, name)
        return bool(principal.user_id) and value == principal.user_id

    return check


_VIAS = ("cli", "console", "api")


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str:
    for name, value in details.invocation_metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return ""


def denial(principal: Principal, method: str) -> str:
    return f"role {principal.role_name} may not call {method.lstrip('/')}"


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call, checks it against TABLE, and makes the principal the
    current one (runtime.auth.current_principal) while the servicer runs."""

    def __init__(
        self, authenticator: Authenticator, ownership: Mapping[str, OwnCheck] | None = None
    ) -> None:
        self._authenticator = authenticator
        self._ownership = dict(ownership or {})

    def _own_check(self, name: str) -> OwnCheck | None:
        if name.startswith("field:"):
            return _field_check(name.removeprefix("field:"))
        return self._ownership.get(name)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if method.startswith(_HEALTH_PREFIX):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        rule = rule_for(method)
        given = [
            value.decode() if isinstance(value, bytes) else value
            for key, value in handler_call_details.invocation_metadata or ()
            if key == "authorization"
        ]
        try:
            if len(given) > 1:
                raise Unauthenticated("send exactly one authorization value")
            credential = None
            if given:
                scheme, _, credential = given[0].partition(" ")
                if scheme.lower() != "bearer" or not credential:
                    raise Unauthenticated("expected authorization: Bearer <token>")
            if rule.access is Access.PUBLIC and credential is None:
                principal = None
            else:
                principal = await self._authenticator.authenticate(credential)
        except TocsinError as refused:
            return _refusing_handler(handler, refused.code, str(refused))
        if principal is not None and not principal.is_service:
            via = _metadata_value(handler_call_details, CHANNEL_METADATA)
            if via in _VIAS and via != principal.via:
                principal = dataclasses.replace(principal, via=via)
        check: OwnCheck | None = None
        if principal is not None and not rule.allows_always(principal):
            if not rule.may_own(principal):
                return _refusing_handler(
                    handler, grpc.StatusCode.PERMISSION_DENIED, denial(principal, method)
                )
            check = self._own_check(rule.own)
            if check is None:
                return _refusing_handler(
                    handler, grpc.StatusCode.PERMISSION_DENIED, denial(principal, method)
                )
        return _authorized_handler(handler, principal, method, check)


def _authorized_handler(
    handler: grpc.RpcMethodHandler,
    principal: Principal | None,
    method: str,
    check: OwnCheck | None,
) -> grpc.RpcMethodHandler:
    """`handler`, running with `principal` current and, for an OWN rule, refusing a
    request that does not concern the caller."""

    async def allowed(request: Any, context: grpc.aio.ServicerContext) -> bool:
        if check is None or principal is None:
            return True
        if await check(request, principal):
            return True
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            denial(principal, method) + " for anyone but themselves",
        )
        return False

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = set_principal(principal)
            try:
                await allowed(request, context)
                return await inner_uu(request, context)
            finally:
                reset_principal(token)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = set_principal(principal)
            try:
                await allowed(request, context)
                async for item in inner_us(request, context):
                    yield item
            finally:
                reset_principal(token)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            token = set_principal(principal)
            try:
                return await inner_su(requests, context)
            finally:
                reset_principal(token)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            token = set_principal(principal)
            try:
                async for item in inner_ss(requests, context):
                    yield item
            finally:
                reset_principal(token)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )
    return handler


def _refusing_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with `code`.

    The kind matters: a unary handler for a client-streaming call, or a coroutine where the
    tracing interceptor iterates a response stream, ends the call with UNKNOWN instead.
    """

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # never reached: this makes an async generator, as a response stream is

    deserializer = handler.request_deserializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream, deserializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, deserializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, deserializer)
    return grpc.unary_unary_rpc_method_handler(refuse, deserializer)
