"""Request text checks (api/validation.py)."""

from __future__ import annotations

import pytest

from loyalty_ledger.api.validation import Checks
from loyalty_ledger.domain.errors import InvalidArgument


def refused(value: str) -> bool:
    checks = Checks()
    checks.text("reference", value, max_chars=100)
    try:
        checks.done()
    except InvalidArgument:
        return True
    return False


@pytest.mark.parametrize("code", range(32))
def test_every_control_character_is_refused_anywhere_in_the_text(code: int) -> None:
    assert refused(chr(code))
    assert refused(f"order {chr(code)}42")


@pytest.mark.parametrize("text", ["", " ", "order 42", "caf\u00e9", "\x7f", "\u2028", "\U0001f600"])
def test_other_characters_pass(text: str) -> None:
    assert not refused(text)
