"""Identifiers: a prefix, a millisecond timestamp, a per-process sequence and randomness.

Ids made by one process sort in creation order even within one millisecond; across replicas
they sort by millisecond, then arbitrarily.
"""

from __future__ import annotations

import itertools
import secrets
import time

_sequence = itertools.count()


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{millis:012x}{next(_sequence) % 16**8:08x}{secrets.token_hex(4)}"
