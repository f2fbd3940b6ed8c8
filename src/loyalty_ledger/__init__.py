"""Loyalty ledger with expiring balances, served over gRPC."""

__version__ = "0.1.0"
