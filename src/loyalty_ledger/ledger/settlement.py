"""Settlement runs: one immutable statement per party and period, built from the ledger.

A statement's entries are written by INSERT ... SELECT straight from the period's ledger
entries (no Python loop over transactions), one row per (ledger transaction, asset,
counterparty) and kind:
- ISSUED, REVERSED, EXPIRED: postings on the party's sponsor account in AWARD, REVERSAL and
  EXPIRE entries (value it funded, given back on reversal, returned on expiry);
- REDEEMED_ELSEWHERE, ACCEPTED: allocations of SPEND, CAPTURE and REFUND entries on lots,
  the lot's sponsor (the operator for cash) against the entry's merchant; and INSTANT
  discounts (AWARD entries paying a merchant, and their REVERSALs), sponsor against merchant.
The lines are the entries summed per kind and asset (domain.settlement).

A party's statements are numbered; a unique key on (scheme, party, sequence) and one on
(scheme, party, period start) make two concurrent runs add at most one statement: the loser
finds the winner's and returns it when the periods match, or refuses its own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    String,
    and_,
    case,
    func,
    literal,
    literal_column,
    select,
    union,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty_ledger.domain.contributions import OPERATOR
from loyalty_ledger.domain.errors import FailedPrecondition, NotFound
from loyalty_ledger.domain.settlement import (
    EntryKind,
    Line,
    Period,
    last_boundary,
    line,
    valuation_rate,
)
from loyalty_ledger.domain.timeutil import from_us, to_us
from loyalty_ledger.ledger import tables as t
from loyalty_ledger.ledger.ids import new_id
from loyalty_ledger.ledger.paging import after_key, decode_token, encode_token
from loyalty_ledger.ledger.reads import Reader
from loyalty_ledger.ledger.records import Page, SchemeRecord, TxType

REDEMPTIONS = (TxType.SPEND.value, TxType.CAPTURE.value, TxType.REFUND.value)
INSTANT = (TxType.AWARD.value, TxType.REVERSAL.value)


@dataclass(frozen=True)
class StatementRecord:
    id: str
    scheme_id: str
    party_id: str
    sequence: int
    period_start_us: int
    period_end_us: int
    created_at_us: int
    lines: list[Line] = field(default_factory=list)


def _sponsor_prefix(scheme_id: str) -> str:
    return f"sponsor:{scheme_id}:"


def _merchant_party(x: Any) -> Any:
    return func.coalesce(x.c.merchant_id, literal(OPERATOR, String))


def _lot_party(lots: Any) -> Any:
    return func.coalesce(lots.c.sponsor_id, literal(OPERATOR, String))


# -- statements -------------------------------------------------------------------------------


async def _lines(conn: AsyncConnection, statement_id: str) -> list[Line]:
    rows = await conn.execute(
        select(t.statement_lines)
        .where(t.statement_lines.c.statement_id == statement_id)
        .order_by(t.statement_lines.c.asset)
    )
    return [
        Line(
            r.asset,
            r.issued,
            r.reversed,
            r.expired,
            r.redeemed_elsewhere,
            r.accepted,
            r.refunded,
            r.net,
            r.net_value,
            r.value_currency,
        )
        for r in rows
    ]


async def _record(conn: AsyncConnection, row: Any) -> StatementRecord:
    return StatementRecord(
        row.id,
        row.scheme_id,
        row.party_id,
        row.sequence,
        row.period_start_us,
        row.period_end_us,
        row.created_at_us,
        await _lines(conn, row.id),
    )


async def get_statement(conn: AsyncConnection, statement_id: str) -> StatementRecord:
    row = (
        await conn.execute(select(t.statements).where(t.statements.c.id == statement_id))
    ).first()
    if row is None:
        raise NotFound("statement", statement_id)
    return await _record(conn, row)


async def list_statements(
    conn: AsyncConnection, scheme_id: str, party_id: str, size: int, token: str
) -> Page[StatementRecord]:
    s = t.statements
    query = select(s).where(s.c.scheme_id == scheme_id)
    if party_id:
        query = query.where(s.c.party_id == party_id)
    after = decode_token("statements", token, 2)
    if after is not None:
        query = query.where(after_key([s.c.period_start_us, s.c.party_id], after, descending=True))
    rows = list(
        await conn.execute(
            query.order_by(s.c.period_start_us.desc(), s.c.party_id.desc()).limit(size + 1)
        )
    )
    items = [await _record(conn, r) for r in rows[:size]]
    nxt = ""
    if len(rows) > size:
        nxt = encode_token("statements", [items[-1].period_start_us, items[-1].party_id])
    return Page(items, nxt)


async def list_entries(
    conn: AsyncConnection, statement_id: str, size: int, token: str
) -> Page[Any]:
    await get_statement(conn, statement_id)
    e = t.statement_entries
    query = select(e).where(e.c.statement_id == statement_id)
    after = decode_token("statement_entries", token, 1)
    if after is not None:
        query = query.where(e.c.id > after[0])
    rows = list(await conn.execute(query.order_by(e.c.id).limit(size + 1)))
    nxt = encode_token("statement_entries", [rows[size - 1].id]) if len(rows) > size else ""
    return Page(rows[:size], nxt)


# -- who takes part ---------------------------------------------------------------------------


async def parties(conn: AsyncConnection, scheme_id: str, start_us: int, end_us: int) -> list[str]:
    """Every party to settle for a period: registered merchants, parties with statements, and
    parties with activity in the period (sponsors, merchants), plus the operator."""
    x, p, a, lots = t.transactions, t.postings, t.allocations, t.lots
    in_period = and_(
        x.c.scheme_id == scheme_id, x.c.created_at_us >= start_us, x.c.created_at_us < end_us
    )
    prefix = _sponsor_prefix(scheme_id)
    queries = union(
        select(t.merchants.c.id.label("party")).where(t.merchants.c.scheme_id == scheme_id),
        select(t.statements.c.party_id.label("party")).where(t.statements.c.scheme_id == scheme_id),
        select(_merchant_party(x).label("party")).where(
            in_period, x.c.type.in_(REDEMPTIONS + INSTANT), x.c.merchant_id.is_not(None)
        ),
        select(_lot_party(lots).label("party"))
        .select_from(a.join(x, x.c.id == a.c.transaction_id).join(lots, lots.c.id == a.c.lot_id))
        .where(in_period, x.c.type.in_(REDEMPTIONS)),
        select(func.substr(p.c.account, len(prefix) + 1).label("party"))
        .select_from(p.join(x, x.c.id == p.c.transaction_id))
        .where(in_period, p.c.account.startswith(prefix, autoescape=True)),
    )
    found = {row.party for row in await conn.execute(queries)}
    found.add(OPERATOR)
    return sorted(found)


# -- settling ---------------------------------------------------------------------------------


async def settle(
    conn: AsyncConnection,
    scheme: SchemeRecord,
    party_ids: list[str],
    start_us: int,
    end_us: int,
    now_us: int,
) -> list[StatementRecord]:
    """The statement of each party for [start, end): the existing one, or a new one."""
    return [
        await settle_party(conn, scheme, party_id, start_us, end_us, now_us)
        for party_id in sorted(set(party_ids))
    ]


async def settle_party(
    conn: AsyncConnection,
    scheme: SchemeRecord,
    party_id: str,
    start_us: int,
    end_us: int,
    now_us: int,
) -> StatementRecord:
    existing, sequence = await _place(conn, scheme.id, party_id, start_us, end_us)
    if existing is not None:
        return existing
    statement_id = new_id("stm")
    try:
        async with conn.begin_nested():
            await conn.execute(
                t.statements.insert().values(
                    id=statement_id,
                    scheme_id=scheme.id,
                    party_id=party_id,
                    sequence=sequence,
                    period_start_us=start_us,
                    period_end_us=end_us,
                    created_at_us=now_us,
                )
            )
    except IntegrityError:
        # A concurrent run added this party's next statement first (PostgreSQL): it is ours
        # when the periods match, else ours is refused as the checks now say.
        existing, _ = await _place(conn, scheme.id, party_id, start_us, end_us)
        if existing is not None:
            return existing
        raise  # pragma: no cover - _place raised for any other outcome
    await _write_entries(conn, scheme.id, party_id, statement_id, start_us, end_us)
    await _write_lines(conn, scheme, statement_id)
    return await get_statement(conn, statement_id)


async def _place(
    conn: AsyncConnection, scheme_id: str, party_id: str, start_us: int, end_us: int
) -> tuple[StatementRecord | None, int]:
    """The statement for exactly this period, or None and the next sequence number; refuses a
    period that overlaps another or does not follow the party's last one."""
    s = t.statements
    rows = list(
        await conn.execute(
            select(s)
            .where(s.c.scheme_id == scheme_id, s.c.party_id == party_id)
            .order_by(s.c.sequence)
        )
    )
    for row in rows:
        if (row.period_start_us, row.period_end_us) == (start_us, end_us):
            return await _record(conn, row), 0
    for row in rows:
        if row.period_start_us < end_us and start_us < row.period_end_us:
            raise FailedPrecondition(
                f"the period overlaps statement {row.id} of {party_id}",
                reason="PERIOD_OVERLAP",
                party_id=party_id,
                statement_id=row.id,
                period_start_us=row.period_start_us,
                period_end_us=row.period_end_us,
            )
    if rows and rows[-1].period_end_us != start_us:
        raise FailedPrecondition(
            f"{party_id}'s next period must start where its last statement ended",
            reason="PERIOD_GAP",
            party_id=party_id,
            statement_id=rows[-1].id,
            expected_period_start_us=rows[-1].period_end_us,
        )
    return None, (rows[-1].sequence + 1 if rows else 1)


async def _write_entries(
    conn: AsyncConnection,
    scheme_id: str,
    party_id: str,
    statement_id: str,
    start_us: int,
    end_us: int,
) -> None:
    x, p, a, lots = t.transactions, t.postings, t.allocations, t.lots
    in_period = and_(
        x.c.scheme_id == scheme_id, x.c.created_at_us >= start_us, x.c.created_at_us < end_us
    )
    stmt = literal(statement_id, String)
    none = literal("", String)
    prefix = _sponsor_prefix(scheme_id)
    own_account = prefix + party_id
    postings_of_period = p.join(x, x.c.id == p.c.transaction_id)
    columns = ["statement_id", "kind", "asset", "amount", "transaction_id", "counterparty_id"]
    selects = []

    # Value the party funded, gave back on reversal, got back on expiry.
    for kind, tx_type, sign in (
        (EntryKind.ISSUED, TxType.AWARD, -1),
        (EntryKind.REVERSED, TxType.REVERSAL, 1),
        (EntryKind.EXPIRED, TxType.EXPIRE, 1),
    ):
        selects.append(
            select(
                stmt,
                literal(kind.value, String),
                p.c.asset,
                func.sum(p.c.amount) * sign,
                x.c.id,
                none,
            )
            .select_from(postings_of_period)
            .where(in_period, x.c.type == tx_type.value, p.c.account == own_account)
            .group_by(x.c.id, p.c.asset)
        )

    # Redemptions of lots: the lot's sponsor against the entry's merchant.
    lot_party, merchant_party = _lot_party(lots), _merchant_party(x)
    allocations_of_period = a.join(x, x.c.id == a.c.transaction_id).join(
        lots, lots.c.id == a.c.lot_id
    )
    for kind, mine, theirs in (
        (EntryKind.REDEEMED_ELSEWHERE, lot_party, merchant_party),
        (EntryKind.ACCEPTED, merchant_party, lot_party),
    ):
        selects.append(
            select(
                stmt,
                literal(kind.value, String),
                lots.c.asset,
                func.sum(a.c.amount),
                x.c.id,
                theirs,
            )
            .select_from(allocations_of_period)
            .where(in_period, x.c.type.in_(REDEMPTIONS), mine == party_id, theirs != party_id)
            .group_by(x.c.id, lots.c.asset, theirs)
        )

    # INSTANT discounts: each sponsor's leg pays the entry's merchant (a REVERSAL pays back).
    leg = t.postings.alias("merchant_leg")
    pays_merchant = (
        select(leg.c.id)
        .where(
            leg.c.transaction_id == x.c.id,
            leg.c.account == literal(f"merchant:{scheme_id}:", String) + merchant_party,
        )
        .exists()
    )
    sponsor_party = func.substr(p.c.account, len(prefix) + 1)
    is_sponsor_leg = p.c.account.startswith(prefix, autoescape=True)
    for kind, mine, theirs in (
        (EntryKind.REDEEMED_ELSEWHERE, sponsor_party, merchant_party),
        (EntryKind.ACCEPTED, merchant_party, sponsor_party),
    ):
        selects.append(
            select(
                stmt,
                literal(kind.value, String),
                p.c.asset,
                -func.sum(p.c.amount),
                x.c.id,
                theirs,
            )
            .select_from(postings_of_period)
            .where(
                in_period,
                x.c.type.in_(INSTANT),
                is_sponsor_leg,
                pays_merchant,
                mine == party_id,
                theirs != party_id,
            )
            .group_by(x.c.id, p.c.asset, theirs)
        )
    for query in selects:
        await conn.execute(t.statement_entries.insert().from_select(columns, query))


async def _write_lines(conn: AsyncConnection, scheme: SchemeRecord, statement_id: str) -> None:
    e = t.statement_entries
    rows = await conn.execute(
        select(
            e.c.asset,
            e.c.kind,
            func.sum(e.c.amount).label("total"),
            func.sum(case((e.c.amount < 0, -e.c.amount), else_=literal_column("0"))).label(
                "refunded"
            ),
        )
        .where(e.c.statement_id == statement_id)
        .group_by(e.c.asset, e.c.kind)
    )
    totals: dict[str, dict[EntryKind, int]] = defaultdict(dict)
    refunded: dict[str, int] = defaultdict(int)
    for row in rows:
        kind = EntryKind(row.kind)
        totals[row.asset][kind] = int(row.total)
        if kind in (EntryKind.ACCEPTED, EntryKind.REDEEMED_ELSEWHERE):
            refunded[row.asset] += int(row.refunded)
    lines = [
        line(asset, totals[asset], refunded[asset], valuation_rate(scheme.redemption_rates, asset))
        for asset in sorted(totals)
    ]
    if lines:
        await conn.execute(
            t.statement_lines.insert(),
            [
                {
                    "statement_id": statement_id,
                    "asset": ln.asset,
                    "issued": ln.issued,
                    "reversed": ln.reversed,
                    "expired": ln.expired,
                    "redeemed_elsewhere": ln.redeemed_elsewhere,
                    "accepted": ln.accepted,
                    "refunded": ln.refunded,
                    "net": ln.net,
                    "net_value": ln.net_value,
                    "value_currency": ln.value_currency,
                }
                for ln in lines
            ],
        )


# -- scheduled settlement ---------------------------------------------------------------------

CLOSE_DELAY_US = 60 * 1_000_000  # a period is settled once it ended this long ago


async def due_chunk(
    conn: AsyncConnection, as_of_us: int, period: Period, chunk_max: int, now_us: int
) -> int:
    """Settle up to `chunk_max` parties that are behind: for each scheme, every party's next
    statement runs from where its last one ended (from the scheme's creation for its first)
    to the latest local period boundary. Returns how many statements were added."""
    done = 0
    schemes = await conn.execute(select(t.schemes.c.id).order_by(t.schemes.c.id))
    for scheme_id in [row.id for row in schemes]:
        scheme = await Reader(conn, now_us).get_scheme(scheme_id)
        moment = from_us(as_of_us - CLOSE_DELAY_US)
        boundary = to_us(last_boundary(moment, ZoneInfo(scheme.timezone), period))
        if boundary <= scheme.created_at_us:
            continue
        ends = await _last_ends(conn, scheme.id)
        since = min(ends.values(), default=scheme.created_at_us)
        candidates = set(ends) | set(await parties(conn, scheme.id, since, boundary))
        for party_id in sorted(candidates):
            start = ends.get(party_id, scheme.created_at_us)
            if start >= boundary:
                continue
            await settle_party(conn, scheme, party_id, start, boundary, now_us)
            done += 1
            if done >= chunk_max:
                return done
    return done


async def _last_ends(conn: AsyncConnection, scheme_id: str) -> dict[str, int]:
    """Each party's last statement end."""
    s = t.statements
    rows = await conn.execute(
        select(s.c.party_id, func.max(s.c.period_end_us).label("end"))
        .where(s.c.scheme_id == scheme_id)
        .group_by(s.c.party_id)
    )
    return {row.party_id: int(row.end) for row in rows}
