"""Crash injection for the reliability tests (tests/reliability). Off unless configured.

With `LOYALTY_FAULT_FILE=<path>` set, a test arms one crash by writing `<point> <request_id>`
to that file. When the server reaches that point for that request_id it deletes the file (so a
restarted server does not crash again) and SIGKILLs itself. Points: `before_commit` (the
mutation ran, its transaction is still open) and `after_commit` (committed, reply not sent).
Without the variable, `crash_point` returns at once and never touches the file system.
"""

from __future__ import annotations

import os
import signal

FAULT_FILE_ENV = "LOYALTY_FAULT_FILE"


def crash_point(point: str, request_id: str) -> None:
    path = os.environ.get(FAULT_FILE_ENV)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as armed:
            target = armed.read().split()
    except FileNotFoundError:
        return
    if target == [point, request_id]:
        os.unlink(path)
        os.kill(os.getpid(), signal.SIGKILL)
