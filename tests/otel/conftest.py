"""In-memory OpenTelemetry: a span exporter, a metric reader and a log exporter per test."""

from __future__ import annotations

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sil_core import Guard
from sil_core.otel import instrument, uninstrument


class Otel:
    """One test's providers and what they collected."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = self.tracer_provider.get_tracer("test")
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.logs = InMemoryLogRecordExporter()
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.logs))

    def instrument(self, guard: Guard, **kwargs):
        return instrument(guard, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider,
                          logger_provider=self.logger_provider, **kwargs)

    def finished(self, name_prefix: str = "") -> list:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(name_prefix)]

    def points(self, metric: str) -> list:
        """``[(attributes, point)]`` of one metric (empty if never recorded)."""
        data = self.reader.get_metrics_data()
        out = []
        for rm in (data.resource_metrics if data else ()):
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        out += [(dict(p.attributes), p) for p in m.data.data_points]
        return out

    def decisions(self) -> list:
        """``[(event_name, attributes, body)]`` of the decision log records."""
        return [(r.log_record.event_name, dict(r.log_record.attributes), r.log_record.body)
                for r in self.logs.get_finished_logs()]

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()


@pytest.fixture
def otel():
    o = Otel()
    yield o
    o.close()


@pytest.fixture
def guard(otel):
    g = Guard("memory://", flush_interval=0.01, refresh_interval=0.01)
    otel.instrument(g)
    yield g
    uninstrument(g)
    g.close()
