"""`validate_only` on every write `tocsin apply` makes: the server runs its own checks and
answers as the call would, and writes nothing; what it names need not exist yet."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.escalation.stack import FullStack, full_stack
from tocsin.runtime.redis import RedisClient
from tocsin.v1 import escalation_pb2, incidents_pb2, notification_pb2, scheduling_pb2

SMS = notification_pb2.CONTACT_METHOD_TYPE_SMS


@pytest.fixture
async def stack(redis: RedisClient) -> AsyncIterator[FullStack]:
    async with full_stack(redis) as stack:
        yield stack


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call  # type: ignore[misc]
    return refused.value


async def test_valid_requests_pass_and_write_nothing(stack: FullStack) -> None:
    c = stack.client
    user = scheduling_pb2.User(id="erin", name="Erin", time_zone="UTC")
    await c.scheduling.CreateUser(scheduling_pb2.CreateUserRequest(user=user, validate_only=True))
    # erin does not exist, yet her contact method, rules, schedule and policy all pass
    method = notification_pb2.ContactMethod(
        id="erin-sms", user_id="erin", type=SMS, address="+1 500 555 0123"
    )
    checked = await c.notification.CreateContactMethod(
        notification_pb2.CreateContactMethodRequest(contact_method=method, validate_only=True)
    )
    assert checked.contact_method.address == "+15005550123"
    rule = notification_pb2.NotificationRule(contact_method_id="erin-sms", delay=Duration())
    await c.notification.SetNotificationRules(
        notification_pb2.SetNotificationRulesRequest(
            user_id="erin", rules=[rule], validate_only=True
        )
    )
    schedule = scheduling_pb2.Schedule(
        id="erin-week",
        time_zone="UTC",
        layers=[
            scheduling_pb2.Layer(
                name="w", start="2026-11-02T09:00", rotation_length="1w", user_ids=["erin"]
            )
        ],
    )
    await c.scheduling.CreateSchedule(
        scheduling_pb2.CreateScheduleRequest(schedule=schedule, validate_only=True)
    )
    policy = escalation_pb2.EscalationPolicy(
        id="erin-policy",
        levels=[
            escalation_pb2.EscalationLevel(
                delay=Duration(seconds=300),
                targets=[escalation_pb2.EscalationTarget(schedule_id="erin-week")],
            )
        ],
    )
    await stack.escalation_client.CreatePolicy(
        escalation_pb2.CreatePolicyRequest(policy=policy, validate_only=True)
    )
    service = incidents_pb2.Service(id="erin-api", escalation_policy_id="erin-policy")
    await c.incidents.CreateService(
        incidents_pb2.CreateServiceRequest(service=service, validate_only=True)
    )
    for lookup in (
        c.scheduling.GetUser(scheduling_pb2.GetUserRequest(id="erin")),
        c.scheduling.GetSchedule(scheduling_pb2.GetScheduleRequest(id="erin-week")),
        stack.escalation_client.GetPolicy(escalation_pb2.GetPolicyRequest(id="erin-policy")),
        c.incidents.GetService(incidents_pb2.GetServiceRequest(id="erin-api")),
    ):
        assert (await _refused(lookup)).code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_requests_are_refused_as_the_real_call_would_be(stack: FullStack) -> None:
    c = stack.client
    bad_user = scheduling_pb2.User(id="erin", name="Erin", time_zone="Mars/Olympus")
    refused = await _refused(
        c.scheduling.CreateUser(scheduling_pb2.CreateUserRequest(user=bad_user, validate_only=True))
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    method = notification_pb2.ContactMethod(
        id="erin-sms", user_id="erin", type=SMS, address="555-1234"
    )
    refused = await _refused(
        c.notification.CreateContactMethod(
            notification_pb2.CreateContactMethodRequest(contact_method=method, validate_only=True)
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    long_rule = notification_pb2.NotificationRule(
        contact_method_id="erin-sms", delay=Duration(seconds=2 * 86400)
    )
    refused = await _refused(
        c.notification.SetNotificationRules(
            notification_pb2.SetNotificationRulesRequest(
                user_id="erin", rules=[long_rule], validate_only=True
            )
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    service = incidents_pb2.Service(id="erin-api", integration_key="short")
    refused = await _refused(
        c.incidents.CreateService(
            incidents_pb2.CreateServiceRequest(service=service, validate_only=True)
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the test stack runs payments-api: its id, and its key, are taken
    taken = (
        await c.incidents.GetService(incidents_pb2.GetServiceRequest(id="payments-api"))
    ).service
    for service in (
        incidents_pb2.Service(id="payments-api"),
        incidents_pb2.Service(id="other-api", integration_key=taken.integration_key),
    ):
        refused = await _refused(
            c.incidents.CreateService(
                incidents_pb2.CreateServiceRequest(service=service, validate_only=True)
            )
        )
        assert refused.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_contact_method_id_of_another_user_is_refused(stack: FullStack) -> None:
    await stack.paging.add_user("alice", "+15005550010", [(SMS, 0)])
    taken = notification_pb2.ContactMethod(
        id="alice-sms", user_id="erin", type=SMS, address="+15005550123"
    )
    refused = await _refused(
        stack.client.notification.CreateContactMethod(
            notification_pb2.CreateContactMethodRequest(contact_method=taken, validate_only=True)
        )
    )
    assert refused.code() == grpc.StatusCode.ALREADY_EXISTS
