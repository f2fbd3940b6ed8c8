"""Hypothesis strategies built by walking protobuf message descriptors (for the fuzz test).

`request_strategy(descriptor, pools)` draws messages of any type: every field is optional,
scalars draw from their whole range with edge values favoured, enums include unknown numbers,
repeated and map fields draw short lists, sub-messages recurse to a bounded depth, oneofs set
at most one member (protobuf keeps the last one set), and Timestamp / Duration draw values in
and out of their valid ranges. String fields named like ids draw from `pools` (ids that exist
on the server) half of the time, so requests get past "not found" into the ledger code.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import loyalty.v1
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT_EDGES = {
    32: [0, 1, -1, 2**31 - 1, -(2**31)],
    64: [0, 1, -1, 10**15, 10**15 + 1, 2**63 - 1, -(2**63), 2**53],
}
UINT_EDGES = {32: [0, 1, 2**32 - 1], 64: [0, 1, 2**64 - 1]}
STRING_EDGES = ["", " ", "a" * 65, "x" * 300, "\x00", "\t", "é", "POINTS", "EUR", "UTC", "-"]
TIMESTAMP_SECONDS = [0, -1, 1, 1_768_478_400, 253_402_300_799, 253_402_300_800, -62_135_596_801]
DEPTH_MAX = 3

_SIGNED = {
    FieldDescriptor.TYPE_INT32: 32,
    FieldDescriptor.TYPE_SINT32: 32,
    FieldDescriptor.TYPE_SFIXED32: 32,
    FieldDescriptor.TYPE_INT64: 64,
    FieldDescriptor.TYPE_SINT64: 64,
    FieldDescriptor.TYPE_SFIXED64: 64,
}
_UNSIGNED = {
    FieldDescriptor.TYPE_UINT32: 32,
    FieldDescriptor.TYPE_FIXED32: 32,
    FieldDescriptor.TYPE_UINT64: 64,
    FieldDescriptor.TYPE_FIXED64: 64,
}

# Field name -> which pool of real ids it draws from.
POOL_OF = {
    "wallet_id": "wallets",
    "from_wallet_id": "wallets",
    "to_wallet_id": "wallets",
    "survivor_wallet_id": "wallets",
    "duplicate_wallet_id": "wallets",
    "wallet_ids": "wallets",
    "referrer_wallet_id": "wallets",
    "hold_id": "holds",
    "transaction_id": "transactions",
    "lot_id": "lots",
    "scheme_id": "schemes",
    "offer_id": "offers",
    "offer_ids": "offers",
    "run_id": "runs",
    "event_id": "events",
    "code": "codes",
    "merchant_id": "merchants",
    "sponsor_id": "merchants",
    "merchant_ids": "merchants",
    "asset": "assets",
    "currency": "assets",
    "timezone": "timezones",
}


def services() -> Iterator[Any]:
    """Every service declared in the loyalty.v1 protos (found by importing each *_pb2)."""
    for info in pkgutil.iter_modules(loyalty.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"loyalty.v1.{info.name}")
            yield from module.DESCRIPTOR.services_by_name.values()


def unary_methods() -> list[MethodDescriptor]:
    return [
        m
        for service in services()
        for m in service.methods
        if not m.client_streaming and not m.server_streaming
    ]


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _scalar(field: FieldDescriptor, pools: Mapping[str, Sequence[str]]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _SIGNED:
        bits = _SIGNED[kind]
        return st.one_of(
            st.integers(-3, 300),
            st.sampled_from(INT_EDGES[bits]),
            st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1),
        )
    if kind in _UNSIGNED:
        bits = _UNSIGNED[kind]
        return st.one_of(st.integers(0, 300), st.sampled_from(UINT_EDGES[bits]))
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=24)
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-2, max(numbers) + 3))
    assert kind == FieldDescriptor.TYPE_STRING, kind
    generic = st.one_of(st.sampled_from(STRING_EDGES), st.text(max_size=70))
    pool = pools.get(POOL_OF.get(field.name, ""), ())
    if not pool and field.name.endswith("_id"):
        pool = [i for key in ("wallets", "holds", "transactions", "lots") for i in pools[key]]
    if pool:
        return st.one_of(st.sampled_from(list(pool)), generic)
    return generic


def _well_known(descriptor: Descriptor) -> st.SearchStrategy[Any] | None:
    cls = message_class(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        seconds = st.one_of(
            st.sampled_from(TIMESTAMP_SECONDS), st.integers(1_700_000_000, 1_900_000_000)
        )
    elif descriptor.full_name == "google.protobuf.Duration":
        seconds = st.one_of(
            st.sampled_from([0, 1, -1, 3600, 86_400 * 366, 315_576_000_000, 2**40]),
            st.integers(-100, 10**6),
        )
    else:
        return None
    nanos = st.one_of(st.just(0), st.sampled_from([1, -1, 999_999_999, 10**9]))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


def message_strategy(
    descriptor: Descriptor, pools: Mapping[str, Sequence[str]], depth: int = 0
) -> st.SearchStrategy[Message]:
    special = _well_known(descriptor)
    if special is not None:
        return special
    cls = message_class(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _field_value(field, pools, depth)
        if value is not None:
            fields[field.name] = value

    def build(values: dict[str, Any]) -> Message:
        out = cls()
        for name, value in values.items():
            _assign(out, descriptor.fields_by_name[name], value)
        return out

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _field_value(
    field: FieldDescriptor, pools: Mapping[str, Sequence[str]], depth: int
) -> st.SearchStrategy[Any] | None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = field.message_type.fields_by_name["key"]
        value = field.message_type.fields_by_name["value"]
        value_strategy = _single(value, pools, depth + 1)
        if value_strategy is None:
            return None
        return st.dictionaries(_scalar(key, pools), value_strategy, max_size=4)
    single = _single(field, pools, depth)
    if single is None:
        return None
    if field.is_repeated:
        return st.lists(single, max_size=4)
    return single


def _single(
    field: FieldDescriptor, pools: Mapping[str, Sequence[str]], depth: int
) -> st.SearchStrategy[Any] | None:
    if field.message_type is None:
        return _scalar(field, pools)
    if depth >= DEPTH_MAX and _well_known(field.message_type) is None:
        return None
    return message_strategy(field.message_type, pools, depth + 1)


def _assign(out: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(out, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif field.is_repeated:
        if field.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(out, field.name, value)


def request_strategy(
    method: MethodDescriptor, pools: Mapping[str, Sequence[str]]
) -> st.SearchStrategy[Message]:
    return message_strategy(method.input_type, pools)
