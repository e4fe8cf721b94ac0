"""EscalationService: adapts the protobuf API to the store and the engine."""

from __future__ import annotations

from typing import Any

import grpc

from tocsin.client.client import TocsinClient
from tocsin.escalation.codec import escalation_to_proto, policy_from_proto
from tocsin.escalation.domain import validate_policy
from tocsin.escalation.engine import EscalationEngine
from tocsin.escalation.store import EscalationStore
from tocsin.runtime.audit import AuditLog, before_or_none
from tocsin.runtime.batches import answer_each
from tocsin.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from tocsin.runtime.paging import page_size
from tocsin.runtime.telemetry import current_traceparent
from tocsin.v1 import escalation_pb2 as pb
from tocsin.v1 import escalation_pb2_grpc, incidents_pb2, scheduling_pb2


class EscalationServicer(escalation_pb2_grpc.EscalationServiceServicer):
    def __init__(
        self, store: EscalationStore, engine: EscalationEngine, peers: TocsinClient
    ) -> None:
        self.store = store
        self.engine = engine
        self.peers = peers
        self.audit: AuditLog | None = None
        """Where configuration changes are recorded (set by the server)."""

    async def _record(self, action: str, object_id: str, before: Any, after: Any) -> None:
        if self.audit is not None:
            await self.audit.record(action, "escalation_policy", object_id, before, after)

    async def CreatePolicy(
        self, request: pb.CreatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreatePolicyResponse:
        await self._validate(request.policy, references=not request.validate_only)
        if request.validate_only:
            return pb.CreatePolicyResponse(policy=request.policy)
        created = await self.store.create_policy(request.policy)
        await self._record("policy.create", created.id, None, created)
        return pb.CreatePolicyResponse(policy=created)

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPolicyResponse:
        return pb.GetPolicyResponse(policy=await self.store.get_policy(request.id))

    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPoliciesResponse:
        size = page_size(request.page_size)
        policies = await self.store.list_policies(request.page_token, size + 1)
        token = policies[size - 1].id if len(policies) > size else ""
        return pb.ListPoliciesResponse(policies=policies[:size], next_page_token=token)

    async def UpdatePolicy(
        self, request: pb.UpdatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdatePolicyResponse:
        await self._validate(request.policy, references=not request.validate_only)
        if request.validate_only:
            return pb.UpdatePolicyResponse(policy=request.policy)
        before = await before_or_none(self.store.get_policy(request.policy.id))
        updated = await self.store.update_policy(request.policy)
        await self._record("policy.update", updated.id, before, updated)
        return pb.UpdatePolicyResponse(policy=updated)

    async def DeletePolicy(
        self, request: pb.DeletePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeletePolicyResponse:
        before = await self.store.get_policy(request.id)
        bound = await self._services_bound_to(request.id)
        if bound:
            raise FailedPrecondition(
                f"escalation policy {request.id!r} is used by services: {', '.join(bound)}"
            )
        await self.store.delete_policy(request.id)
        await self._record("policy.delete", request.id, before, None)
        return pb.DeletePolicyResponse()

    async def GetEscalation(
        self, request: pb.GetEscalationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEscalationResponse:
        state = await self.store.load(request.incident_id)
        if state is None:
            raise NotFound(f"incident {request.incident_id!r} has no escalation")
        return pb.GetEscalationResponse(escalation=escalation_to_proto(state))

    async def Escalate(
        self, request: pb.EscalateRequest, context: grpc.aio.ServicerContext
    ) -> pb.EscalateResponse:
        state = await self.engine.escalate(request.incident_id)
        return pb.EscalateResponse(escalation=escalation_to_proto(state))

    async def ReportUnreachable(
        self, request: pb.ReportUnreachableRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportUnreachableResponse:
        _require_report_fields(request)
        advanced = await self.engine.report_unreachable(
            request.incident_id,
            request.user_id,
            request.idempotency_key,
            request.reason,
            current_traceparent(),
        )
        return pb.ReportUnreachableResponse(advanced=advanced)

    async def ReportPageOut(
        self, request: pb.ReportPageOutRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportPageOutResponse:
        _require_report_fields(request)
        released = await self.engine.report_page_out(
            request.incident_id,
            request.user_id,
            request.idempotency_key,
            request.out_at.ToMilliseconds() if request.HasField("out_at") else None,
        )
        return pb.ReportPageOutResponse(released=released)

    async def ReportPageOutBatch(
        self, request: pb.ReportPageOutBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportPageOutBatchResponse:
        """Each item as a ReportPageOut call, concurrently."""
        results = await answer_each(
            request.items,
            lambda item: self.ReportPageOut(item, context),
            pb.ReportPageOutBatchResult,
            "ReportPageOut",
        )
        return pb.ReportPageOutBatchResponse(results=results)

    async def _validate(self, policy: pb.EscalationPolicy, references: bool = True) -> None:
        """InvalidArgument naming every problem; `references=False` (validate_only): the
        users and schedules named need not exist yet."""
        violations = [
            FieldViolation(f"policy.{v.field}", v.description)
            for v in validate_policy(policy_from_proto(policy))
        ]
        for i, level in enumerate(policy.levels):
            if level.strategy not in pb.LevelStrategy.values():
                violations.append(
                    FieldViolation(
                        f"policy.levels[{i}].strategy", f"unknown strategy {level.strategy}"
                    )
                )
            for j, target in enumerate(level.targets):
                field = f"policy.levels[{i}].targets[{j}]"
                kind = target.WhichOneof("target")
                if kind is None:
                    violations.append(
                        FieldViolation(
                            field, "set user_id, schedule_id, slack_channel or teams_channel"
                        )
                    )
                elif not references:
                    continue
                elif kind == "user_id" and target.user_id:
                    if not await self._exists_user(target.user_id):
                        violations.append(
                            FieldViolation(f"{field}.user_id", f"unknown user {target.user_id!r}")
                        )
                elif kind == "schedule_id" and target.schedule_id:
                    if not await self._exists_schedule(target.schedule_id):
                        violations.append(
                            FieldViolation(
                                f"{field}.schedule_id", f"unknown schedule {target.schedule_id!r}"
                            )
                        )
        if violations:
            raise InvalidArgument(violations)

    async def _exists_user(self, user_id: str) -> bool:
        try:
            await self.peers.scheduling.GetUser(scheduling_pb2.GetUserRequest(id=user_id))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def _exists_schedule(self, schedule_id: str) -> bool:
        try:
            await self.peers.scheduling.GetSchedule(
                scheduling_pb2.GetScheduleRequest(id=schedule_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def _services_bound_to(self, policy_id: str) -> list[str]:
        bound: list[str] = []
        request = incidents_pb2.ListServicesRequest(page_size=1000)
        while True:
            reply = await self.peers.incidents.ListServices(request)
            bound += [s.id for s in reply.services if s.escalation_policy_id == policy_id]
            if not reply.next_page_token:
                return bound
            request.page_token = reply.next_page_token


def _require_report_fields(
    request: pb.ReportUnreachableRequest | pb.ReportPageOutRequest,
) -> None:
    """Notification's reports name the incident, the user and the Notify's key."""
    violations = [
        FieldViolation(name, "is required")
        for name in ("incident_id", "user_id", "idempotency_key")
        if not getattr(request, name)
    ]
    if violations:
        raise InvalidArgument(violations)
