"""Storage and the posting engine: tables, unit of work, idempotency, outbox."""
