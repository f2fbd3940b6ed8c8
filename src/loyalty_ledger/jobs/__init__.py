"""Runs (expiry, expiry warning, hold timeout) and the APScheduler wiring that drives them."""
