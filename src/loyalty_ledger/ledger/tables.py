"""The relational schema (SQLAlchemy Core). Alembic migrations create exactly these tables.

Times are epoch microseconds (UTC) in BIGINT columns named `*_us`; amounts are BIGINT minor
units next to their asset code. Rule 3 of DESIGN.md is a CHECK constraint on `lots`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# SQLite autoincrements only an INTEGER PRIMARY KEY (the rowid alias).
SeqId = BigInteger().with_variant(Integer(), "sqlite")
Id = String(64)
Us = BigInteger
Amount = BigInteger

schemes = Table(
    "schemes",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("default_expiry_policy", Text, nullable=False),  # JSON, see domain.expiry
    Column("refund_expired_handling", String(16), nullable=False),
    Column("refund_grace_seconds", BigInteger, nullable=False),
    Column("cash_expiry_allowed", Boolean, nullable=False),
    Column("warning_lead_seconds", Text, nullable=False, server_default="[]"),  # JSON list
    Column("created_at_us", Us, nullable=False),
    Column("updated_at_us", Us, nullable=False),
    # JSON list of [asset, points, currency, value], see domain.redemption
    Column("redemption_rates", Text, nullable=False, server_default="[]"),
    Column("tier_program", Text, nullable=True),  # JSON, see domain.tiers; null: no tiers
    # JSON list of [kind, sponsor_id, basis_points], see domain.contributions; []: default
    Column("contributions", Text, nullable=False, server_default="[]"),
    Index(None, "created_at_us", "id"),
)

scheme_assets = Table(
    "scheme_assets",
    metadata,
    Column("scheme_id", Id, ForeignKey("schemes.id"), primary_key=True),
    Column("code", String(12), primary_key=True),
    Column("scale", Integer, nullable=False),
    CheckConstraint("scale >= 0 AND scale <= 6", name="scale_range"),
)

wallets = Table(
    "wallets",
    metadata,
    Column("id", Id, primary_key=True),
    Column("scheme_id", Id, ForeignKey("schemes.id"), nullable=False),
    Column("customer_ref", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", String(500), nullable=False, server_default=""),
    Column("merged_into", Id, nullable=True),
    Column("metadata", Text, nullable=False, server_default="{}"),
    Column("created_at_us", Us, nullable=False),
    Column("updated_at_us", Us, nullable=False),
    Column("tags", Text, nullable=False, server_default="[]"),  # JSON list, sorted
    Column("referred_by", Id, nullable=True),  # the referrer's wallet
    Column("referral_rewarded_at_us", Us, nullable=True),
    Column("birth_month", Integer, nullable=True),
    Column("birth_day", Integer, nullable=True),
    Column("tier_id", String(64), nullable=True),
    Column("tier_since_us", Us, nullable=True),
    Column("tier_checked_us", Us, nullable=True),  # the last evaluation's as-of time
    UniqueConstraint("scheme_id", "customer_ref"),
    Index(None, "created_at_us", "id"),
    Index(None, "scheme_id", "created_at_us", "id"),
)

# A wallet's lots are stored together: the primary key is (wallet_id, id), and on SQLite the
# table is clustered by it (WITHOUT ROWID, migration 0017). An expiry run takes due lots
# wallet by wallet, so a chunk then rewrites a few pages of a few wallets' lots, once each,
# instead of a page per lot scattered over the whole table (and the same pages again in the
# next chunks); a spend reads its wallet's lots from neighbouring rows too. Lots are still
# found by id alone through the unique index on `id`, which the foreign keys reference.
lots = Table(
    "lots",
    metadata,
    Column("id", Id, nullable=False),
    Column("wallet_id", Id, ForeignKey("wallets.id"), nullable=False),
    Column("scheme_id", Id, nullable=False),
    Column("asset", String(12), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("remaining", Amount, nullable=False),
    Column("spent", Amount, nullable=False, server_default="0"),
    Column("held", Amount, nullable=False, server_default="0"),
    Column("expired", Amount, nullable=False, server_default="0"),
    Column("reversed", Amount, nullable=False, server_default="0"),
    Column("state", String(16), nullable=False),
    Column("funding", String(16), nullable=False),
    Column("sponsor_id", String(64), nullable=True),
    Column("available_at_us", Us, nullable=False),
    Column("expires_at_us", Us, nullable=True),
    Column("merchant_ids", Text, nullable=False, server_default="[]"),  # JSON list
    Column("product_ids", Text, nullable=False, server_default="[]"),  # JSON list
    Column("source_transaction_id", Id, nullable=False),
    Column("origin_lot_id", Id, nullable=True),
    Column("created_at_us", Us, nullable=False),
    Column("inactivity_days", Integer, nullable=True),  # INACTIVITY policy, promotional only
    # When an expiry (a run or ExpireLot) closed the lot. Rule 5 in the schema: the trigger
    # `lots_expire_once` (migration 0016) refuses to write it a second time.
    Column("expired_at_us", Us, nullable=True),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint(
        "remaining >= 0 AND spent >= 0 AND held >= 0 AND expired >= 0 AND reversed >= 0",
        name="parts_non_negative",
    ),
    CheckConstraint("amount = remaining + spent + held + expired + reversed", name="parts_sum"),
    PrimaryKeyConstraint("wallet_id", "id"),
    UniqueConstraint("id"),
    Index(None, "wallet_id", "asset", "state"),
    # Expiry chunks read due lots in (expires_at_us, wallet_id, id) order straight from this
    # index: lots due at the same instant come wallet by wallet (see ledger/expiry_chunk.py).
    # Only open lots are in it, so expiring a lot deletes its entry and adds none. A query
    # uses it only if it says `state = 'OPEN'` as a literal (`LOT_IS_OPEN`): PostgreSQL's
    # generic plan for a bound `state = $1` cannot prove the index's condition.
    Index(
        "ix_lots_open_expires_at_us_wallet_id_id",
        "expires_at_us",
        "wallet_id",
        "id",
        sqlite_where=text("state = 'OPEN'"),
        postgresql_where=text("state = 'OPEN'"),
    ),
    sqlite_with_rowid=False,
)

# The condition of the open-lot expiry index, as the queries that should use it must write it.
LOT_IS_OPEN = lots.c.state == literal_column("'OPEN'")

# The order in which lots expire, are warned about and are listed as upcoming: soonest first,
# and lots due at the same instant wallet by wallet, so that an expiry chunk writes one EXPIRE
# entry per wallet for all of that wallet's due lots.
EXPIRY_ORDER = (lots.c.expires_at_us, lots.c.wallet_id, lots.c.id)

transactions = Table(
    "transactions",
    metadata,
    Column("id", Id, primary_key=True),
    Column("type", String(16), nullable=False),
    Column("scheme_id", Id, nullable=False),
    Column("wallet_id", Id, nullable=True),
    Column("counterpart_wallet_id", Id, nullable=True),
    Column("merchant_id", String(64), nullable=True),
    Column("hold_id", Id, nullable=True),
    Column("related_transaction_id", Id, nullable=True),
    Column("reference", String(128), nullable=False, server_default=""),
    Column("metadata", Text, nullable=False, server_default="{}"),
    Column("created_at_us", Us, nullable=False),
    Index(None, "wallet_id", "created_at_us", "id"),
    Index(None, "scheme_id", "created_at_us"),  # settlement and reports by period
    # Partial: most entries have neither, and every insert would otherwise index a NULL.
    Index(
        None,
        "counterpart_wallet_id",
        "created_at_us",
        "id",
        sqlite_where=text("counterpart_wallet_id IS NOT NULL"),
        postgresql_where=text("counterpart_wallet_id IS NOT NULL"),
    ),
    Index(
        None,
        "related_transaction_id",
        sqlite_where=text("related_transaction_id IS NOT NULL"),
        postgresql_where=text("related_transaction_id IS NOT NULL"),
    ),
)

postings = Table(
    "postings",
    metadata,
    Column("id", SeqId, primary_key=True, autoincrement=True),
    Column("transaction_id", Id, ForeignKey("transactions.id"), nullable=False),
    Column("account", String(200), nullable=False),
    Column("asset", String(12), nullable=False),
    Column("amount", Amount, nullable=False),
    CheckConstraint("amount <> 0", name="amount_non_zero"),
    Index(None, "transaction_id"),
    Index(None, "account", "asset"),
)

allocations = Table(
    "allocations",
    metadata,
    Column("id", SeqId, primary_key=True, autoincrement=True),
    Column("transaction_id", Id, ForeignKey("transactions.id"), nullable=False),
    Column("lot_id", Id, ForeignKey("lots.id"), nullable=False),
    Column("wallet_id", Id, nullable=False),
    Column("asset", String(12), nullable=False),
    Column("amount", Amount, nullable=False),
    CheckConstraint("amount <> 0", name="amount_non_zero"),
    Index(None, "transaction_id"),
    # A lot's allocations, found through its wallet: an expiry run writes them wallet by
    # wallet, so keyed this way they are appended in order, not scattered over the index.
    Index(None, "wallet_id", "lot_id"),
)

holds = Table(
    "holds",
    metadata,
    Column("id", Id, primary_key=True),
    Column("wallet_id", Id, ForeignKey("wallets.id"), nullable=False),
    Column("scheme_id", Id, nullable=False),
    Column("asset", String(12), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("captured_amount", Amount, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),
    Column("merchant_id", String(64), nullable=False),
    Column("product_ids", Text, nullable=False, server_default="[]"),
    Column("reference", String(128), nullable=False, server_default=""),
    Column("expires_at_us", Us, nullable=False),
    Column("hold_transaction_id", Id, nullable=False),
    Column("created_at_us", Us, nullable=False),
    Column("updated_at_us", Us, nullable=False),
    CheckConstraint(
        "amount > 0 AND captured_amount >= 0 AND captured_amount <= amount", name="amounts"
    ),
    Index(None, "wallet_id", "status"),
    Index(None, "status", "expires_at_us"),
)

# What each active hold reserves from each lot (moves with the lot on a merge).
hold_allocations = Table(
    "hold_allocations",
    metadata,
    Column("hold_id", Id, ForeignKey("holds.id"), primary_key=True),
    Column("lot_id", Id, ForeignKey("lots.id"), primary_key=True),
    Column("amount", Amount, nullable=False),
    CheckConstraint("amount >= 0", name="amount_non_negative"),
    Index(None, "lot_id"),
)

idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("scope", String(128), primary_key=True),
    Column("request_id", String(64), primary_key=True),
    Column("method", String(128), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("response", LargeBinary, nullable=True),
    Column("created_at_us", Us, nullable=False),
    Column("expires_at_us", Us, nullable=False),
    Index(None, "expires_at_us"),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("seq", SeqId, primary_key=True, autoincrement=True),
    Column("event_id", Id, nullable=False, unique=True),
    Column("type", String(32), nullable=False),
    Column("scheme_id", Id, nullable=False),
    Column("wallet_id", Id, nullable=True),
    Column("transaction_id", Id, nullable=True),
    Column("payload", Text, nullable=False),
    Column("created_at_us", Us, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Id, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("as_of_us", Us, nullable=False),
    Column("status", String(16), nullable=False),
    Column("items_processed", BigInteger, nullable=False, server_default="0"),
    Column("chunks_committed", BigInteger, nullable=False, server_default="0"),
    Column("error", String(1000), nullable=False, server_default=""),
    Column("trigger", String(16), nullable=False),
    Column("started_at_us", Us, nullable=False),
    Column("finished_at_us", Us, nullable=True),
    Index(None, "kind", "started_at_us", "id"),
    Index(None, "status"),
)

# A warning goes out once per (lot, lead time, expiry instant): extending a lot re-arms it.
expiry_warnings = Table(
    "expiry_warnings",
    metadata,
    Column("lot_id", Id, ForeignKey("lots.id"), primary_key=True),
    Column("lead_seconds", BigInteger, primary_key=True),
    Column("expires_at_us", Us, primary_key=True),
    Column("run_id", Id, nullable=False),
    Column("created_at_us", Us, nullable=False),
)

# Scheduled jobs run on one replica at a time: whoever holds an unexpired lease.
job_leases = Table(
    "job_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("fencing_token", BigInteger, nullable=False),
    Column("expires_at_us", Us, nullable=False),
)

# Offers. The definition (rule, conditions, award settings) is the API's JSON form of the
# offer, opaque to the ledger; the columns beside it are what the ledger itself needs.
offers = Table(
    "offers",
    metadata,
    Column("id", Id, primary_key=True),
    Column("scheme_id", Id, ForeignKey("schemes.id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("definition", Text, nullable=False),
    Column("budget", Amount, nullable=True),
    Column("budget_used", Amount, nullable=False, server_default="0"),
    Column("version", BigInteger, nullable=False),
    Column("copied_from_offer_id", Id, nullable=True),
    Column("created_at_us", Us, nullable=False),
    Column("updated_at_us", Us, nullable=False),
    # A budget is never overshot, whatever the code does.
    CheckConstraint(
        "budget_used >= 0 AND (budget IS NULL OR budget_used <= budget)", name="within_budget"
    ),
    Index(None, "scheme_id", "created_at_us", "id"),
    Index(None, "scheme_id", "status"),
)

# The audit trail: every change of an offer, with the offer as it was after it.
offer_changes = Table(
    "offer_changes",
    metadata,
    Column("offer_id", Id, ForeignKey("offers.id"), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("action", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(500), nullable=False, server_default=""),
    Column("snapshot", Text, nullable=False),
    Column("created_at_us", Us, nullable=False),
)

# What an offer has given a wallet per cap window ("DAY" 2026-11-23, "MONTH" 2026-11,
# "LIFETIME" ""), and how many qualifying purchases it has seen ("QUALIFYING" "").
offer_usage = Table(
    "offer_usage",
    metadata,
    Column("offer_id", Id, ForeignKey("offers.id"), primary_key=True),
    Column("wallet_id", Id, ForeignKey("wallets.id"), primary_key=True),
    Column("cap_window", String(16), primary_key=True),
    Column("period_key", String(16), primary_key=True),
    Column("award_count", BigInteger, nullable=False),
    Column("award_amount", Amount, nullable=False),
)

# Submitted customer events, kept so a return can reverse their awards (ReverseEvent).
customer_events = Table(
    "customer_events",
    metadata,
    Column("id", Id, primary_key=True),
    Column("wallet_id", Id, ForeignKey("wallets.id"), nullable=False),
    Column("scheme_id", Id, nullable=False),
    Column("type", String(16), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("currency", String(12), nullable=False),
    Column("items", Text, nullable=False),  # JSON: [[product_id, quantity, unit_price], ...]
    Column("returned_items", Text, nullable=False, server_default="{}"),  # JSON: id -> quantity
    Column("returned_amount", Amount, nullable=False, server_default="0"),
    Column("reference", String(128), nullable=False, server_default=""),
    Column("merchant_id", String(64), nullable=False, server_default=""),
    Column("occurred_at_us", Us, nullable=False),
    Column("created_at_us", Us, nullable=False),
    CheckConstraint("returned_amount >= 0 AND returned_amount <= amount", name="returned_range"),
)

# The awards an event produced, and how much of each has been reversed.
event_awards = Table(
    "event_awards",
    metadata,
    Column("transaction_id", Id, ForeignKey("transactions.id"), primary_key=True),
    Column("event_id", Id, ForeignKey("customer_events.id"), nullable=False),
    Column("offer_id", Id, ForeignKey("offers.id"), nullable=False),
    Column("lot_id", Id, nullable=True),  # ON_ACCOUNT awards
    Column("asset", String(12), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("instant", Boolean, nullable=False),
    Column("sponsor_id", String(64), nullable=False),
    Column("merchant_id", String(64), nullable=False, server_default=""),
    Column("reversed", Amount, nullable=False, server_default="0"),
    CheckConstraint("reversed >= 0 AND reversed <= amount", name="reversed_range"),
    Index(None, "event_id"),
)

# Promotion codes: a batch says what each redemption credits; the counts per code and per
# (code, wallet) carry their limits, so CHECK constraints refuse an extra redemption whatever
# the code does.
promotion_batches = Table(
    "promotion_batches",
    metadata,
    Column("id", Id, primary_key=True),
    Column("scheme_id", Id, ForeignKey("schemes.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("asset", String(12), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("sponsor_id", String(64), nullable=False),
    Column("expiry_policy", Text, nullable=True),  # JSON, see domain.expiry; null: scheme's
    Column("max_per_code", BigInteger, nullable=False),
    Column("max_per_wallet", BigInteger, nullable=False),
    Column("valid_from_us", Us, nullable=True),
    Column("valid_until_us", Us, nullable=True),
    Column("created_at_us", Us, nullable=False),
    CheckConstraint("amount > 0 AND max_per_code > 0 AND max_per_wallet > 0", name="positive"),
)

promotion_codes = Table(
    "promotion_codes",
    metadata,
    Column("scheme_id", Id, ForeignKey("schemes.id"), primary_key=True),
    Column("code", String(32), primary_key=True),
    Column("batch_id", Id, ForeignKey("promotion_batches.id"), nullable=False),
    Column("redemptions", BigInteger, nullable=False, server_default="0"),
    Column("max_redemptions", BigInteger, nullable=False),
    CheckConstraint("redemptions >= 0 AND redemptions <= max_redemptions", name="within_limit"),
    Index(None, "batch_id"),
)

code_redemptions = Table(
    "code_redemptions",
    metadata,
    Column("scheme_id", Id, primary_key=True),
    Column("code", String(32), primary_key=True),
    Column("wallet_id", Id, ForeignKey("wallets.id"), primary_key=True),
    Column("redemptions", BigInteger, nullable=False),
    Column("max_redemptions", BigInteger, nullable=False),
    CheckConstraint("redemptions >= 1 AND redemptions <= max_redemptions", name="within_limit"),
)

# The birthday run's record: one BIRTHDAY event per wallet and local year, whatever reruns.
birthday_events = Table(
    "birthday_events",
    metadata,
    Column("wallet_id", Id, ForeignKey("wallets.id"), primary_key=True),
    Column("year", Integer, primary_key=True),
    Column("event_id", Id, nullable=False),
    Column("run_id", Id, nullable=True),
    Column("created_at_us", Us, nullable=False),
)

# Every change of a wallet's tier, with the qualifying amount that decided it.
tier_changes = Table(
    "tier_changes",
    metadata,
    Column("id", Id, primary_key=True),
    Column("wallet_id", Id, ForeignKey("wallets.id"), nullable=False),
    Column("scheme_id", Id, nullable=False),
    Column("from_tier", String(64), nullable=True),
    Column("to_tier", String(64), nullable=True),
    Column("qualifying", Amount, nullable=False),
    Column("cause", String(16), nullable=False),
    Column("run_id", Id, nullable=True),
    Column("created_at_us", Us, nullable=False),
    Index(None, "wallet_id", "created_at_us", "id"),
)

# Merchants and merchant groups of a scheme (SettlementService).
merchants = Table(
    "merchants",
    metadata,
    Column("scheme_id", Id, ForeignKey("schemes.id"), primary_key=True),
    Column("id", Id, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at_us", Us, nullable=False),
    Column("updated_at_us", Us, nullable=False),
    Index(None, "scheme_id", "created_at_us", "id"),
)

merchant_groups = Table(
    "merchant_groups",
    metadata,
    Column("scheme_id", Id, ForeignKey("schemes.id"), primary_key=True),
    Column("id", Id, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at_us", Us, nullable=False),
)

merchant_group_members = Table(
    "merchant_group_members",
    metadata,
    Column("scheme_id", Id, primary_key=True),
    Column("group_id", Id, primary_key=True),
    Column("merchant_id", Id, primary_key=True),
    Index(None, "scheme_id", "merchant_id"),
)

# Settlement statements: immutable, one per (party, period); a party's statements are numbered
# 1, 2, 3, ... so two concurrent runs cannot both add the next one (the unique keys decide).
statements = Table(
    "statements",
    metadata,
    Column("id", Id, primary_key=True),
    Column("scheme_id", Id, ForeignKey("schemes.id"), nullable=False),
    Column("party_id", Id, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("period_start_us", Us, nullable=False),
    Column("period_end_us", Us, nullable=False),
    Column("created_at_us", Us, nullable=False),
    CheckConstraint("sequence >= 1 AND period_start_us < period_end_us", name="valid"),
    UniqueConstraint("scheme_id", "party_id", "sequence"),
    UniqueConstraint("scheme_id", "party_id", "period_start_us"),
    Index(None, "scheme_id", "period_start_us", "party_id"),
)

statement_lines = Table(
    "statement_lines",
    metadata,
    Column("statement_id", Id, ForeignKey("statements.id"), primary_key=True),
    Column("asset", String(12), primary_key=True),
    Column("issued", Amount, nullable=False),
    Column("reversed", Amount, nullable=False),
    Column("expired", Amount, nullable=False),
    Column("redeemed_elsewhere", Amount, nullable=False),
    Column("accepted", Amount, nullable=False),
    Column("refunded", Amount, nullable=False),
    Column("net", Amount, nullable=False),
    Column("net_value", Amount, nullable=False),
    Column("value_currency", String(12), nullable=False),
)

# The ledger transactions behind each statement line.
statement_entries = Table(
    "statement_entries",
    metadata,
    Column("id", SeqId, primary_key=True, autoincrement=True),
    Column("statement_id", Id, ForeignKey("statements.id"), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("asset", String(12), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("transaction_id", Id, nullable=False),
    Column("counterparty_id", String(64), nullable=False),
    Index(None, "statement_id", "id"),
)

# API keys: only a SHA-256 of each secret is kept (the secrets are random, 256 bits).
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("scheme_ids", Text, nullable=False, server_default="[]"),  # JSON list
    Column("merchant_id", String(64), nullable=False, server_default=""),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("created_at_us", Us, nullable=False),
    Column("revoked_at_us", Us, nullable=True),
    Index(None, "created_at_us", "id"),
)
