"""Server settings from `LOYALTY_*` environment variables (and `loyalty serve` options)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/loyalty.db"


class Settings(BaseSettings):
    """Everything configurable. Names are the environment variables without the prefix."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(50051, ge=0, le=65535, description="Port; 0 picks a free one.")
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )
    clock: Literal["system", "test"] = Field(
        "system", description="'test' serves a controllable clock; never in production."
    )
    idempotency_retention_hours: int = Field(
        24, ge=24, le=24 * 365, description="How long request_id records are kept."
    )
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=300)
    admin_key: SecretStr = Field(
        SecretStr(""),
        description="An ADMIN API key (16+ characters) made valid at start-up; empty: the first "
        "start of an empty database creates one and prints it once.",
    )
    tls_cert_file: str = Field("", description="PEM certificate chain: serve TLS (empty: plain).")
    tls_key_file: str = Field("", description="PEM private key of tls_cert_file.")
    tls_client_ca_file: str = Field(
        "", description="PEM CA bundle: require client certificates it signed (mutual TLS)."
    )
    unary_seconds_max: float = Field(
        60.0, gt=0, le=3600, description="Server-side cap on one unary call (DEADLINE_EXCEEDED)."
    )
    streams_per_key_max: int = Field(
        100, ge=1, le=100_000, description="WatchExpirations/export streams one API key may hold."
    )
    message_bytes_max: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="Largest request, and largest page of a List call, in serialized bytes "
        "(RESOURCE_EXHAUSTED MESSAGE_TOO_LARGE / RESPONSE_TOO_LARGE beyond it). Above 4 MiB, "
        "clients must raise their own receive limit too.",
    )
    auth_cache_seconds: float = Field(
        5.0, ge=0, le=300, description="How long a replica trusts a looked-up API key."
    )
    writer_queue_max: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="SQLite: writes waiting for the writer before RESOURCE_EXHAUSTED.",
    )
    sqlite_busy_timeout_ms: int = Field(5_000, ge=0, le=600_000)
    pg_pool_size: int = Field(10, ge=1, le=200)
    pg_max_overflow: int = Field(10, ge=0, le=200)
    pg_pool_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=600,
        description="PostgreSQL: how long a connection checkout may wait in the pool before "
        "UNAVAILABLE DB_POOL_EXHAUSTED (calls queue for the pool_size + max_overflow "
        "connections first, without a timeout).",
    )
    write_retries_max: int = Field(
        8, ge=0, le=100, description="PostgreSQL: retries of serialization failures/deadlocks."
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection.")
    run_chunk_max: int = Field(
        2_000, ge=1, le=100_000, description="Items per run chunk (one database transaction)."
    )
    expiry_chunk_max: int = Field(
        4_000,
        ge=1,
        le=100_000,
        description="Lots per chunk of an expiry run (one database transaction).",
    )
    expiry_interval_seconds: float = Field(60.0, gt=0, le=86_400)
    warning_interval_seconds: float = Field(300.0, gt=0, le=86_400)
    hold_timeout_interval_seconds: float = Field(30.0, gt=0, le=86_400)
    inactivity_interval_seconds: float = Field(3600.0, gt=0, le=86_400)
    # Hourly: each scheme's local midnight passes within an hour of it.
    birthday_interval_seconds: float = Field(3600.0, gt=0, le=86_400)
    # Daily: activity re-evaluates a wallet's tier at once; the review catches the window.
    tier_review_interval_seconds: float = Field(86_400.0, gt=0, le=86_400)
    settlement_cron: str = Field(
        "15 * * * *",
        description="Crontab (UTC) of the scheduled settlement run; empty: never scheduled.",
    )
    settlement_period: Literal["DAY", "MONTH"] = Field(
        "DAY", description="Scheduled statements end at local midnight, or month start."
    )
    scheduler: bool = Field(
        True, description="Run the interval schedule (off with --clock=test: AdvanceTime runs)."
    )
    lease_seconds: float = Field(
        30.0, gt=0, le=3600, description="How long a replica's hold on a scheduled job lasts."
    )
    watch_subscribers_max: int = Field(
        2_000, ge=1, le=100_000, description="Concurrent WatchExpirations streams."
    )
    watch_buffer_max: int = Field(
        1_000,
        ge=1,
        le=1_000_000,
        description="Events buffered per subscriber before it is cut off.",
    )
    watch_heartbeat_seconds: float = Field(15.0, gt=0, le=3600)
    watch_poll_seconds: float = Field(
        0.5, gt=0, le=60, description="How often the stream looks for events of other processes."
    )
    event_age_max_hours: int = Field(
        720, ge=1, le=8784, description="SubmitEvent refuses events older than this (30 days)."
    )
    log_level: str = Field("INFO")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="'text' for people at a terminal; 'json' (one object a line) in production.",
    )
    metrics: bool = Field(
        True, description="Serve Prometheus metrics on metrics_host:metrics_port."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the /metrics endpoint.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Metrics port; 0 picks a free one.")
    metrics_refresh_seconds: float = Field(
        30.0, gt=0, le=3600, description="How often liability and open-lot gauges are re-read."
    )
    otel: bool = Field(
        False, description="OpenTelemetry tracing of calls (needs the 'otel' extra; OTEL_* apply)."
    )

    @field_validator("admin_key")
    @classmethod
    def _admin_key(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if secret and (len(secret) < 16 or secret.strip() != secret or " " in secret):
            raise ValueError("an admin key has 16 or more characters and no spaces")
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("mutual TLS (tls_client_ca_file) needs tls_cert_file and tls_key_file")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name}: no file at {path}")
        return self

    @field_validator("settlement_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        if value.strip():
            CronTrigger.from_crontab(value, timezone="UTC")  # raises ValueError when invalid
        return value.strip()
