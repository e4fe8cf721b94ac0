"""Who an incident may be handed to: asked of the services that own them.

Reassign must never hand an incident to nobody: a user scheduling does not know would
leave the restarted escalation with no one to page, and an unknown policy would leave the
old one running. So before anything is written, incidents asks scheduling whether the
user exists, or escalation whether the policy does, through their gRPC contracts. An
answer of "no" is NOT_FOUND naming it; a peer that cannot answer is UNAVAILABLE (the
caller may retry); in both cases nothing is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from tocsin.client.client import TocsinClient
from tocsin.runtime.errors import NotFound, Unavailable
from tocsin.v1 import escalation_pb2, incidents_pb2, scheduling_pb2

LOOKUP_TIMEOUT_S = 5.0


class Assignees:
    def __init__(
        self, client: Callable[[], TocsinClient], timeout_s: float = LOOKUP_TIMEOUT_S
    ) -> None:
        self._client = client
        self.timeout_s = timeout_s

    async def check(self, assignment: incidents_pb2.Assignment) -> None:
        """NotFound unless the user or policy `assignment` names exists."""
        target = assignment.WhichOneof("target")
        if target == "user_id":
            await self._ask(
                "user",
                assignment.user_id,
                "scheduling",
                lambda: self._client().scheduling.GetUser(
                    scheduling_pb2.GetUserRequest(id=assignment.user_id), timeout=self.timeout_s
                ),
            )
        elif target == "escalation_policy_id":
            policy_id = assignment.escalation_policy_id
            await self._ask(
                "escalation policy",
                policy_id,
                "escalation",
                lambda: self._client().escalation.GetPolicy(
                    escalation_pb2.GetPolicyRequest(id=policy_id), timeout=self.timeout_s
                ),
            )

    @staticmethod
    async def _ask(
        noun: str, value: str, owner: str, call: Callable[[], Awaitable[object]]
    ) -> None:
        try:
            await call()
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{noun} {value!r} does not exist") from None
            raise Unavailable(
                f"cannot check {noun} {value!r} with the {owner} service: {error.code().name}"
            ) from None
