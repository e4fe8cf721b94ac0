"""Limits of the alert contract that senders and the incidents service share.

The incidents service enforces them; the gateway checks them at the edge so it can name
the sender's field, and the trigger batcher sends an alert past them in a call of its
own, so it cannot make a batch undecodable for the alerts beside it (protobuf's decoders
stop at 100 nested messages; every level of a `google.protobuf.Struct` costs three, a
list two).
"""

from __future__ import annotations

from google.protobuf.struct_pb2 import ListValue, Struct, Value

MAX_DETAILS_DEPTH = 20
"""Objects and lists nested in an alert's details, the details object itself counting 1."""
MAX_DETAILS_BYTES = 64 * 1024
"""An alert's details, encoded."""
MAX_TEXT_CHARS = 64 * 1024
"""The most of a text field worth sending: the service cuts fields to 1,024 characters and
keeps at most 32 Ki of the original in the details (a longer text only risks the 4 MiB
message limit)."""
INTEGRATION_KEY_LENGTH = 32
DETAILS_TOO_DEEP = f"must not nest objects or lists more than {MAX_DETAILS_DEPTH} levels deep"
"""The field violation's description for details past MAX_DETAILS_DEPTH."""


def details_depth(details: Struct, stop_at: int = MAX_DETAILS_DEPTH + 1) -> int:
    """How deeply objects and lists nest in `details` (an empty or flat object is 1).

    Counting stops at `stop_at`, so a pathological value costs no more than a legal one.
    """
    deepest = 1
    pending: list[tuple[Struct | ListValue, int]] = [(details, 1)]
    while pending:
        container, depth = pending.pop()
        values = container.fields.values() if isinstance(container, Struct) else container.values
        for value in values:
            inner = _container(value)
            if inner is None:
                continue
            if depth + 1 >= stop_at:
                return stop_at
            deepest = max(deepest, depth + 1)
            pending.append((inner, depth + 1))
    return deepest


def _container(value: Value) -> Struct | ListValue | None:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return value.struct_value
    if kind == "list_value":
        return value.list_value
    return None
