"""AIP-158 paging: opaque keyset tokens and page size coercion."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from loyalty_ledger.domain.errors import InvalidArgument

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000


def page_size(requested: int) -> int:
    """Default when unset, coerced down to the maximum; negative is the caller's mistake."""
    if requested < 0:
        raise InvalidArgument.single("page_size", "must not be negative")
    if requested == 0:
        return PAGE_SIZE_DEFAULT
    return min(requested, PAGE_SIZE_MAX)


def encode_token(kind: str, key: Sequence[Any]) -> str:
    raw = json.dumps([kind, list(key)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(kind: str, token: str, arity: int) -> list[Any] | None:
    """The keyset of the last row of the previous page, or None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        found_kind, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidArgument.single("page_token", "not a token this server issued") from None
    if found_kind != kind or not isinstance(key, list) or len(key) != arity:
        raise InvalidArgument.single("page_token", "token belongs to another listing")
    if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in key):
        raise InvalidArgument.single("page_token", "not a token this server issued")
    return key


def after_key(
    columns: Sequence[ColumnElement[Any]], values: Sequence[Any], *, descending: bool = False
) -> ColumnElement[bool]:
    """Rows strictly after `values` in the (lexicographic) order of `columns`."""
    clauses = []
    for i, column in enumerate(columns):
        equal_prefix = [c == v for c, v in zip(columns[:i], values[:i], strict=True)]
        beyond = column < values[i] if descending else column > values[i]
        clauses.append(and_(*equal_prefix, beyond))
    return or_(*clauses)
