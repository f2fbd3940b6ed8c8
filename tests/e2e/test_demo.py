"""`loyalty demo` end to end: it starts its own server (test clock, temporary database) as a
child process, narrates the tour and exits 0 with the warning, the expiry and the statements
in its output."""

from __future__ import annotations

import os
import subprocess
import sys

DEMO_TIMEOUT_S = 60.0


def test_demo_runs_the_tour_and_exits_zero() -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "loyalty_ledger.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Traceback" not in out + done.stderr
    assert "EXPIRING_SOON" in out  # the 48-hour warning, live from the stream
    assert "EXPIRED" in out
    assert out.index("EXPIRING_SOON") < out.index("EXPIRED")
    for party in ("shop-a", "shop-b", "brand-x"):
        assert f"statement 1 of {party}" in out
    assert "instant discount" in out
    assert "demo finished" in out


def test_demo_failure_is_one_line() -> None:
    env = {**os.environ, "LOYALTY_LOG_FORMAT": "bogus"}  # the demo's server refuses to start
    done = subprocess.run(
        [sys.executable, "-m", "loyalty_ledger.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: demo: the server exited with code 1: "), line
    assert "LOYALTY_LOG_FORMAT" in line
