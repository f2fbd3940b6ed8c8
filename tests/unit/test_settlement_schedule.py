"""The scheduled settlement's settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loyalty_ledger.settings import Settings


def test_the_settlement_crontab_is_checked_when_settings_load() -> None:
    assert Settings(settlement_cron=" 0 2 * * * ").settlement_cron == "0 2 * * *"
    assert Settings(settlement_cron="").settlement_cron == ""  # never scheduled
    with pytest.raises(ValidationError, match="settlement_cron"):
        Settings(settlement_cron="every day at two")
    with pytest.raises(ValidationError, match="settlement_period"):
        Settings(settlement_period="WEEK")
