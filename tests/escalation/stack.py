"""The whole paging stack in one event loop: every service real, over real sockets, on
real Redis, with the fake Twilio and a ManualClock. Nothing runs in the background: a
test advances the clock with `tick()` and the stack runs every event and due timer until
nothing is left, so a test reads as a specification."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from tests.harness import Pager
from tests.notification.stack import PagingStack, paging_stack
from tests.services import LOOPBACK_ANY_PORT, client_for
from tocsin.client.channel import create_channel
from tocsin.client.client import TocsinClient
from tocsin.escalation import server as escalation_server
from tocsin.escalation.server import EscalationProcess
from tocsin.notification.peers import EscalationPeer
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.report_outbox import ReportOutbox
from tocsin.runtime.service import ServiceDeps
from tocsin.v1 import escalation_pb2, escalation_pb2_grpc, scheduling_pb2

MINUTE = 60


@dataclass
class FullStack:
    paging: PagingStack
    escalation: EscalationProcess
    escalation_client: escalation_pb2_grpc.EscalationServiceStub
    escalation_address: str

    @property
    def pager(self) -> Pager:
        return self.paging.pager

    @property
    def client(self) -> TocsinClient:
        return self.paging.client

    async def run_until_quiet(self) -> int:
        """Handle every pending event and due timer, in every service, until none is left."""
        assert self.escalation.consumer and self.escalation.worker
        total = 0
        for _ in range(50):
            done = await self.escalation.consumer.drain_once()
            done += await self.paging.drain_events()
            done += await self.escalation.worker.run_once()
            done += await self.paging.parts.worker.run_once()
            if self.paging.incidents is not None:  # snoozes and ack timeouts that end
                done += await self.paging.incidents.snooze_worker.run_once()
                done += await self.paging.incidents.maintenance_worker.run_once()
            await self.paging.settle()
            assert self.escalation.reports is not None
            done += await self.escalation.reports.drain_once()  # the page-out reports
            total += done
            if not done:
                return total
        raise AssertionError("the stack never went quiet")

    async def tick(self, **advance: float) -> int:
        self.paging.clock.advance(**advance)
        return await self.run_until_quiet()

    async def escalation_of(self, incident_id: str) -> escalation_pb2.Escalation:
        reply = await self.escalation_client.GetEscalation(
            escalation_pb2.GetEscalationRequest(incident_id=incident_id)
        )
        return reply.escalation

    async def policy(
        self,
        *levels: tuple[list[escalation_pb2.EscalationTarget], int],
        repeat: int = 0,
        replace: bool = False,
    ) -> None:
        """The `payments` policy (bound to payments-api) with (targets, delay minutes) levels;
        `replace`: it exists already and is replaced."""
        policy = escalation_pb2.EscalationPolicy(
            id="payments",
            name="Payments",
            repeat=repeat,
            levels=[
                escalation_pb2.EscalationLevel(
                    targets=targets, delay=Duration(seconds=minutes * MINUTE)
                )
                for targets, minutes in levels
            ],
        )
        if replace:
            await self.escalation_client.UpdatePolicy(
                escalation_pb2.UpdatePolicyRequest(policy=policy)
            )
        else:
            await self.escalation_client.CreatePolicy(
                escalation_pb2.CreatePolicyRequest(policy=policy)
            )

    async def schedule(
        self, schedule_id: str, users: list[str], start: str = "2026-11-01T00:00"
    ) -> None:
        """A one-layer weekly rotation of `users` in UTC."""
        await self.client.scheduling.CreateSchedule(
            scheduling_pb2.CreateScheduleRequest(
                schedule=scheduling_pb2.Schedule(
                    id=schedule_id,
                    name=schedule_id.title(),
                    time_zone="UTC",
                    layers=[
                        scheduling_pb2.Layer(
                            name="weekly", start=start, rotation_length="1w", user_ids=users
                        )
                    ],
                )
            )
        )


def user(user_id: str) -> escalation_pb2.EscalationTarget:
    return escalation_pb2.EscalationTarget(user_id=user_id)


def schedule(schedule_id: str) -> escalation_pb2.EscalationTarget:
    return escalation_pb2.EscalationTarget(schedule_id=schedule_id)


@contextlib.asynccontextmanager
async def full_stack(
    redis: RedisClient, env: Mapping[str, str] | None = None
) -> AsyncIterator[FullStack]:
    """`env`: more configuration for the services (a channel's settings)."""
    async with paging_stack(redis, env) as paging:
        endpoints = paging.client.endpoints
        env = {
            "TOCSIN_SCHEDULING_ADDR": endpoints.scheduling,
            "TOCSIN_INCIDENTS_ADDR": endpoints.incidents,
            "TOCSIN_NOTIFICATION_ADDR": endpoints.notification,
        }
        deps = ServiceDeps(load_config(env), redis, paging.clock)
        running, port = await escalation_server.create_server(
            deps, LOOPBACK_ANY_PORT, background=False
        )
        assert isinstance(running, EscalationProcess)
        # notification started first, so it learns escalation's address now: it reports
        # users nobody can reach there (ReportUnreachable).
        reporter = client_for(
            scheduling=endpoints.scheduling,
            incidents=endpoints.incidents,
            notification=endpoints.notification,
            escalation=f"127.0.0.1:{port}",
        )
        paging.parts.sender.escalation = EscalationPeer(lambda: reporter, ReportOutbox(redis))
        # The stub stands in for notification (ReportUnreachable): the service credential.
        channel = create_channel(f"127.0.0.1:{port}", process_service_token())
        stack = FullStack(
            paging,
            running,
            escalation_pb2_grpc.EscalationServiceStub(channel),
            f"127.0.0.1:{port}",
        )
        try:
            yield stack
        finally:
            await channel.close()
            await reporter.close()
            await running.stop(0)
            if deps.peers is not None:
                await deps.peers.close()
