"""Domain errors and their gRPC status codes.

Domain and store code raise these; the error interceptor in `grpcserver` turns them into
the matching status, with `google.rpc.BadRequest` field violations for invalid arguments,
so servicers stay thin adapters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from redis.exceptions import OutOfMemoryError, ResponseError


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class TocsinError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(TocsinError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(str(v) for v in self.violations) or "invalid argument")

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(TocsinError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TocsinError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(TocsinError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(TocsinError):
    """A conditional write lost against a concurrent one (stale version)."""

    code = grpc.StatusCode.ABORTED


class Unavailable(TocsinError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(TocsinError):
    """A per-process cap is reached (e.g. concurrent watch streams); retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


ERROR_DOMAIN = "tocsin"
REDIS_OUT_OF_MEMORY = "REDIS_OUT_OF_MEMORY"
"""`google.rpc.ErrorInfo` reason of `StorageFull`: clients show its message as it is."""


class StorageFull(Unavailable):
    """Redis refuses writes (maxmemory reached, `OOM command not allowed`): nothing was
    written; the same call succeeds once memory is freed, so clients retry (HTTP 503)."""

    reason = REDIS_OUT_OF_MEMORY

    def __init__(self) -> None:
        super().__init__(
            "tocsin's Redis is out of memory (maxmemory reached) and refuses writes; "
            "nothing was recorded, retry later"
        )


BACKLOG_TOO_OLD = "BACKLOG_TOO_OLD"
"""`google.rpc.ErrorInfo` reason of `BacklogTooOld`."""


class BacklogTooOld(Unavailable):
    """Backpressure: the incident-events backlog is older than TOCSIN_BACKLOG_MAX_AGE, so
    an alert that would open a new incident is refused (retry later); nothing written."""

    reason = BACKLOG_TOO_OLD

    def __init__(self, age_s: float, max_age_s: float) -> None:
        super().__init__(
            f"tocsin is behind: its oldest unhandled incident event is {age_s:.0f}s old "
            f"(over TOCSIN_BACKLOG_MAX_AGE={max_age_s:.0f}s), so new incidents are refused "
            "until it catches up; alerts for open incidents, acknowledgements and resolves "
            "are accepted; retry later"
        )


BACKLOG_TOO_LONG = "BACKLOG_TOO_LONG"
"""`google.rpc.ErrorInfo` reason of `BacklogTooLong`."""


class BacklogTooLong(Unavailable):
    """Backpressure: more incident events wait in a lane than TOCSIN_BACKLOG_MAX_EVENTS,
    so an alert that would open a new incident there is refused (retry later); nothing
    written."""

    reason = BACKLOG_TOO_LONG

    def __init__(self, entries: int, max_entries: int) -> None:
        super().__init__(
            f"tocsin is behind: {entries} incident events wait to be handled in this "
            f"service's lane (over TOCSIN_BACKLOG_MAX_EVENTS={max_entries}), so new "
            "incidents are refused until it catches up; alerts for open incidents, "
            "acknowledgements and resolves are accepted; retry later"
        )


def domain_error(error: Exception) -> TocsinError | None:
    """The `TocsinError` a lower-level error stands for, or None (a bug: let it surface).

    The one place where storage errors get their meaning: Redis's `OOM` reply (redis-py's
    `OutOfMemoryError`, or a script error carrying it) is `StorageFull`.
    """
    if isinstance(error, TocsinError):
        return error
    if isinstance(error, OutOfMemoryError) or (
        isinstance(error, ResponseError) and "not allowed when used memory" in str(error)
    ):
        return StorageFull()
    return None


def rpc_status(error: TocsinError) -> status_pb2.Status:
    """The google.rpc.Status of `error`, with BadRequest field violations if it has any."""
    status = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=str(error))
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
        status.details.append(detail)
    reason = getattr(error, "reason", None)
    if reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
        status.details.append(info)
    return status


def status_trailer(error: TocsinError) -> tuple[tuple[str, bytes], ...]:
    """The `grpc-status-details-bin` trailer carrying google.rpc.Status (+ BadRequest)."""
    return (("grpc-status-details-bin", rpc_status(error).SerializeToString()),)
