"""Named limits on every input (TigerStyle: put a limit on everything, test at the limit)."""

from __future__ import annotations

REQUEST_ID_CHARS_MAX = 64
SCHEME_ID_CHARS_MIN = 3  # a caller-chosen scheme_id: 3 to ID_CHARS_MAX characters
ID_CHARS_MAX = 64
CUSTOMER_REF_CHARS_MAX = 128
NAME_CHARS_MAX = 200
REFERENCE_CHARS_MAX = 128
REASON_CHARS_MAX = 500
TIMEZONE_CHARS_MAX = 64
AMOUNT_MAX = 10**15  # minor units; far below int64 so sums of many lots cannot overflow
METADATA_ENTRIES_MAX = 16
METADATA_KEY_CHARS_MAX = 64
METADATA_VALUE_CHARS_MAX = 256
CONDITION_IDS_MAX = 100  # merchant or product ids in spend conditions and spends
ASSETS_MAX = 16
ASSET_SCALE_MAX = 6
HOLD_TTL_DEFAULT_SECONDS = 15 * 60
HOLD_TTL_SECONDS_MAX = 7 * 24 * 3600
REFUND_GRACE_SECONDS_MIN = 3600
REFUND_GRACE_SECONDS_MAX = 366 * 24 * 3600
REFUND_GRACE_SECONDS_DEFAULT = 30 * 24 * 3600
FIELD_VIOLATIONS_MAX = 20  # error details travel in a size-limited trailer
TIMESTAMP_YEAR_MAX = 9999
WARNING_LEAD_TIMES_MAX = 8
WARNING_LEAD_SECONDS_MIN = 3600
WARNING_LEAD_SECONDS_MAX = 366 * 24 * 3600
EVENT_BATCH_MAX = 500  # SubmitEvents
# Events of one SubmitEvents call handed to the writer at once: about one group commit.
EVENT_BATCH_IN_FLIGHT_MAX = 64
REDEMPTION_RATES_MAX = 8  # per scheme
PROMOTION_CODES_MAX = 10_000  # per CreatePromotionCodes
WALLET_TAGS_MAX = 32
WATCH_WALLET_IDS_MAX = 1_000  # wallet_ids of one WatchExpirations filter
WATCH_EVENTS_PER_MESSAGE_MAX = 500  # max_events_per_message of WatchExpirations
TIERS_MAX = 16  # per tier programme
TIER_WINDOW_DAYS_MAX = 1096  # three years
