"""Pure ledger rules: amounts, expiry dates, lot selection. No I/O, no imports from siblings."""
