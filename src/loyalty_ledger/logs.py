"""Log lines that say which call or run they belong to, as text or as one JSON object a line.

An interceptor (`api/telemetry.py`) puts the call's request id and full method name into
context variables; the runner does the same for a run's id and kind. `ContextFilter` copies
them onto every record, so any line logged while a call or run is under way carries them,
whichever module logged it. Tasks started during a call inherit the variables (asyncio
copies the context), so a run started by RunExpiry logs with the call's request id too.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
method_var: contextvars.ContextVar[str] = contextvars.ContextVar("method", default="")
run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="")
run_kind_var: contextvars.ContextVar[str] = contextvars.ContextVar("run_kind", default="")

# Context fields in the order they are shown; empty ones are left out.
CONTEXT_FIELDS = ("request_id", "method", "run_id", "run_kind", "trace_id")
# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _trace_id() -> str:
    """The current OpenTelemetry trace id, when tracing is on (never imports it itself)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


class ContextFilter(logging.Filter):
    """Adds request_id, method, run_id, run_kind and trace_id ("" when not set) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.method = method_var.get()
        record.run_id = run_id_var.get()
        record.run_kind = run_kind_var.get()
        record.trace_id = _trace_id()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and key not in CONTEXT_FIELDS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, the context fields
    that are set, any `extra=` fields, and the stack trace as `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, "")
            if value:
                line[key] = value
        line.update(_extras(record))
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...` with the context fields that are set."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        pairs = [(key, getattr(record, key, "")) for key in CONTEXT_FIELDS]
        pairs += list(_extras(record).items())
        suffix = "".join(f" {key}={value}" for key, value in pairs if value not in ("", None))
        return super().formatMessage(record) + suffix


def handler(log_format: LogFormat, stream: Any = None) -> logging.Handler:
    """A stream handler (stderr by default) with the context filter and the chosen format."""
    out = logging.StreamHandler(stream if stream is not None else sys.stderr)
    out.addFilter(ContextFilter())
    out.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return out


def configure(level: str, log_format: LogFormat) -> None:
    """Replace the root logger's handlers with one for `log_format` (for `loyalty serve`)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(log_format))
    root.setLevel(level.upper())


@contextlib.contextmanager
def run_context(run_id: str, run_kind: str) -> Iterator[None]:
    """Lines logged inside carry the run's id and kind."""
    id_token = run_id_var.set(run_id)
    kind_token = run_kind_var.set(run_kind)
    try:
        yield
    finally:
        run_kind_var.reset(kind_token)
        run_id_var.reset(id_token)
