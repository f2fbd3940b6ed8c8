"""The client commands of `loyalty` against a real server (SQLite, test clock): wallet and
balance look-ups, `run` through RunExpiry, `watch` with a cursor file (replay, resume, live),
`export expirations` over several pages, and errors as one line without a traceback.

The commands are synchronous gRPC clients: each runs in a worker thread through typer's
CliRunner while the server keeps serving on the test's event loop."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from loyalty.v1 import expiry_pb2, offer_pb2, rewards_pb2, wallet_pb2
from typer.testing import CliRunner, Result

from loyalty_ledger.cli import app as cli_app
from tests.conftest import START_TIME
from tests.helpers import balance, credit, make_scheme, make_wallet, rid, ts

# The CLI is backend-agnostic: one backend keeps these tests quick.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

CLI_TIMEOUT_S = 30.0
HOUR = timedelta(hours=1)


async def loyalty(*args: str) -> Result:
    """Run `loyalty ARGS` in a thread (the server needs the event loop meanwhile)."""
    runner = CliRunner()
    call = asyncio.to_thread(runner.invoke, cli_app, list(args), catch_exceptions=False)
    return await asyncio.wait_for(call, CLI_TIMEOUT_S)


def address(app: Any) -> str:
    return f"127.0.0.1:{app.port}"


def assert_one_error_line(result: Result, starts: str, notes: int = 0) -> None:
    """Exit code 1, nothing on stdout, and on stderr `notes` lines then the one error line."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == notes + 1, result.stderr
    assert lines[-1].startswith(starts), result.stderr
    assert "Traceback" not in result.output


def table_rows(result: Result) -> dict[str, str]:
    """The rows of a two-column summary table: field -> value."""
    return dict(
        (cells[0], cells[1])
        for line in result.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip().strip("│").split("│")]) == 2
    )


@sqlite_only
async def test_wallet_and_balance_show_a_wallet_in_asset_units(app, offers, wallets) -> None:
    await make_scheme(offers)
    wallet = await make_wallet(wallets, customer_ref="alice")
    expires = START_TIME + timedelta(days=10)
    await credit(wallets, wallet.wallet_id, 500, expire_time=ts(expires))
    await credit(wallets, wallet.wallet_id, 252, asset="EUR")

    shown = await loyalty("wallet", wallet.wallet_id, "--address", address(app))
    assert shown.exit_code == 0, shown.output
    rows = table_rows(shown)
    assert rows["wallet"] == wallet.wallet_id
    assert rows["customer"] == "alice"
    assert rows["status"] == "ACTIVE"

    as_json = await loyalty("wallet", wallet.wallet_id, "--address", address(app), "--json")
    assert json.loads(as_json.stdout)["customer_ref"] == "alice"

    money = await loyalty("balance", wallet.wallet_id, "--address", address(app))
    assert money.exit_code == 0, money.output
    lines = {line.split()[1]: line for line in money.stdout.splitlines() if "│" in line[:3]}
    assert "2.52" in lines["EUR"]  # 252 cents shown in euros
    assert "500" in lines["POINTS"]
    assert "2026-01-25T12:00:00Z" in lines["POINTS"]  # the next expiration

    only = await loyalty("balance", wallet.wallet_id, "--asset", "EUR", "-a", address(app))
    assert "EUR" in only.stdout and "POINTS" not in only.stdout


@sqlite_only
async def test_errors_are_one_line_with_code_and_reason(app) -> None:
    missing = await loyalty("wallet", "wal_missing", "--address", address(app))
    assert_one_error_line(missing, "error: NOT_FOUND WALLET_NOT_FOUND: ")
    assert "wal_missing" in missing.stderr

    bad = await loyalty("watch", "--wallet", "w" * 65, "--address", address(app))
    assert_one_error_line(bad, "error: INVALID_ARGUMENT INVALID_ARGUMENT: ", notes=1)
    assert "wallet_ids[0]" in bad.stderr  # the message names the field

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = await loyalty("balance", "wal_x", "--address", f"127.0.0.1:{closed}")
    assert_one_error_line(down, "error: UNAVAILABLE: ")


@sqlite_only
async def test_run_through_the_server_prints_a_summary(app, offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 30, expire_time=ts(clock.now() + timedelta(hours=1)))
    await credit(wallets, wallet, 12)
    hold = await wallets.AuthorizeHold(
        wallet_pb2.AuthorizeHoldRequest(
            request_id=rid("hold"),
            wallet_id=wallet,
            asset="POINTS",
            amount=5,
            merchant_id="m-1",
            ttl=Duration(seconds=60),
        )
    )
    clock.advance(timedelta(hours=2))

    expiry = await loyalty("run", "expiry", "--address", address(app), "--request-id", "r-1")
    assert expiry.exit_code == 0, expiry.output
    summary = table_rows(expiry)
    assert summary["kind"] == "EXPIRY"
    assert summary["status"] == "SUCCEEDED"
    assert summary["items processed"] == "1"
    assert summary["trigger"] == "rpc"
    # The hold reserved 5 of the expiring lot (soonest first); the other 25 expired.
    assert (await balance(wallets, wallet)).available == 12

    replay = await loyalty("run", "expiry", "--address", address(app), "--request-id", "r-1")
    run_id = summary["run"]
    assert run_id.startswith("run_") and table_rows(replay)["run"] == run_id

    before = await wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id=hold.hold.hold_id))
    assert before.hold.status == wallet_pb2.HOLD_STATUS_ACTIVE
    holds = await loyalty("run", "hold-timeout", "--address", address(app))
    assert holds.exit_code == 0, holds.output
    assert table_rows(holds)["kind"] == "HOLD_TIMEOUT"
    assert table_rows(holds)["items processed"] == "1"
    got = await wallets.GetHold(wallet_pb2.GetHoldRequest(hold_id=hold.hold.hold_id))
    assert got.hold.status == wallet_pb2.HOLD_STATUS_EXPIRED

    tiers = await loyalty("run", "tier-review", "--address", address(app))
    assert table_rows(tiers)["kind"] == "TIER_REVIEW", tiers.output

    future = (clock.now() + timedelta(hours=1)).isoformat()
    refused = await loyalty("run", "warnings", "--address", address(app), "--as-of", future)
    assert_one_error_line(refused, "error: INVALID_ARGUMENT INVALID_ARGUMENT: ")

    unknown = await loyalty("run", "nonsense", "--address", address(app))
    assert unknown.exit_code == 2


@sqlite_only
async def test_watch_saves_its_cursor_and_resumes_from_it(
    app, offers, wallets, clock, tmp_path: Path
) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets, customer_ref="bob")).wallet_id
    first = await credit(wallets, wallet, 30, expire_time=ts(clock.now() + timedelta(hours=1)))
    second = await credit(wallets, wallet, 7, expire_time=ts(clock.now() + timedelta(hours=3)))
    clock.advance(timedelta(hours=2))
    assert (await loyalty("run", "expiry", "-a", address(app))).exit_code == 0
    cursor = tmp_path / "cursor"

    replayed = await loyalty(
        "watch",
        "--wallet",
        wallet,
        "--cursor-file",
        str(cursor),
        "--count",
        "1",
        "-a",
        address(app),
    )
    assert replayed.exit_code == 0, replayed.output
    (line,) = replayed.stdout.splitlines()
    assert "EXPIRED" in line and first.lot.lot_id in line and "30 POINTS" in line
    sequence = int(cursor.read_text())
    assert f"#{sequence} " in line

    # Resume from the file: the next watch waits (live) and prints only the second expiry.
    resumed = asyncio.create_task(
        loyalty(
            "watch",
            "--wallet",
            wallet,
            "--cursor-file",
            str(cursor),
            "--count",
            "1",
            "--json",
            "-a",
            address(app),
        )
    )
    await asyncio.sleep(0.5)
    assert not resumed.done()
    clock.advance(timedelta(hours=2))
    # Not through the CLI: CliRunner swaps sys.stdout, so two invocations must not overlap.
    await wallets.RunExpiry(expiry_pb2.RunExpiryRequest(request_id=rid("run")))
    live = await resumed
    assert live.exit_code == 0, live.output
    (event_json,) = live.stdout.splitlines()
    event = json.loads(event_json)
    assert event["lot_id"] == second.lot.lot_id
    assert event["type"] == "EXPIRATION_EVENT_TYPE_EXPIRED"
    assert int(event["sequence"]) > sequence
    assert int(cursor.read_text()) == int(event["sequence"])

    cursor.write_text("not a number\n")
    broken = await loyalty("watch", "--cursor-file", str(cursor), "-a", address(app))
    assert_one_error_line(broken, "error: cursor file ")


@sqlite_only
async def test_export_expirations_pages_through_a_window(app, offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets, customer_ref="carol")).wallet_id
    lots = []
    for hours in (30, 10, 20, 500):
        made = await credit(
            wallets, wallet, hours, expire_time=ts(clock.now() + timedelta(hours=hours))
        )
        lots.append(made.lot.lot_id)
    window = [
        "--from",
        START_TIME.isoformat(),
        "--to",
        (START_TIME + timedelta(days=2)).isoformat(),
    ]

    exported = await loyalty(
        "export",
        "expirations",
        "--csv",
        "--scheme",
        "acme",
        *window,
        "--page-size",
        "2",
        "-a",
        address(app),
    )
    assert exported.exit_code == 0, exported.output
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [row["lot_id"] for row in rows] == [lots[1], lots[2], lots[0]]  # soonest first
    assert [row["amount"] for row in rows] == ["10", "20", "30"]
    assert rows[0]["customer_ref"] == "carol"
    assert rows[0]["expire_time"] == "2026-01-15T22:00:00Z"
    assert "exported 3 expirations" in exported.stderr

    neither = await loyalty("export", "expirations", *window, "-a", address(app))
    assert neither.exit_code == 2


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    result = CliRunner().invoke(cli_app, ["serve"], env={"LOYALTY_PORT": "99999"})
    assert_one_error_line(result, "error: invalid setting LOYALTY_PORT: ")
    assert "65535" in result.stderr


def report_lines(result: Result) -> list[list[str]]:
    """The cells of each table row in a command's output."""
    return [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    ]


@sqlite_only
async def test_reports_show_liability_breakage_and_offers(app, offers, wallets, clock) -> None:
    await make_scheme(offers)
    wallet = (await make_wallet(wallets)).wallet_id
    await credit(wallets, wallet, 500, sponsor_id="shop-1", expire_time=ts(clock.now() + HOUR))
    await credit(wallets, wallet, 252, asset="EUR", sponsor_id="shop-2")
    offer = (
        await offers.CreateOffer(
            offer_pb2.CreateOfferRequest(
                request_id=rid("offer"),
                offer=rewards_pb2.Offer(
                    scheme_id="acme",
                    name="5 points per 10 EUR",
                    asset="POINTS",
                    rule=rewards_pb2.AwardRule(
                        points_per_spend=rewards_pb2.PointsPerSpend(points=5, per_amount=1000)
                    ),
                    conditions=rewards_pb2.OfferConditions(currency="EUR"),
                ),
            )
        )
    ).offer
    await offers.SetOfferStatus(
        offer_pb2.SetOfferStatusRequest(
            request_id=rid("status"),
            offer_id=offer.offer_id,
            status=rewards_pb2.OFFER_STATUS_ACTIVE,
        )
    )
    await offers.SubmitEvent(
        offer_pb2.SubmitEventRequest(
            request_id=rid("event"),
            wallet_id=wallet,
            event=rewards_pb2.CustomerEvent(
                type=rewards_pb2.CUSTOMER_EVENT_TYPE_PURCHASE,
                occur_time=ts(clock.now()),
                merchant_id="shop-3",
                amount=4000,
                currency="EUR",
            ),
        )
    )

    liability = await loyalty("report", "liability", "--scheme", "acme", "-a", address(app))
    assert liability.exit_code == 0, liability.output
    rows = {(r[0], r[2]): r[3] for r in report_lines(liability)}
    assert rows[("POINTS", "shop-1")] == "500"
    assert rows[("EUR", "shop-2")] == "2.52"  # in euros, not cents
    assert rows[("POINTS", "shop-3")] == "20"  # the offer's award, funded by the merchant

    clock.advance(2 * HOUR)
    assert (await loyalty("run", "expiry", "-a", address(app))).exit_code == 0
    window = ["--from", "2026-01-01T00:00:00Z", "--to", "2026-02-01T00:00:00Z"]
    breakage = await loyalty("report", "breakage", "--scheme", "acme", *window, "-a", address(app))
    assert breakage.exit_code == 0, breakage.output
    assert [(r[0], r[1], r[3], r[4]) for r in report_lines(breakage)] == [
        ("2026-01", "POINTS", "shop-1", "500")
    ]
    as_json = await loyalty(
        "report", "breakage", "--scheme", "acme", *window, "-a", address(app), "--json"
    )
    assert [row["amount"] for row in json.loads(as_json.stdout)["rows"]] == ["500"]
    earlier = ["--from", "2025-12-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"]
    none = await loyalty("report", "breakage", "--scheme", "acme", *earlier, "-a", address(app))
    assert report_lines(none) == []

    performance = await loyalty("report", "offers", "--scheme", "acme", *window, "-a", address(app))
    assert performance.exit_code == 0, performance.output
    assert "offer performance of acme" in performance.stdout
    assert "top 10 offers" in performance.stdout
    assert any("20" in row for row in report_lines(performance))
    report = json.loads(
        (
            await loyalty(
                "report", "offers", "--scheme", "acme", *window, "-a", address(app), "--json"
            )
        ).stdout
    )
    (row,) = report["rows"]
    assert (row["offer_id"], row["month"], row["awarded"]) == (offer.offer_id, "2026-01", "20")
    assert [top["offer_id"] for top in report["top_offers"]] == [offer.offer_id]

    after = await loyalty("report", "liability", "--scheme", "acme", "-a", address(app))
    left = {(r[0], r[2]): r[3] for r in report_lines(after)}
    assert left == {("POINTS", "shop-3"): "20", ("EUR", "shop-2"): "2.52"}  # 500 expired

    missing = await loyalty("report", "liability", "--scheme", "nope", "-a", address(app))
    assert_one_error_line(missing, "error: NOT_FOUND ")
    no_window = await loyalty("report", "breakage", "--scheme", "acme", "-a", address(app))
    assert no_window.exit_code == 2
