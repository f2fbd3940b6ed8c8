"""Outbox reader and the subscriber hub behind WatchExpirations."""
