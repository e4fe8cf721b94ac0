"""Services (alert sources) over gRPC: CRUD, the unique integration key, policy binding."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.incidents.harness import PAYMENTS_KEY, Served, trigger_request
from tocsin.v1 import incidents_pb2 as I


async def test_create_generates_a_key_and_defaults_the_name(served: Served) -> None:
    created = (
        await served.stub.CreateService(
            I.CreateServiceRequest(service=I.Service(id="search", escalation_policy_id="web"))
        )
    ).service
    assert len(created.integration_key) == 32
    int(created.integration_key, 16)
    assert created.name == "search"
    fetched = await served.stub.GetService(I.GetServiceRequest(id="search"))
    assert fetched.service == created
    reply = await served.stub.Trigger(
        I.TriggerRequest(integration_key=created.integration_key, summary="slow queries")
    )
    assert reply.incident.service_id == "search"
    assert reply.incident.assignment.escalation_policy_id == "web"


async def test_list_pages_in_id_order(served: Served) -> None:
    for name in ("zeta", "alpha", "mid"):
        await served.stub.CreateService(I.CreateServiceRequest(service=I.Service(id=name)))
    ids: list[str] = []
    request = I.ListServicesRequest(page_size=2)
    while True:
        reply = await served.stub.ListServices(request)
        ids += [s.id for s in reply.services]
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert ids == ["alpha", "mid", "payments-api", "zeta"]


async def test_update_moves_the_key_and_rebinds_the_policy(served: Served) -> None:
    new_key = "a" * 32
    updated = (
        await served.stub.UpdateService(
            I.UpdateServiceRequest(
                service=I.Service(
                    id="payments-api",
                    name="Payments",
                    integration_key=new_key,
                    escalation_policy_id="payments-night",
                )
            )
        )
    ).service
    assert updated.integration_key == new_key
    with pytest.raises(grpc.aio.AioRpcError) as old_key:
        await served.stub.Trigger(I.TriggerRequest(integration_key=PAYMENTS_KEY, summary="x"))
    assert old_key.value.code() == grpc.StatusCode.NOT_FOUND
    reply = await served.stub.Trigger(I.TriggerRequest(integration_key=new_key, summary="x"))
    assert reply.incident.assignment.escalation_policy_id == "payments-night"
    # An empty key keeps the current one.
    kept = await served.stub.UpdateService(
        I.UpdateServiceRequest(service=I.Service(id="payments-api", name="P"))
    )
    assert kept.service.integration_key == new_key and kept.service.name == "P"


async def test_update_refuses_a_taken_key_and_unknown_services(served: Served) -> None:
    other = (
        await served.stub.CreateService(I.CreateServiceRequest(service=I.Service(id="other")))
    ).service
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await served.stub.UpdateService(
            I.UpdateServiceRequest(
                service=I.Service(id="payments-api", integration_key=other.integration_key)
            )
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await served.stub.UpdateService(I.UpdateServiceRequest(service=I.Service(id="nope")))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    key = await served.stub.GetService(I.GetServiceRequest(id="payments-api"))
    assert key.service.integration_key == PAYMENTS_KEY


async def test_delete_keeps_the_incidents(served: Served) -> None:
    incident = (await served.stub.Trigger(trigger_request())).incident
    await served.stub.DeleteService(I.DeleteServiceRequest(id="payments-api"))
    for call in (
        served.stub.GetService(I.GetServiceRequest(id="payments-api")),
        served.stub.Trigger(trigger_request()),
        served.stub.DeleteService(I.DeleteServiceRequest(id="payments-api")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    kept = await served.stub.GetIncident(I.GetIncidentRequest(incident_id=incident.id))
    assert kept.incident.service_id == "payments-api"
    resolved = await served.stub.Resolve(I.ResolveRequest(incident_id=incident.id))
    assert resolved.changed
    # The key is free for a new service.
    again = await served.stub.CreateService(
        I.CreateServiceRequest(service=I.Service(id="payments-v2", integration_key=PAYMENTS_KEY))
    )
    assert again.service.integration_key == PAYMENTS_KEY


async def test_concurrent_lookups_on_a_cold_cache_share_one_find(served: Served) -> None:
    services = served.running.services
    finds = 0
    find = services.find

    async def counted_find(**names: str) -> I.Service | None:
        nonlocal finds
        finds += 1
        return await find(**names)

    services.find = counted_find  # type: ignore[method-assign]
    found = await asyncio.gather(
        *(services.lookup(integration_key=PAYMENTS_KEY) for _ in range(200)),
        services.lookup(service_id="nope"),
    )
    assert {s.id for s in found[:200] if s is not None} == {"payments-api"}
    assert found[200] is None
    assert finds == 2
    await services.lookup(integration_key=PAYMENTS_KEY)  # cached now
    assert finds == 2
