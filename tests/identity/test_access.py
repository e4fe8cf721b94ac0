"""The authorization table over real gRPC: every RPC of every service, every role.

Guarantee tested: each role can do exactly what runtime/authz.TABLE says; a call without a
credential is UNAUTHENTICATED (but signing in); a refusal is PERMISSION_DENIED naming the
role and the RPC and runs nothing; internal RPCs take only the service credential; and a
new RPC without an entry in the table fails `test_every_rpc_has_an_entry`.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor

from tests.identity.stack import ADMIN_TOKEN, IdentityStack
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.authz import TABLE, Access, Rule
from tocsin.v1 import (
    escalation_pb2,
    history_pb2,
    identity_pb2,
    incidents_pb2,
    notification_pb2,
    scheduling_pb2,
    webhooks_pb2,
)

SERVING = {
    "scheduling": ("tocsin.v1.SchedulingService", "tocsin.v1.IdentityService"),
    "incidents": ("tocsin.v1.IncidentService",),
    "escalation": ("tocsin.v1.EscalationService",),
    "notification": ("tocsin.v1.NotificationService", "tocsin.v1.WebhookService"),
    "history": ("tocsin.v1.HistoryService",),
}
FILES = (
    history_pb2,
    scheduling_pb2,
    identity_pb2,
    incidents_pb2,
    escalation_pb2,
    notification_pb2,
    webhooks_pb2,
)


def every_rpc() -> list[tuple[str, MethodDescriptor]]:
    """(server, method) for every RPC the protos declare, from their descriptors."""
    found = []
    for module in FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            server = next(n for n, names in SERVING.items() if service.full_name in names)
            found += [(server, method) for method in service.methods]
    return found


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def test_every_rpc_has_an_entry() -> None:
    """A new RPC must be given a rule (else only the service credential may call it)."""
    missing = [path(m) for _, m in every_rpc() if path(m) not in TABLE]
    assert missing == []
    assert len(every_rpc()) >= 62


async def _call(
    stack: IdentityStack, server: str, method: MethodDescriptor, token: str | None
) -> grpc.StatusCode:
    """Call `method` with an empty request; the status it ends with."""
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    async with grpc.aio.insecure_channel(stack.addrs[server]) as bare:
        if method.server_streaming:
            call: Any = bare.unary_stream(
                path(method),
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )(request_class(), metadata=metadata, timeout=1)
            try:
                async for _ in call:
                    break
                call.cancel()
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK
        unary = bare.unary_unary(
            path(method),
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            await unary(request_class(), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                details = error.details() or ""
                assert method.name in details and "role " in details, details
            return error.code()
        return grpc.StatusCode.OK


def _expected(rule: Rule, who: str) -> bool:
    """May `who` call an RPC with `rule` (with an empty request, which concerns nobody)?"""
    if who == "service":
        return True
    if who == "anonymous":
        return rule.access is Access.PUBLIC
    role = {"admin-token": "admin", "adam": "admin", "alice": "responder", "olga": "observer"}[who]
    allowed = {
        Access.PUBLIC: {"admin", "responder", "observer"},
        Access.READ: {"admin", "responder", "observer"},
        Access.RESPOND: {"admin", "responder"},
        Access.ADMIN: {"admin"},
        Access.INTERNAL: set(),
        Access.OWN: {"admin"},  # an empty request is nobody's own
    }[rule.access]
    return role in allowed


REFUSED = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


async def test_each_role_can_do_exactly_what_the_table_says(stack: IdentityStack) -> None:
    tokens = {
        "service": process_service_token(),
        "admin-token": ADMIN_TOKEN,
        "anonymous": None,
        **{u: stack.tokens[u] for u in ("adam", "alice", "olga")},
    }
    # Logout ends the caller's session: it goes last.
    rpcs = sorted(every_rpc(), key=lambda rpc: rpc[1].name == "Logout")
    wrong = []
    for server, method in rpcs:
        rule = TABLE[path(method)]
        for who, token in tokens.items():
            code = await _call(stack, server, method, token)
            allowed = code not in REFUSED
            if allowed != _expected(rule, who):
                wrong.append(f"{who} {path(method)}: {code.name}")
            if not allowed and who != "anonymous":
                assert code == grpc.StatusCode.PERMISSION_DENIED, (who, path(method), code)
            if who == "anonymous" and not allowed:
                assert code == grpc.StatusCode.UNAUTHENTICATED, (path(method), code)
    assert wrong == []
