"""Contact method types by name, read from the proto enum (`CONTACT_METHOD_TYPE_SMS` ->
`sms`), so a channel added to the proto is known to `tocsin apply`, `export` and the CLI
without a list to keep in step. Whether a server sends a type is its own answer: it
refuses a contact method of a type it has no channel for, naming the field."""

from __future__ import annotations

from tocsin.v1 import notification_pb2

_PREFIX = "CONTACT_METHOD_TYPE_"

CONTACT_TYPES: dict[str, notification_pb2.ContactMethodType.ValueType] = {
    name.removeprefix(_PREFIX).lower(): value
    for name, value in notification_pb2.ContactMethodType.items()
    if value != notification_pb2.CONTACT_METHOD_TYPE_UNSPECIFIED
}
"""Name -> ContactMethodType, in proto order."""

CONTACT_TYPE_NAMES: dict[int, str] = {value: name for name, value in CONTACT_TYPES.items()}


def expected_types() -> str:
    """`sms, voice or email`, for an error message."""
    names = list(CONTACT_TYPES)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
