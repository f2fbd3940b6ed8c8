"""The `loyalty` command: serve, migrate and run, plus client commands against a running
server (wallet, balance, watch, run --address, export expirations, report, demo).

Client commands talk gRPC to `--address` (env LOYALTY_ADDRESS; default the LOYALTY_HOST and
LOYALTY_PORT the server reads, 127.0.0.1:50051) with the API key in LOYALTY_API_KEY (or
LOYALTY_ADMIN_KEY). A failed call prints one line,
`error: <STATUS CODE> <REASON>: <message>`, and exits with code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from loyalty_ledger import logs
from loyalty_ledger.ledger import migrate as migrations
from loyalty_ledger.settings import Settings

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Loyalty ledger with expiring balances.")
export_app = typer.Typer(no_args_is_help=True, help="Export data from a running server.")
keys_app = typer.Typer(
    no_args_is_help=True,
    help="API keys, straight on the database (also the way back in without an admin key).",
)
app.add_typer(export_app, name="export")
app.add_typer(keys_app, name="keys")
report_app = typer.Typer(no_args_is_help=True, help="Reports from a running server.")
app.add_typer(report_app, name="report")

DEFAULT_TIMEOUT_S = 10.0
EXIT_ERROR = 1


def _settings(**overrides: Any) -> Settings:
    """The settings, or one error line per bad value (not a traceback) and exit code 1."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        for problem in error.errors():
            name = "_".join(str(part) for part in problem["loc"])
            given = f" (got {problem['input']!r})" if "input" in problem else ""
            typer.echo(
                f"error: invalid setting LOYALTY_{name.upper()}: {problem['msg']}{given}", err=True
            )
        raise typer.Exit(EXIT_ERROR) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (env LOYALTY_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env LOYALTY_PORT).")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (env LOYALTY_DATABASE_URL).")
    ] = None,
    clock: Annotated[
        str | None, typer.Option(help="'system' or 'test' (env LOYALTY_CLOCK).")
    ] = None,
) -> None:
    """Serve the gRPC API until SIGTERM/SIGINT."""
    from loyalty_ledger.server import serve as run_server

    settings = _settings(host=host, port=port, database_url=database_url, clock=clock)
    logs.configure(settings.log_level, settings.log_format)
    # APScheduler logs every job it adds and runs at INFO: our runs log their own summary.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    asyncio.run(run_server(settings))


@app.command()
def migrate(
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (env LOYALTY_DATABASE_URL).")
    ] = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create or upgrade the database schema."""
    settings = _settings(database_url=database_url)
    migrations.upgrade(settings.database_url, revision)
    typer.echo(
        f"database at revision {migrations.head_revision() if revision == 'head' else revision}"
    )


# -- client commands: shared parts ----------------------------------------------------------

AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        "-a",
        envvar="LOYALTY_ADDRESS",
        help="Server HOST:PORT; default LOYALTY_HOST:LOYALTY_PORT (127.0.0.1:50051).",
        show_default=False,
    ),
]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait for each call.", min=0.1)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print proto3 JSON instead of a table.")]


def _address(address: str | None) -> str:
    """`--address`, else where `loyalty serve` listens by default (a wildcard as loopback)."""
    if address:
        return address
    settings = _settings()
    host = settings.host if settings.host not in ("", "0.0.0.0", "::", "[::]") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{settings.port or 50051}"


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=stderr)


def _error_reason(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata of a failed call, if the server attached them."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in getattr(error, "trailing_metadata", lambda: None)() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status()
        with contextlib.suppress(Exception):
            status.ParseFromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info.reason, dict(info.metadata)
    return "", {}


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def _fail_rpc(error: grpc.RpcError) -> NoReturn:
    """One line: status code, ErrorInfo reason (when there is one) and the message."""
    code = error.code()  # type: ignore[attr-defined]
    reason, _ = _error_reason(error)
    details = " ".join(str(error.details() or "").split())  # type: ignore[attr-defined]
    _fail(f"{code.name}{' ' + reason if reason else ''}: {details or 'no details'}")


def _bearer(key: str) -> list[Any]:
    """Client interceptors that send `authorization: Bearer <key>` with every call."""
    import collections

    import grpc

    class Details(
        collections.namedtuple(
            "Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready")
        ),
        grpc.ClientCallDetails,
    ):
        pass

    def with_key(details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {key}")]
        return Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
        )

    class Unary(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(with_key(details), request)

    class Stream(grpc.UnaryStreamClientInterceptor):
        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return continuation(with_key(details), request)

    return [Unary(), Stream()]


@contextlib.contextmanager
def _channel(address: str | None) -> Iterator[grpc.Channel]:
    """A channel to the server; gRPC errors inside the block end the command with one line."""
    import grpc

    target = _address(address)
    channel = grpc.insecure_channel(target)
    key = os.environ.get("LOYALTY_API_KEY") or os.environ.get("LOYALTY_ADMIN_KEY", "")
    if key:
        channel = grpc.intercept_channel(channel, *_bearer(key))
    try:
        yield channel
    except grpc.RpcError as error:
        _fail_rpc(error)
    finally:
        channel.close()


def _ts(stamp: Timestamp, *, precise: bool = False) -> str:
    """A set Timestamp as ISO 8601 UTC (to the second unless `precise`), or "-"."""
    if not stamp.seconds and not stamp.nanos:
        return "-"
    moment = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="auto" if precise else "seconds").replace("+00:00", "Z")


def _duration(seconds: int) -> str:
    """48 h as "48h", 7 days as "7d"."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _parse_time(value: str, option: str) -> datetime:
    """An ISO 8601 instant; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=option) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _amount(minor: int, scale: int | None) -> str:
    """Minor units as a decimal in the asset's scale (raw minor units if the scale is unknown)."""
    if not scale:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**scale)
    return f"{sign}{whole}.{frac:0{scale}d}"


def _scales(channel: grpc.Channel, scheme_id: str, timeout: float) -> dict[str, int]:
    from loyalty.v1 import offer_pb2, offer_pb2_grpc

    scheme = (
        offer_pb2_grpc.OfferServiceStub(channel)
        .GetScheme(offer_pb2.GetSchemeRequest(scheme_id=scheme_id), timeout=timeout)
        .scheme
    )
    return {asset.code: asset.scale for asset in scheme.assets}


def _print_json(message: Message) -> None:
    from google.protobuf import json_format

    typer.echo(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


def _enum_name(enum_type: Any, value: int, prefix: str) -> str:
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix)


# -- wallet, balance ------------------------------------------------------------------------


@app.command()
def wallet(
    wallet_id: Annotated[str, typer.Argument(help="The wallet id (wal_...).")],
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Show a wallet (GetWallet) on a running server."""
    from loyalty.v1 import wallet_pb2, wallet_pb2_grpc
    from rich.table import Table

    with _channel(address) as channel:
        found = (
            wallet_pb2_grpc.WalletServiceStub(channel)
            .GetWallet(wallet_pb2.GetWalletRequest(wallet_id=wallet_id), timeout=timeout)
            .wallet
        )
    if as_json:
        _print_json(found)
        return
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    status = _enum_name(wallet_pb2.WalletStatus, found.status, "WALLET_STATUS_")
    rows = [
        ("wallet", found.wallet_id),
        ("scheme", found.scheme_id),
        ("customer", found.customer_ref),
        ("status", status + (f" ({found.status_reason})" if found.status_reason else "")),
        ("merged into", found.merged_into_wallet_id),
        ("tags", ", ".join(found.tags)),
        (
            "birthday",
            f"{found.birthday.month:02d}-{found.birthday.day:02d}"
            if found.HasField("birthday")
            else "",
        ),
        ("referred by", found.referred_by_wallet_id),
        ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(found.metadata.items()))),
        ("created", _ts(found.create_time)),
        ("updated", _ts(found.update_time)),
    ]
    for name, value in rows:
        if value:
            table.add_row(name, value)
    _console().print(table)


@app.command()
def balance(
    wallet_id: Annotated[str, typer.Argument(help="The wallet id (wal_...).")],
    asset: Annotated[str | None, typer.Option(help="Only this asset.")] = None,
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Show a wallet's balance per asset (GetBalance) on a running server."""
    from loyalty.v1 import wallet_pb2, wallet_pb2_grpc
    from rich.table import Table

    with _channel(address) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        response = stub.GetBalance(
            wallet_pb2.GetBalanceRequest(wallet_id=wallet_id, asset=asset or ""), timeout=timeout
        )
        if as_json:
            _print_json(response)
            return
        scheme_id = stub.GetWallet(
            wallet_pb2.GetWalletRequest(wallet_id=wallet_id), timeout=timeout
        ).wallet.scheme_id
        scales = _scales(channel, scheme_id, timeout)
    table = Table(
        title=f"balance of {wallet_id} ({scheme_id})",
        title_justify="left",
        caption=f"as of {_ts(response.as_of_time)}; amounts in asset units",
        caption_justify="left",
    )
    table.add_column("asset")
    for column in ("available", "pending", "held"):
        table.add_column(column, justify="right")
    table.add_column("next expirations")
    for item in response.balances:
        scale = scales.get(item.asset)
        upcoming = "\n".join(
            f"{_amount(e.amount, scale)} at {_ts(e.expire_time)}" for e in item.next_expirations
        )
        table.add_row(
            item.asset,
            _amount(item.available, scale),
            _amount(item.pending, scale),
            _amount(item.held, scale),
            upcoming or "-",
        )
    _console().print(table)


# -- run ------------------------------------------------------------------------------------


class RunChoice(StrEnum):
    expiry = "expiry"
    warnings = "warnings"
    hold_timeout = "hold-timeout"
    holds = "holds"  # the earlier name of hold-timeout
    inactivity = "inactivity"
    birthdays = "birthdays"
    tier_review = "tier-review"
    settlement = "settlement"


_RUN_KIND_NAMES = {
    RunChoice.expiry: "EXPIRY",
    RunChoice.warnings: "EXPIRY_WARNING",
    RunChoice.hold_timeout: "HOLD_TIMEOUT",
    RunChoice.holds: "HOLD_TIMEOUT",
    RunChoice.inactivity: "INACTIVITY",
    RunChoice.birthdays: "BIRTHDAY",
    RunChoice.tier_review: "TIER_REVIEW",
    RunChoice.settlement: "SETTLEMENT",
}


@app.command()
def run(
    kind: Annotated[
        RunChoice, typer.Argument(help="What to run.", case_sensitive=False, show_default=False)
    ],
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            "-a",
            envvar="LOYALTY_ADDRESS",
            help="Ask the server at HOST:PORT to run it (RunExpiry). "
            "Without it the command opens the database itself.",
            show_default=False,
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            help="With --address: process what is due at this ISO 8601 time (not "
            "in the future); default now."
        ),
    ] = None,
    request_id: Annotated[
        str | None,
        typer.Option(
            help="With --address: idempotency key; a retry with it returns the same "
            "run. Default: a new one."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="With --address: seconds to wait for the run.", min=0.1)
    ] = 600.0,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (env LOYALTY_DATABASE_URL).")
    ] = None,
) -> None:
    """Run one batch job now and print its summary.

    With --address the running server does it (RunExpiry), with its own
    writer and clock. Without it the command opens LOYALTY_DATABASE_URL
    itself and runs as of the system time. Exits with 1 if the run failed.
    """
    kind_name = _RUN_KIND_NAMES[kind]
    if address:
        if database_url:
            raise typer.BadParameter("give --address or --database-url, not both")
        _run_on_server(kind_name, address, as_of, request_id, timeout)
        return
    if as_of or request_id:
        raise typer.BadParameter("--as-of and --request-id need --address")
    _run_in_process(kind_name, database_url)


def _run_on_server(
    kind_name: str, address: str, as_of: str | None, request_id: str | None, timeout: float
) -> None:
    from loyalty.v1 import expiry_pb2, wallet_pb2_grpc
    from rich.table import Table

    request = expiry_pb2.RunExpiryRequest(
        request_id=request_id or f"cli-run-{uuid.uuid4().hex}",
        kind=expiry_pb2.RunKind.Value(f"RUN_KIND_{kind_name}"),
    )
    if as_of:
        request.as_of_time.FromDatetime(_parse_time(as_of, "--as-of"))
    with _channel(address) as channel:
        with _console(stderr=True).status(f"running {kind_name} on {address} ..."):
            finished = (
                wallet_pb2_grpc.WalletServiceStub(channel).RunExpiry(request, timeout=timeout).run
            )
    status = _enum_name(expiry_pb2.RunStatus, finished.status, "RUN_STATUS_")
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    duration = "-"
    if finished.HasField("finish_time"):
        seconds = (
            finished.finish_time.ToDatetime() - finished.start_time.ToDatetime()
        ).total_seconds()
        duration = f"{seconds:.3f} s"
    for name, value in [
        ("run", finished.run_id),
        ("kind", _enum_name(expiry_pb2.RunKind, finished.kind, "RUN_KIND_")),
        ("status", status),
        ("as of", _ts(finished.as_of_time)),
        ("items processed", str(finished.items_processed)),
        ("chunks committed", str(finished.chunks_committed)),
        ("trigger", finished.trigger),
        ("started", _ts(finished.start_time)),
        ("finished", _ts(finished.finish_time)),
        ("duration", duration),
        ("request id", request.request_id),
    ]:
        table.add_row(name, value)
    if finished.error:
        table.add_row("error", finished.error)
    _console().print(table)
    if finished.status == expiry_pb2.RUN_STATUS_FAILED:
        raise typer.Exit(EXIT_ERROR)


def _run_in_process(kind_name: str, database_url: str | None) -> None:
    from loyalty_ledger.api.offer_codec import decode_offer
    from loyalty_ledger.clock import SystemClock
    from loyalty_ledger.jobs.runner import Runner
    from loyalty_ledger.ledger.db import Database
    from loyalty_ledger.ledger.records import RunKind
    from loyalty_ledger.ledger.service import Ledger

    settings = _settings(database_url=database_url)

    async def go() -> None:
        db = Database(settings.database_url)
        await db.start()
        try:
            clock = SystemClock()
            ledger = Ledger(db, clock, idempotency_retention_us=0)
            done = await Runner(
                ledger,
                chunk_max=settings.run_chunk_max,
                expiry_chunk_max=settings.expiry_chunk_max,
                decode=decode_offer,
            ).run(RunKind(kind_name), clock.now_us(), "cli")
        finally:
            await db.close()
        typer.echo(
            f"run {done.id} ({done.kind.value}) {done.status.value}: "
            f"{done.items_processed} items in {done.chunks_committed} chunks"
        )
        if done.error:
            typer.echo(f"error: {done.error}", err=True)
        if done.status.value == "FAILED":
            raise typer.Exit(EXIT_ERROR)

    asyncio.run(go())


# -- keys -----------------------------------------------------------------------------------

DatabaseOption = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (env LOYALTY_DATABASE_URL).")
]


def _on_database(database_url: str | None, job: Callable[[Any], Any]) -> Any:
    """Run `job(tx)` in one write transaction on the configured database."""
    from loyalty_ledger.clock import SystemClock
    from loyalty_ledger.ledger.db import Database
    from loyalty_ledger.ledger.service import Ledger

    settings = _settings(database_url=database_url)

    async def go() -> Any:
        db = Database(settings.database_url)
        await db.start()
        try:
            return await Ledger(db, SystemClock(), idempotency_retention_us=0).write(job)
        finally:
            await db.close()

    return asyncio.run(go())


class RoleChoice(StrEnum):
    admin = "admin"
    merchant = "merchant"
    subscriber = "subscriber"
    reader = "reader"


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    role: Annotated[RoleChoice, typer.Option(help="What it may do.", case_sensitive=False)],
    scheme: Annotated[
        list[str] | None, typer.Option(help="Scheme (merchant: exactly one; subscriber: any).")
    ] = None,
    merchant: Annotated[str, typer.Option(help="The merchant a merchant key acts as.")] = "",
    database_url: DatabaseOption = None,
) -> None:
    """Create an API key and print its secret (shown this once)."""
    from loyalty.v1 import admin_pb2

    from loyalty_ledger.api.admin_servicer import key_spec
    from loyalty_ledger.api.validation import Checks
    from loyalty_ledger.domain.errors import LedgerError
    from loyalty_ledger.ledger import api_keys

    checks = Checks()
    spec = admin_pb2.ApiKey(
        name=name,
        role=admin_pb2.ApiKeyRole.Value(f"API_KEY_ROLE_{role.value.upper()}"),
        scheme_ids=scheme or [],
        merchant_id=merchant,
    )
    chosen, schemes = key_spec(checks, spec)
    try:
        checks.done()
        assert chosen is not None

        async def create(tx: Any) -> tuple[Any, str]:
            for scheme_id in schemes:
                await tx.get_scheme(scheme_id)
            return await api_keys.create_key(tx.conn, name, chosen, schemes, merchant, tx.now_us)

        key, secret = _on_database(database_url, create)
    except LedgerError as error:
        typer.echo(f"error: {error.reason}: {error.message}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    typer.echo(f"key {key.id} ({key.role.value}) created; its secret, shown once:")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(database_url: DatabaseOption = None) -> None:
    """List API keys (never their secrets)."""
    from loyalty_ledger.ledger import api_keys

    async def every(tx: Any) -> list[Any]:
        found, token = [], ""
        while True:
            page = await api_keys.list_keys(tx.conn, 1000, token)
            found += page.items
            token = page.next_token
            if not token:
                return found

    for key in _on_database(database_url, every):
        state = "revoked" if key.revoked_at_us is not None else "valid"
        scope = ",".join(key.scheme_ids) + (f"/{key.merchant_id}" if key.merchant_id else "")
        typer.echo(f"{key.id}\t{key.role.value}\t{state}\t{scope or '-'}\t{key.name}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (key_...).")],
    database_url: DatabaseOption = None,
) -> None:
    """Revoke an API key for good."""
    from loyalty_ledger.domain.errors import LedgerError
    from loyalty_ledger.ledger import api_keys

    try:
        key = _on_database(database_url, lambda tx: api_keys.revoke(tx.conn, key_id, tx.now_us))
    except LedgerError as error:
        typer.echo(f"error: {error.reason}: {error.message}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    typer.echo(f"key {key.id} revoked")


# -- watch ----------------------------------------------------------------------------------


class EventChoice(StrEnum):
    expiring_soon = "expiring-soon"
    expired = "expired"
    hold_expired = "hold-expired"


RECONNECT_DELAY_MAX_S = 30.0
SEEN_EVENT_IDS_MAX = 100_000  # event ids remembered for deduplication


def _read_cursor(path: Path) -> int | None:
    """The sequence stored in a cursor file, or None if there is no file yet."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        _fail(f"cannot read cursor file {path}: {error.strerror}")
    if not text.isdigit():
        _fail(f"cursor file {path} does not hold a sequence number: {text[:40]!r}")
    return int(text)


def _write_cursor(path: Path, sequence: int) -> None:
    """Replace the cursor file atomically: a crash leaves the old or the new sequence."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(f"{sequence}\n")
    os.replace(partial, path)


def _event_line(event: Any, scales: Callable[[str], dict[str, int]]) -> str:
    from loyalty.v1 import expiry_pb2

    kind = _enum_name(expiry_pb2.ExpirationEventType, event.type, "EXPIRATION_EVENT_TYPE_")
    style = {"EXPIRING_SOON": "yellow", "EXPIRED": "red", "HOLD_EXPIRED": "cyan"}.get(kind, "")
    amount = _amount(event.amount, scales(event.scheme_id).get(event.asset))
    subject = f"lot {event.lot_id}" if event.lot_id else f"hold {event.hold_id}"
    line = (
        f"[dim]#{event.sequence}[/] [{style}]{kind:<13}[/] {event.scheme_id} {event.wallet_id}"
        f" ({event.customer_ref}) {subject} {amount} {event.asset}"
        f" {'expires' if kind == 'EXPIRING_SOON' else 'at'} {_ts(event.expire_time)}"
    )
    if event.lead_time_seconds:
        line += f" [dim](warned {_duration(event.lead_time_seconds)} ahead)[/]"
    if event.sponsor_id:
        line += f" [dim]sponsor {event.sponsor_id}[/]"
    return line + f" [dim]{event.event_id}[/]"


@app.command()
def watch(
    scheme: Annotated[str | None, typer.Option(help="Only events of this scheme.")] = None,
    wallet: Annotated[
        list[str] | None, typer.Option(help="Only events of this wallet (repeatable).")
    ] = None,
    event_type: Annotated[
        list[EventChoice] | None,
        typer.Option("--type", help="Only this event type (repeatable).", case_sensitive=False),
    ] = None,
    cursor_file: Annotated[
        Path | None,
        typer.Option(
            help="Resume after the sequence stored in this file, and store the newest "
            "sequence there as events (and heartbeats) arrive."
        ),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(help="Start after this sequence (overrides the cursor file).", min=0),
    ] = None,
    from_now: Annotated[
        bool, typer.Option(help="Without a stored cursor: only events from now on.")
    ] = False,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.", min=1)] = None,
    address: AddressOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one proto3 JSON object per event.")
    ] = False,
) -> None:
    """Follow the expiration stream (WatchExpirations) and print events live.

    Delivery is at least once: events already printed in this session are
    skipped by event_id. With --cursor-file the command resumes where the
    last one stopped. After a disconnect it reconnects by itself, from the
    last sequence it saw.
    """
    import grpc
    from google.protobuf import json_format
    from loyalty.v1 import expiry_pb2, wallet_pb2_grpc

    start = after if after is not None else None
    if start is None and cursor_file is not None:
        start = _read_cursor(cursor_file)
    types = [
        expiry_pb2.ExpirationEventType.Value(f"EXPIRATION_EVENT_TYPE_{choice.name.upper()}")
        for choice in event_type or ()
    ]
    console = _console()
    notes = _console(stderr=True)
    target = _address(address)
    cursor = start or 0
    seen: dict[str, None] = {}  # event ids printed, oldest first (bounded)
    printed = 0
    connected = False
    delay = 1.0
    scale_cache: dict[str, dict[str, int]] = {}

    with _channel(target) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)

        def scales(scheme_id: str) -> dict[str, int]:
            if scheme_id not in scale_cache:
                try:
                    scale_cache[scheme_id] = _scales(channel, scheme_id, DEFAULT_TIMEOUT_S)
                except grpc.RpcError:
                    scale_cache[scheme_id] = {}  # print minor units rather than stop
            return scale_cache[scheme_id]

        resume_from_now = from_now and start is None
        where = "now" if resume_from_now else f"after sequence {cursor}"
        notes.print(f"[dim]watching {target} from {where}; Ctrl-C stops[/]")
        try:
            while True:
                request = expiry_pb2.WatchExpirationsRequest(
                    scheme_id=scheme or "",
                    wallet_ids=wallet or [],
                    event_types=types,
                    after_sequence=cursor,
                    from_now=resume_from_now,
                )
                stream = stub.WatchExpirations(request)
                ended = "the server ended the stream"
                try:
                    for message in stream:
                        connected, delay = True, 1.0
                        if message.WhichOneof("message") == "heartbeat":
                            sequence = message.heartbeat.sequence
                        else:
                            event = message.event
                            sequence = event.sequence
                            if event.event_id not in seen:
                                seen[event.event_id] = None
                                if len(seen) > SEEN_EVENT_IDS_MAX:
                                    del seen[next(iter(seen))]
                                if as_json:
                                    data = json_format.MessageToDict(
                                        event, preserving_proto_field_name=True
                                    )
                                    typer.echo(json.dumps(data))
                                else:
                                    console.print(_event_line(event, scales), soft_wrap=True)
                                printed += 1
                        if sequence > cursor:
                            cursor, resume_from_now = sequence, False
                            if cursor_file is not None:
                                _write_cursor(cursor_file, cursor)
                        if count is not None and printed >= count:
                            stream.cancel()
                            return
                except grpc.RpcError as error:
                    code = error.code()  # type: ignore[attr-defined]
                    reason, _ = _error_reason(error)
                    retry = code == grpc.StatusCode.UNAVAILABLE or reason == "SUBSCRIBER_TOO_SLOW"
                    if not connected or not retry:
                        _fail_rpc(error)
                    ended = f"{code.name} {reason}".strip()
                notes.print(
                    f"[dim]stream ended ({ended}); reconnecting in {delay:.0f} s "
                    f"after sequence {cursor}[/]"
                )
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX_S)
        except KeyboardInterrupt:
            notes.print(f"[dim]stopped after sequence {cursor}[/]")
            raise typer.Exit(130) from None


# -- report ---------------------------------------------------------------------------------

SchemeOption = Annotated[str, typer.Option(help="The scheme (required).", show_default=False)]
FromOption = Annotated[
    str, typer.Option("--from", help="Window start, ISO 8601 (inclusive).", show_default=False)
]
ToOption = Annotated[
    str, typer.Option("--to", help="Window end, ISO 8601 (exclusive).", show_default=False)
]


def _stamp(value: str, option: str) -> Timestamp:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(_parse_time(value, option))
    return stamp


@report_app.command("liability")
def report_liability(
    scheme: SchemeOption,
    as_of: Annotated[
        str | None, typer.Option(help="Outstanding value at this ISO 8601 time; default now.")
    ] = None,
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Outstanding value per asset, funding and sponsor (GetLiabilityReport)."""
    from loyalty.v1 import settlement_pb2, settlement_pb2_grpc
    from rich.table import Table

    request = settlement_pb2.GetLiabilityReportRequest(scheme_id=scheme)
    if as_of:
        request.as_of_time.CopyFrom(_stamp(as_of, "--as-of"))
    with _channel(address) as channel:
        response = settlement_pb2_grpc.SettlementServiceStub(channel).GetLiabilityReport(
            request, timeout=timeout
        )
        if as_json:
            _print_json(response)
            return
        scales = _scales(channel, scheme, timeout)
    table = Table(
        title=f"liability of {scheme} as of {_ts(response.as_of_time)}", title_justify="left"
    )
    for column in ("asset", "funding", "sponsor"):
        table.add_column(column)
    table.add_column("amount", justify="right")
    for row in response.rows:
        amount = _amount(row.amount, scales.get(row.asset))
        table.add_row(row.asset, row.funding, row.sponsor_id or "-", amount)
    _console().print(table)


@report_app.command("breakage")
def report_breakage(
    scheme: SchemeOption,
    start: FromOption,
    end: ToOption,
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Expired value per month, asset, funding and sponsor (GetBreakageReport)."""
    from loyalty.v1 import settlement_pb2, settlement_pb2_grpc
    from rich.table import Table

    request = settlement_pb2.GetBreakageReportRequest(
        scheme_id=scheme, start_time=_stamp(start, "--from"), end_time=_stamp(end, "--to")
    )
    with _channel(address) as channel:
        response = settlement_pb2_grpc.SettlementServiceStub(channel).GetBreakageReport(
            request, timeout=timeout
        )
        if as_json:
            _print_json(response)
            return
        scales = _scales(channel, scheme, timeout)
    table = Table(title=f"breakage of {scheme} from {start} to {end}", title_justify="left")
    for column in ("month", "asset", "funding", "sponsor"):
        table.add_column(column)
    table.add_column("expired", justify="right")
    for row in response.rows:
        amount = _amount(row.amount, scales.get(row.asset))
        table.add_row(row.month, row.asset, row.funding, row.sponsor_id or "-", amount)
    _console().print(table)


@report_app.command("offers")
def report_offers(
    scheme: SchemeOption,
    start: FromOption,
    end: ToOption,
    top: Annotated[int, typer.Option(help="How many top offers.", min=1, max=100)] = 10,
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
    as_json: JsonOption = False,
) -> None:
    """Awarded, redeemed and expired per offer and month (GetOfferPerformanceReport)."""
    from loyalty.v1 import settlement_pb2, settlement_pb2_grpc
    from rich.table import Table

    request = settlement_pb2.GetOfferPerformanceReportRequest(
        scheme_id=scheme, start_time=_stamp(start, "--from"), end_time=_stamp(end, "--to"), top=top
    )
    with _channel(address) as channel:
        response = settlement_pb2_grpc.SettlementServiceStub(channel).GetOfferPerformanceReport(
            request, timeout=timeout
        )
        if as_json:
            _print_json(response)
            return
        scales = _scales(channel, scheme, timeout)
    rows = Table(title=f"offer performance of {scheme} from {start} to {end}", title_justify="left")
    for column in ("offer", "name", "month", "asset"):
        rows.add_column(column)
    for column in ("awarded", "redeemed", "expired"):
        rows.add_column(column, justify="right")
    for row in response.rows:
        scale = scales.get(row.asset)
        rows.add_row(
            row.offer_id,
            row.offer_name,
            row.month,
            row.asset,
            *(_amount(v, scale) for v in (row.awarded, row.redeemed, row.expired)),
        )
    tops = Table(title=f"top {top} offers by awarded value", title_justify="left")
    for column in ("offer", "name", "asset"):
        tops.add_column(column)
    for column in ("awarded", "redeemed", "expired", "outstanding"):
        tops.add_column(column, justify="right")
    for item in response.top_offers:
        scale = scales.get(item.asset)
        values = (item.awarded, item.redeemed, item.expired, item.outstanding)
        tops.add_row(
            item.offer_id, item.offer_name, item.asset, *(_amount(v, scale) for v in values)
        )
    console = _console()
    console.print(rows)
    console.print(tops)


# -- demo -----------------------------------------------------------------------------------


@app.command()
def demo() -> None:
    """A narrated tour on a throwaway server with a test clock (temporary database)."""
    import grpc

    from loyalty_ledger import demo as tour

    try:
        tour.run(_console())
    except grpc.RpcError as error:
        _fail_rpc(error)
    except (tour.DemoError, OSError) as error:
        _fail(f"demo: {error}")


# -- export ---------------------------------------------------------------------------------

EXPIRATION_COLUMNS = [
    "lot_id",
    "wallet_id",
    "scheme_id",
    "customer_ref",
    "asset",
    "amount",
    "expire_time",
    "sponsor_id",
]


@export_app.command("expirations")
def export_expirations(
    scheme: Annotated[str | None, typer.Option(help="Lots of this scheme's wallets.")] = None,
    wallet: Annotated[str | None, typer.Option(help="Lots of this wallet.")] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="Window start, ISO 8601 (inclusive); default now."),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Window end, ISO 8601 (exclusive).")
    ] = None,
    days: Annotated[
        int, typer.Option(help="Without --to: the window is this many days long.", min=1)
    ] = 30,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV with a header row (the default).")
    ] = True,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per line.")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file; default stdout.")
    ] = None,
    page_size: Annotated[int, typer.Option(help="Rows per call.", min=1, max=1000)] = 1000,
    address: AddressOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """Export open lots expiring in a window, soonest first.

    Reads every page of ListUpcomingExpirations. `amount` is the remaining
    value in minor units; times are UTC ISO 8601.
    """
    from google.protobuf.timestamp_pb2 import Timestamp
    from loyalty.v1 import expiry_pb2, wallet_pb2_grpc

    if bool(scheme) == bool(wallet):
        raise typer.BadParameter("give exactly one of --scheme and --wallet")
    begin = _parse_time(start, "--from") if start else datetime.now(UTC)
    finish = _parse_time(end, "--to") if end else begin + timedelta(days=days)
    request = expiry_pb2.ListUpcomingExpirationsRequest(
        scheme_id=scheme or "", wallet_id=wallet or "", page_size=page_size
    )
    if start:
        request.start_time.CopyFrom(Timestamp())
        request.start_time.FromDatetime(begin)
    request.end_time.FromDatetime(finish)
    jsonl = as_jsonl
    del as_csv  # CSV unless --jsonl
    rows = 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(output.open("w", newline="")) if output else sys.stdout
        writer = csv.writer(out, lineterminator="\n")
        if not jsonl:
            writer.writerow(EXPIRATION_COLUMNS)
        with _channel(address) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            while True:
                page = stub.ListUpcomingExpirations(request, timeout=timeout)
                for item in page.expirations:
                    values = [
                        item.lot_id,
                        item.wallet_id,
                        item.scheme_id,
                        item.customer_ref,
                        item.asset,
                        item.amount,
                        _ts(item.expire_time, precise=True),
                        item.sponsor_id,
                    ]
                    if jsonl:
                        out.write(json.dumps(dict(zip(EXPIRATION_COLUMNS, values, strict=True))))
                        out.write("\n")
                    else:
                        writer.writerow(values)
                    rows += 1
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
    typer.echo(f"exported {rows} expirations", err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
