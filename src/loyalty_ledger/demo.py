"""`loyalty demo`: a narrated tour of the ledger against a throwaway server.

It starts `loyalty serve` as a child process with the test clock, on a temporary SQLite
database, a free loopback port and a random admin key. As a client it creates a scheme,
merchants and offers, submits purchases, spends with a hold, follows WatchExpirations while
it moves the test clock to show the 48-hour warning and the expiry, then settles the period
and prints the statements. Nothing outside the temporary folder is touched.
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    from rich.console import Console

CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
EVENT_TIMEOUT_S = 10.0
SCHEME = "demo"
LEAD = timedelta(hours=48)


class DemoError(Exception):
    """A step of the demo did not turn out as expected."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def _server(folder: Path, key: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`loyalty serve --clock=test` as a child process; yields its address and the child."""
    from loyalty_ledger.ledger import migrate

    database_url = f"sqlite+aiosqlite:///{folder / 'demo.db'}"
    migrate.upgrade(database_url)
    port = _free_port()
    env = {
        **os.environ,
        "LOYALTY_CLOCK": "test",
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_HOST": "127.0.0.1",
        "LOYALTY_PORT": str(port),
        "LOYALTY_ADMIN_KEY": key,
        "LOYALTY_METRICS": "false",
        "LOYALTY_LOG_LEVEL": "WARNING",
    }
    log = (folder / "server.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, "-m", "loyalty_ledger.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"127.0.0.1:{port}", child
    finally:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def _ts(moment: Any) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _rid(step: str) -> str:
    return f"demo-{step}-{uuid.uuid4().hex[:8]}"


def _amount(minor: int, scale: int) -> str:
    if not scale:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**scale)
    return f"{sign}{whole}.{frac:0{scale}d}"


SCALES = {"POINTS": 0, "EUR": 2}


def _money(minor: int, asset: str) -> str:
    return f"{_amount(minor, SCALES.get(asset, 0))} {asset}"


def _wait_until_serving(
    channel: grpc.Channel, console: Console, child: subprocess.Popen[bytes], log: Path
) -> None:
    """Retry a cheap call until the child answers (its imports take a moment)."""
    import grpc
    from loyalty.v1 import clock_pb2, clock_pb2_grpc

    deadline = time.monotonic() + START_TIMEOUT_S
    stub = clock_pb2_grpc.TestClockServiceStub(channel)
    while True:
        try:
            now = stub.GetTime(clock_pb2.GetTimeRequest(), timeout=2).now
            console.print(f"[dim]server up; test clock at {_iso(now)}[/]")
            return
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            retry = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
            if child.poll() is not None:
                lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
                raise DemoError(
                    f"the server exited with code {child.returncode}: {lines[-1]}"
                ) from None
            if not retry or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _iso(stamp: Any) -> str:
    from datetime import UTC

    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _step(console: Console, text: str) -> None:
    console.print()
    console.rule(f"[bold]{text}[/]", align="left")


def run(console: Console) -> None:
    """The whole demo; raises grpc.RpcError or DemoError on a failure."""
    from loyalty_ledger.cli import _bearer

    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="loyalty-demo-") as folder:
        _step(console, "1. Start a server with a test clock")
        console.print(
            "[dim]`loyalty serve` with LOYALTY_CLOCK=test, a temporary SQLite database, "
            "a free port and a random admin key[/]"
        )
        with _server(Path(folder), key) as (address, child):
            import grpc

            channel = grpc.intercept_channel(grpc.insecure_channel(address), *_bearer(key))
            try:
                console.print(f"[dim]server at {address}[/]")
                _wait_until_serving(channel, console, child, Path(folder) / "server.log")
                _tour(channel, console)
            finally:
                channel.close()


def _tour(channel: grpc.Channel, console: Console) -> None:
    from google.protobuf.duration_pb2 import Duration
    from loyalty.v1 import (
        clock_pb2,
        clock_pb2_grpc,
        common_pb2,
        expiry_pb2,
        offer_pb2,
        offer_pb2_grpc,
        rewards_pb2,
        settlement_pb2,
        settlement_pb2_grpc,
        wallet_pb2,
        wallet_pb2_grpc,
    )
    from rich.table import Table

    t = CALL_TIMEOUT_S
    offers = offer_pb2_grpc.OfferServiceStub(channel)
    wallets = wallet_pb2_grpc.WalletServiceStub(channel)
    settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
    clock = clock_pb2_grpc.TestClockServiceStub(channel)

    def now() -> Any:
        return clock.GetTime(clock_pb2.GetTimeRequest(), timeout=t).now

    def advance(by: timedelta) -> None:
        moved = clock.AdvanceTime(
            clock_pb2.AdvanceTimeRequest(by=Duration(seconds=int(by.total_seconds()))), timeout=t
        ).now
        console.print(f"[magenta]clock advanced by {by} to {_iso(moved)}[/]")

    _step(console, "2. Create the scheme")
    scheme = offers.CreateScheme(
        offer_pb2.CreateSchemeRequest(
            request_id=_rid("scheme"),
            scheme=offer_pb2.Scheme(
                scheme_id=SCHEME,
                name="Demo Rewards",
                timezone="Europe/Amsterdam",
                assets=[
                    offer_pb2.AssetDefinition(code="POINTS", scale=0),
                    offer_pb2.AssetDefinition(code="EUR", scale=2),
                ],
                cash_expiry_allowed=True,
                warning_lead_times=[Duration(seconds=int(LEAD.total_seconds()))],
                redemption_rates=[
                    offer_pb2.RedemptionRate(asset="POINTS", points=100, currency="EUR", value=100)
                ],
            ),
        ),
        timeout=t,
    ).scheme
    console.print(
        f"scheme [bold]{scheme.scheme_id}[/]: POINTS (scale 0) and EUR (scale 2), "
        "Europe/Amsterdam, warnings 48 h ahead, 100 POINTS redeem for 1.00 EUR"
    )

    _step(console, "3. Register merchants")
    for merchant_id in ("shop-a", "shop-b", "brand-x"):
        settlement.CreateMerchant(
            settlement_pb2.CreateMerchantRequest(
                request_id=_rid("merchant"),
                merchant=settlement_pb2.Merchant(
                    scheme_id=SCHEME, merchant_id=merchant_id, name=merchant_id.title()
                ),
            ),
            timeout=t,
        )
        console.print(f"merchant [bold]{merchant_id}[/]")

    _step(console, "4. Create and activate offers")
    six_months = common_pb2.ExpiryPolicy(
        after=common_pb2.ExpireAfter(count=6, unit=common_pb2.DURATION_UNIT_MONTHS)
    )
    specs = [
        rewards_pb2.Offer(
            name="2% cash back (valid 6 months)",
            asset="EUR",
            rule=rewards_pb2.AwardRule(
                percent_of_amount=rewards_pb2.PercentOfAmount(
                    basis_points=200, rounding=rewards_pb2.ROUNDING_HALF_UP
                )
            ),
            conditions=rewards_pb2.OfferConditions(currency="EUR"),
            expiry_policy=six_months,
        ),
        rewards_pb2.Offer(
            name="5 points per 10 EUR",
            asset="POINTS",
            rule=rewards_pb2.AwardRule(
                points_per_spend=rewards_pb2.PointsPerSpend(points=5, per_amount=1000)
            ),
            conditions=rewards_pb2.OfferConditions(currency="EUR"),
        ),
        rewards_pb2.Offer(
            name="10% off accessories (instant)",
            asset="EUR",
            spend_method=rewards_pb2.SPEND_METHOD_INSTANT,
            rule=rewards_pb2.AwardRule(
                per_product=rewards_pb2.PerProduct(
                    match=rewards_pb2.ProductMatch(product_types=["Accessory"]),
                    basis_points=1000,
                )
            ),
            conditions=rewards_pb2.OfferConditions(currency="EUR"),
        ),
        rewards_pb2.Offer(
            name="brand-x bonus: 50 points at shop-b",
            asset="POINTS",
            rule=rewards_pb2.AwardRule(fixed_amount=rewards_pb2.FixedAmount(amount=50)),
            conditions=rewards_pb2.OfferConditions(merchant_ids=["shop-b"]),
            sponsor_id="brand-x",
            expiry_policy=six_months,
        ),
    ]
    names: dict[str, str] = {}
    for spec in specs:
        spec.scheme_id = SCHEME
        created = offers.CreateOffer(
            offer_pb2.CreateOfferRequest(request_id=_rid("offer"), offer=spec), timeout=t
        ).offer
        offers.SetOfferStatus(
            offer_pb2.SetOfferStatusRequest(
                request_id=_rid("status"),
                offer_id=created.offer_id,
                status=rewards_pb2.OFFER_STATUS_ACTIVE,
            ),
            timeout=t,
        )
        names[created.offer_id] = created.name
        sponsor = f" (sponsored by {created.sponsor_id})" if created.sponsor_id else ""
        console.print(f"offer [bold]{created.offer_id}[/] {created.name}{sponsor}: ACTIVE")

    _step(console, "5. Create wallets")
    wallet_of: dict[str, str] = {}
    for customer in ("alice", "bob"):
        wallet_of[customer] = wallets.CreateWallet(
            wallet_pb2.CreateWalletRequest(
                request_id=_rid("wallet"), scheme_id=SCHEME, customer_ref=customer
            ),
            timeout=t,
        ).wallet.wallet_id
        console.print(f"wallet [bold]{wallet_of[customer]}[/] for {customer}")

    _step(console, "6. Submit purchases")
    baskets = [
        ("alice", "shop-a", [("headphones", "Audio", 1, 9900), ("case", "Accessory", 1, 2675)]),
        ("bob", "shop-b", [("charger", "Accessory", 2, 1500), ("speaker", "Audio", 1, 5000)]),
    ]
    for customer, merchant_id, basket in baskets:
        total = sum(q * u for _, _, q, u in basket)
        event = rewards_pb2.CustomerEvent(
            type=rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE,
            occur_time=now(),
            merchant_id=merchant_id,
            amount=total,
            currency="EUR",
            items=[
                rewards_pb2.EventItem(product_id=p, product_type=k, quantity=q, unit_price=u)
                for p, k, q, u in basket
            ],
        )
        response = offers.SubmitEvent(
            offer_pb2.SubmitEventRequest(
                request_id=_rid("purchase"), wallet_id=wallet_of[customer], event=event
            ),
            timeout=t,
        )
        console.print(f"{customer} buys for {_money(total, 'EUR')} at {merchant_id}:")
        for award in response.awards:
            how = (
                "instant discount"
                if award.spend_method == rewards_pb2.SPEND_METHOD_INSTANT
                else "credited"
            )
            console.print(
                f"  {names.get(award.offer_id, award.offer_id)}: "
                f"{_money(award.amount, award.asset)} {how}"
            )
        if response.instant_discount:
            console.print(f"  pays {_money(total - response.instant_discount, 'EUR')} at the till")

    _step(console, "7. Spend with a hold: authorize, then capture")
    hold = wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=_rid("hold"),
            wallet_id=wallet_of["alice"],
            asset="POINTS",
            amount=40,
            merchant_id="shop-b",
            ttl=Duration(seconds=900),
        ),
        timeout=t,
    ).hold
    console.print(f"hold [bold]{hold.hold_id}[/]: 40 POINTS reserved for alice at shop-b")
    wallets.CaptureHold(
        wallet_pb2.CaptureHoldRequest(request_id=_rid("capture"), hold_id=hold.hold_id, amount=40),
        timeout=t,
    )
    console.print("captured: 40 POINTS spent (issued by shop-a, redeemed at shop-b)")

    def balances() -> None:
        table = Table(title="balances", title_justify="left")
        table.add_column("customer")
        table.add_column("asset")
        table.add_column("available", justify="right")
        for customer, wallet_id in wallet_of.items():
            found = wallets.GetBalance(wallet_pb2.GetBalanceRequest(wallet_id=wallet_id), timeout=t)
            for item in found.balances:
                table.add_row(customer, item.asset, _amount(item.available, SCALES[item.asset]))
        console.print(table)

    balances()

    _step(console, "8. Watch expirations while the test clock moves")
    upcoming = wallets.ListUpcomingExpirations(
        expiry_pb2.ListUpcomingExpirationsRequest(
            scheme_id=SCHEME, page_size=100, end_time=_ts(now().ToDatetime() + timedelta(days=400))
        ),
        timeout=t,
    )
    if not upcoming.expirations:
        raise DemoError("no lot is due to expire: the 6-month offers credited nothing")
    first = min(e.expire_time.ToSeconds() for e in upcoming.expirations)
    console.print(
        f"{len(upcoming.expirations)} lots expire; the first on "
        f"{_iso(upcoming.expirations[0].expire_time)}"
    )
    events: queue.Queue[Any] = queue.Queue()
    stream = wallets.WatchExpirations(
        expiry_pb2.WatchExpirationsRequest(scheme_id=SCHEME, after_sequence=0)
    )

    def read() -> None:
        try:
            for message in stream:
                if message.WhichOneof("message") == "event":
                    events.put(message.event)
        except Exception as error:  # handed to the main thread
            events.put(error)

    threading.Thread(target=read, daemon=True).start()
    seen: set[str] = set()

    def expect(kind: int, label: str) -> None:
        """Print events as they arrive until one of `kind` is in; then drain a moment."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        found = False
        while True:
            left = (0.5 if found else deadline - time.monotonic()) or 0.01
            try:
                item = events.get(timeout=max(left, 0.01))
            except queue.Empty:
                if found:
                    return
                raise DemoError(f"no {label} event on the stream") from None
            if isinstance(item, Exception):
                raise item
            if item.event_id in seen:
                continue
            seen.add(item.event_id)
            name = expiry_pb2.ExpirationEventType.Name(item.type).removeprefix(
                "EXPIRATION_EVENT_TYPE_"
            )
            style = {"EXPIRING_SOON": "yellow", "EXPIRED": "red"}.get(name, "cyan")
            sponsor = f" sponsor {item.sponsor_id}" if item.sponsor_id else ""
            console.print(
                f"  [{style}]event #{item.sequence} {name}[/] {item.customer_ref}: "
                f"{_money(item.amount, item.asset)} (lot {item.lot_id}) "
                f"at {_iso(item.expire_time)}{sponsor}"
            )
            found = found or item.type == kind

    try:
        until_warning = timedelta(seconds=first - now().ToSeconds()) - LEAD + timedelta(hours=1)
        console.print("move to 47 hours before the expiry: the 48-hour warning fires")
        advance(until_warning)
        expect(expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRING_SOON, "EXPIRING_SOON")
        console.print("move 48 hours on, past the expiry: the lots expire")
        advance(timedelta(hours=48))
        expect(expiry_pb2.EXPIRATION_EVENT_TYPE_EXPIRED, "EXPIRED")
    finally:
        stream.cancel()
    balances()

    _step(console, "9. Settle the period")
    advance(timedelta(minutes=2))
    end = now().ToDatetime() - timedelta(minutes=1)
    statements = settlement.RunSettlement(
        settlement_pb2.RunSettlementRequest(
            request_id=_rid("settle"),
            scheme_id=SCHEME,
            period_start=scheme.create_time,
            period_end=_ts(end),
        ),
        timeout=t,
    ).statements
    console.print(
        f"{len(statements)} statements for {_iso(scheme.create_time)} .. {_iso(_ts(end))}"
    )
    columns = ("issued", "reversed", "expired", "redeemed\nelsewhere", "accepted", "refunded")
    for statement in statements:
        table = Table(
            title=f"statement {statement.sequence} of {statement.party_id}",
            title_justify="left",
        )
        table.add_column("asset")
        for column in (*columns, "net"):
            table.add_column(column, justify="right")
        table.add_column("direction")
        table.add_column("value", justify="right")
        for line in statement.lines:
            scale = SCALES.get(line.asset, 0)
            figures = (
                line.issued,
                line.reversed,
                line.expired,
                line.redeemed_elsewhere,
                line.accepted,
                line.refunded,
                line.net,
            )
            direction = settlement_pb2.SettlementDirection.Name(line.direction).removeprefix(
                "SETTLEMENT_DIRECTION_"
            )
            value = _money(line.net_value, line.value_currency) if line.value_currency else "-"
            table.add_row(line.asset, *(_amount(v, scale) for v in figures), direction, value)
        if not statement.lines:
            table.add_row("(no activity)")
        console.print(table)
    console.print()
    console.print("[bold green]demo finished[/]")
