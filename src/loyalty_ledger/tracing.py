"""OpenTelemetry tracing of gRPC calls, when LOYALTY_OTEL=true (the `otel` extra installed).

Imported lazily: the default install has no OpenTelemetry at all. Each App gets its own
TracerProvider (not the process-wide one), so tests can run several servers and inspect one.
The standard OTEL_* variables apply: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES for the
resource, OTEL_TRACES_EXPORTER (`otlp`, the default; `console`; or `none`), and the OTLP
exporter's own OTEL_EXPORTER_OTLP_* variables (endpoint, headers, TLS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import grpc

DEFAULT_SERVICE_NAME = "loyalty-ledger"


class TracingUnavailable(RuntimeError):
    """LOYALTY_OTEL=true without the OpenTelemetry packages."""


@dataclass
class Tracing:
    provider: Any  # opentelemetry.sdk.trace.TracerProvider
    interceptor: grpc.aio.ServerInterceptor

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporter."""
        self.provider.shutdown()


def _exporter(name: str) -> Any:
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: use otlp, console or none")


def setup() -> Tracing:
    """A tracer provider exporting as OTEL_TRACES_EXPORTER says, and the server interceptor."""
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as error:
        raise TracingUnavailable(
            "LOYALTY_OTEL=true needs the OpenTelemetry packages: pip install 'loyalty-ledger[otel]'"
        ) from error
    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", DEFAULT_SERVICE_NAME)}
    )
    provider = TracerProvider(resource=resource)
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter_name != "none":
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter_name)))
    return Tracing(provider, aio_server_interceptor(tracer_provider=provider))
