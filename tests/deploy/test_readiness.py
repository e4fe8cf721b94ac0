"""The gateway stays ready while at least one replica of each service it calls is SERVING.

Real tocsin gRPC servers (two incidents replicas on 127.0.0.2 and 127.0.0.3, one of each
other service) and the real gateway, configured as the Kubernetes manifests configure it;
the readiness path is read from deploy/kubernetes/gateway.yaml.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.deploy.test_deploy_files import container, k8s_object, proto_service_name
from tocsin.gateway.server import start_gateway
from tocsin.runtime.clock import SystemClock
from tocsin.runtime.config import SERVICE_NAMES, Address, load_config
from tocsin.runtime.grpcserver import GrpcServer, start_grpc_server

TOKEN = "test-token"


@dataclass
class Stack:
    servers: dict[str, list[GrpcServer]]
    http: httpx.AsyncClient
    readiness_path: str


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    config = load_config({"TOCSIN_API_TOKEN": TOKEN})
    servers: dict[str, list[GrpcServer]] = {}
    env = {"TOCSIN_API_TOKEN": TOKEN, "TOCSIN_HTTP_ADDR": "127.0.0.1:0"}
    for name in SERVICE_NAMES:
        hosts = ["127.0.0.2", "127.0.0.3"] if name == "incidents" else ["127.0.0.1"]
        servers[name] = [
            await start_grpc_server(
                config, Address(host, 0), lambda s: None, [proto_service_name(name)]
            )
            for host in hosts
        ]
        env[f"TOCSIN_{name.upper()}_ADDR"] = ",".join(
            f"{host}:{server.port}" for host, server in zip(hosts, servers[name], strict=True)
        )
    gateway, task, port = await start_gateway(load_config(env), SystemClock())
    probe = container(k8s_object("Deployment", "gateway"))["readinessProbe"]["httpGet"]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield Stack(servers, http, probe["path"])
    finally:
        gateway.should_exit = True
        await task
        for replicas in servers.values():
            for server in replicas:
                await server.stop(0)


async def _ready(stack: Stack) -> int:
    return (await stack.http.get(stack.readiness_path)).status_code


async def test_gateway_stays_ready_while_one_replica_serves(stack: Stack) -> None:
    assert await _ready(stack) == 200
    first, second = stack.servers["incidents"]
    await first.set_serving(False)
    assert await _ready(stack) == 200
    await first.stop(0)  # gone altogether
    assert await _ready(stack) == 200
    await second.set_serving(False)
    response = await stack.http.get(stack.readiness_path)
    assert response.status_code == 503
    assert response.json()["not_serving"] == ["incidents"]


async def test_gateway_readiness_ignores_what_it_never_calls(stack: Stack) -> None:
    (escalation,) = stack.servers["escalation"]
    await escalation.set_serving(False)
    assert await _ready(stack) == 200
    assert (await stack.http.get("/healthz")).status_code == 503  # the whole system's view
    (notification,) = stack.servers["notification"]
    await notification.set_serving(False)
    assert await _ready(stack) == 503
