"""Trigger requests decoded item by item, so one undecodable alert fails alone.

protobuf's decoder refuses a message nesting more than 100 messages (an alert's details
nested ~33 objects deep), and gRPC then fails the whole call before any servicer runs: in
a TriggerBatch every alert riding with the poisoned one would fail. These decoders try
the ordinary decode first (the only cost on every good call), and only when it fails
split the batch into its items on the wire and decode each alone. An item that still
cannot be decoded becomes an InvalidArgument naming `details` when the rest of its
request decodes without them, `request` otherwise; the servicer answers it as that
item's error and takes the others.

The split uses "shallow" copies of the messages, built from their descriptors with
every message field read as bytes (the same wire format), so it never recurses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from tocsin.client.limits import DETAILS_TOO_DEEP
from tocsin.runtime.errors import InvalidArgument
from tocsin.v1 import incidents_pb2

_POOL = descriptor_pool.DescriptorPool()
_PACKAGE = "tocsin.internal.shallow"
_FIELD = descriptor_pb2.FieldDescriptorProto


def _shallow_types(*descriptors: Descriptor) -> dict[str, type[Message]]:
    """Copies of `descriptors` whose message fields are bytes and enum fields int32."""
    file = descriptor_pb2.FileDescriptorProto(
        name="tocsin/internal/shallow.proto", package=_PACKAGE, syntax="proto3"
    )
    for descriptor in descriptors:
        message = file.message_type.add()
        descriptor.CopyToProto(message)
        for field in message.field:
            if field.type == _FIELD.TYPE_MESSAGE:
                field.type = _FIELD.TYPE_BYTES
                field.ClearField("type_name")
            elif field.type == _FIELD.TYPE_ENUM:
                field.type = _FIELD.TYPE_INT32
                field.ClearField("type_name")
        message.ClearField("nested_type")
        message.ClearField("enum_type")
        message.ClearField("oneof_decl")
        for field in message.field:
            field.ClearField("oneof_index")
            field.ClearField("proto3_optional")
    _POOL.Add(file)
    return {
        d.name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{d.name}"))
        for d in descriptors
    }


_SHALLOW = _shallow_types(
    incidents_pb2.TriggerBatchRequest.DESCRIPTOR,
    incidents_pb2.TriggerBatchItem.DESCRIPTOR,
    incidents_pb2.TriggerRequest.DESCRIPTOR,
)


@dataclass
class SplitBatch:
    """A TriggerBatchRequest whose undecodable items are errors."""

    items: list[incidents_pb2.TriggerBatchItem | InvalidArgument]


def decode_trigger(data: bytes) -> incidents_pb2.TriggerRequest | InvalidArgument:
    """The request, or why it cannot be decoded."""
    try:
        return incidents_pb2.TriggerRequest.FromString(data)
    except DecodeError:
        return _undecodable_request(data)


def decode_trigger_batch(data: bytes) -> incidents_pb2.TriggerBatchRequest | SplitBatch:
    """The request; when it cannot be decoded whole, its items one by one (a batch whose
    very framing is broken raises DecodeError, failing the call as before)."""
    try:
        return incidents_pb2.TriggerBatchRequest.FromString(data)
    except DecodeError:
        pass
    shallow: Any = _SHALLOW["TriggerBatchRequest"].FromString(data)
    return SplitBatch([_decode_item(raw) for raw in shallow.items])


def _decode_item(raw: bytes) -> incidents_pb2.TriggerBatchItem | InvalidArgument:
    try:
        return incidents_pb2.TriggerBatchItem.FromString(raw)
    except DecodeError:
        pass
    try:
        item: Any = _SHALLOW["TriggerBatchItem"].FromString(raw)
    except DecodeError:
        return InvalidArgument.one("request", "could not be decoded")
    return _undecodable_request(item.request)


def _undecodable_request(data: bytes) -> InvalidArgument:
    try:
        shallow = _SHALLOW["TriggerRequest"].FromString(data)
        shallow.ClearField("details")
        incidents_pb2.TriggerRequest.FromString(shallow.SerializeToString())
    except DecodeError:
        return InvalidArgument.one("request", "could not be decoded")
    return InvalidArgument.one("details", f"{DETAILS_TOO_DEEP} (or could not be decoded)")
