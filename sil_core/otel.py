"""OpenTelemetry export (the ``[otel]`` extra): spans, metrics and decision events.

``instrument(guard)`` registers an observer (``sil_core.observe``) that turns what a guard
does into OpenTelemetry signals, through the providers you configured (the global ones by
default). Off until you call it; ``uninstrument(guard)`` stops it. sil_core still imports
only the standard library: OpenTelemetry is imported inside :func:`instrument`, which raises
:class:`~sil_core.MissingExtra` naming ``pip install 'sil-guard[otel]'`` without it.

* **Calls**: one span per guarded call, ``invoke_agent <target>`` (kind ``INTERNAL``),
  started on the caller's thread inside the caller's context, so it nests under the
  current span, and made current for the call's duration, so what the call does (model and
  tool spans, a LangGraph node's children) nests under it. Attributes follow the GenAI
  semantic conventions where they fit (``gen_ai.operation.name``, ``gen_ai.agent.name``,
  ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``error.type``) plus ``sil.target``,
  ``sil.version``, ``sil.arm``, ``sil.change_id``, ``sil.outcome``, ``sil.call_id``,
  ``sil.score``, ``sil.cost_usd`` and ``sil.metric.<name>``.
* **Metrics**: ``sil.calls`` (counter), ``sil.call.duration`` (histogram, s),
  ``sil.call.tokens``, ``sil.call.cost``, ``sil.call.score``, ``sil.call.metric`` (histograms
  of the judged metrics, from calls and from late feedback) and ``sil.feedback`` (counter).
* **Decisions**: every trail event becomes a log record (``event_name`` ``sil.rollback``,
  ``sil.promoted``, ...: :data:`DECISION_NAMES`) with its evidence, and a short span
  ``sil.decision`` whose ``sil.event`` attribute and span event carry the same name.
* **Late feedback** (an evaluator's score, a thumbs-down) never rewrites an ended span: it
  is a short span ``sil.feedback`` linked to the call's span (when this process made the
  call, among its last :data:`LINKED_CALLS_MAX`), carrying ``sil.call_id`` in any case.

See ``docs/observability.md`` for the setup, the attribute table and alerting.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .errors import MissingExtra

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("DECISION_NAMES", "LINKED_CALLS_MAX", "OtelObserver", "instrument", "uninstrument")

#: trail event type -> the decision's event name; any other type ``t`` becomes ``sil.<t>``
DECISION_NAMES = {
    "change_proposed": "sil.change_proposed",
    "change_applied": "sil.change_applied",
    "change_rejected": "sil.change_rejected",
    "arm_weight_changed": "sil.ramp",
    "verdict": "sil.verdict",
    "rollback_started": "sil.rollback",
    "rollback_succeeded": "sil.rollback_succeeded",
    "restore_failed": "sil.restore_failed",
    "promoted": "sil.promoted",
    "watch_regressed": "sil.watch_regressed",
    "reverted": "sil.reverted",
}
#: how many recent calls keep their span context, for linking late feedback to them
LINKED_CALLS_MAX = 10_000
_WARN = frozenset({"rollback_started", "watch_regressed", "reverted", "adapter_error", "strategy_error",
                   "notifier_error", "change_rejected", "paused"})
_ERROR = frozenset({"restore_failed"})
_FAILED = frozenset({"error", "retried"})  # outcomes whose span status is ERROR
#: reserved metrics with their own attribute (the others are ``sil.metric.<name>``)
_METRIC_ATTRS = {"tokens_in": "gen_ai.usage.input_tokens", "tokens_out": "gen_ai.usage.output_tokens",
                 "cost_usd": "sil.cost_usd"}
_DURATION_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_COST_BUCKETS = (0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_ATTR_CACHE_MAX = 4096
_EVENT_SKIP = frozenset({"target", "change_id", "actor", "ts"})  # given their own attributes (ts: the record's)

_instrumented: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # guard -> its observer
_lock = threading.Lock()


def instrument(guard: "Guard", tracer_provider: Any = None, meter_provider: Any = None, *,
               logger_provider: Any = None, decisions: tuple[str, ...] = ("logs", "spans")) -> "OtelObserver":
    """Export ``guard``'s calls, metrics and decisions to OpenTelemetry.

    Args:
        guard: the guard to instrument (instrumenting it again replaces the first one).
        tracer_provider: where call, decision and feedback spans go (default: the global one).
        meter_provider: where the ``sil.*`` metrics go (default: the global one).
        logger_provider: where decision log records go (default: the global one, a no-op
            until you set one).
        decisions: how trail events are emitted: ``"logs"`` (log records), ``"spans"``
            (``sil.decision`` spans), or both (the default).

    Returns:
        The observer (``uninstrument(guard)`` removes it).

    Raises:
        MissingExtra: OpenTelemetry is not installed (``pip install 'sil-guard[otel]'``).

    Example:
        ```python
        from sil_core import Guard
        from sil_core.otel import instrument, uninstrument

        guard = Guard("memory://")
        instrument(guard)                 # the global providers: set them up first
        with guard.call("agent"):
            pass
        uninstrument(guard)
        guard.close()
        ```
    """
    try:
        from opentelemetry import context, metrics, trace
    except ImportError as exc:
        raise MissingExtra("otel", "opentelemetry-api") from exc
    observer = OtelObserver(guard, context, trace, metrics, tracer_provider, meter_provider, logger_provider,
                            decisions)
    with _lock:
        old = _instrumented.pop(guard, None)
        _instrumented[guard] = observer
    if old is not None:
        guard.remove_observer(old)
    guard.add_observer(observer)
    return observer


def uninstrument(guard: "Guard") -> bool:
    """Stop exporting ``guard`` (calls already started still end their spans); ``True`` if
    it was instrumented."""
    with _lock:
        observer = _instrumented.pop(guard, None)
    if observer is None:
        return False
    guard.remove_observer(observer)
    return True


class OtelObserver:
    """The observer :func:`instrument` registers (see ``sil_core.observe``); every method
    runs inside the guard's fail-open isolation, so a broken exporter never breaks a call."""

    def __init__(self, guard: Any, context: Any, trace: Any, metrics: Any, tracer_provider: Any,
                 meter_provider: Any, logger_provider: Any, decisions: tuple[str, ...]) -> None:
        from . import __version__

        self._guard = weakref.ref(guard)  # the guard's registry holds this observer: no cycle through it
        self._context, self._trace = context, trace
        self._set_span, self._attach = trace.set_span_in_context, context.attach
        self._current_span = trace.get_current_span
        self._INTERNAL = trace.SpanKind.INTERNAL
        self._Status, self._ERROR = trace.Status, trace.StatusCode.ERROR
        self._Link = trace.Link
        self.tracer = trace.get_tracer("sil_core", __version__, tracer_provider)
        meter = metrics.get_meter("sil_core", __version__, meter_provider)
        self._calls = meter.create_counter("sil.calls", unit="{call}", description="Guarded calls")
        self._duration = _histogram(meter, "sil.call.duration", "s", "Duration of guarded calls", _DURATION_BUCKETS)
        self._tokens = _histogram(meter, "sil.call.tokens", "{token}", "Tokens per guarded call", _TOKEN_BUCKETS)
        self._cost = _histogram(meter, "sil.call.cost", "{USD}", "Cost per guarded call (US dollars)", _COST_BUCKETS)
        self._score = _histogram(meter, "sil.call.score", "1", "Quality score per guarded call", _SCORE_BUCKETS)
        self._custom = _histogram(meter, "sil.call.metric", "1", "Custom numeric metrics of guarded calls", None)
        self._feedback = meter.create_counter("sil.feedback", unit="{feedback}", description="Late feedback given")
        self._log = _log_emitter(logger_provider, __version__) if "logs" in decisions else None
        self._decision_spans = "spans" in decisions
        self._linked: OrderedDict[str, tuple] = OrderedDict()  # call_id -> (span context, target, version, arm)
        self._attrs: dict[tuple, dict] = {}  # (target, version, arm, outcome) -> attributes of the metrics

    # -- calls -----------------------------------------------------------------------------
    def call_started(self, info: Any) -> tuple:
        """Start the call's span in the caller's context and make it current."""
        target, version, arm = info.target, info.version, info.arm
        attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": target, "sil.target": target}
        if version is not None:
            attrs["sil.version"] = version
        if arm is not None:
            attrs["sil.arm"] = arm
            change_id = self._change_id(target, version)
            if change_id is not None:
                attrs["sil.change_id"] = change_id
        span = self.tracer.start_span(f"invoke_agent {target}", kind=self._INTERNAL, attributes=attrs)
        if getattr(info, "detached", False):  # an agent run: current only inside its steps
            return span, None
        if not span.is_recording():  # a no-op tracer passes the caller's span on: keep that one current
            ctx = span.get_span_context()
            if not ctx.is_valid or ctx == self._current_span().get_span_context():
                return span, None
        return span, self._attach(self._set_span(span))

    def _change_id(self, target: str, version: str | None) -> str | None:
        """The change the call's arm belongs to (this worker's view of the target)."""
        guard = self._guard()
        if guard is None:
            return None
        try:
            view = guard.view(target)
        except Exception:  # the span goes without it
            return None
        if view.change_id is not None and version in (view.candidate, view.baseline):
            return view.change_id
        return None

    def call_entered(self, state: tuple) -> Any:
        """A step of a detached call (a model or tool call of an agent run): its span is current."""
        return self._attach(self._set_span(state[0]))

    def call_exited(self, state: tuple, token: Any) -> None:
        _detach(self._context, token, state[0], self._trace)

    def call_ended(self, state: tuple, record: Any) -> None:
        """End the span with the call's outcome, restore the caller's context, count it."""
        span, token = state
        try:
            if token is not None:
                _detach(self._context, token, span, self._trace)
        finally:
            if span.is_recording():
                self._end_span(span, record)
            span.end()
        self._measure(record)

    def _end_span(self, span: Any, record: Any) -> None:
        attrs: dict[str, Any] = {"sil.outcome": record.outcome}
        if record.id is not None:
            attrs["sil.call_id"] = record.id
            self._remember(record, span.get_span_context())
        if record.attempt and record.attempt > 1:
            attrs["sil.attempt"] = record.attempt
        if record.score is not None:
            attrs["sil.score"] = record.score
        if record.metrics:
            _metric_attrs(record.metrics, attrs)
        if record.outcome in _FAILED:
            etype = record.error_type or "_OTHER"
            attrs["error.type"] = etype
            span.set_status(self._Status(self._ERROR, record.error_message or etype))
            if record.error_message:
                span.add_event("exception", {"exception.type": etype, "exception.message": record.error_message})
        elif record.error_type:
            attrs["sil.control_flow"] = record.error_type  # interrupted, cancelled: not an error
        span.set_attributes(attrs)

    def _remember(self, record: Any, span_context: Any) -> None:
        linked = self._linked
        linked[record.id] = (span_context, record.target, record.version, record.arm)
        if len(linked) > LINKED_CALLS_MAX:
            try:
                linked.popitem(last=False)
            except KeyError:  # another thread evicted first
                pass

    def _measure(self, record: Any) -> None:
        key = (record.target, record.version, record.arm, record.outcome)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = _base_attrs(record.target, record.version, record.arm)
            attrs["sil.outcome"] = record.outcome
            if len(self._attrs) >= _ATTR_CACHE_MAX:
                self._attrs.clear()
            self._attrs[key] = attrs
        self._calls.add(1, attrs)
        self._duration.record(record.duration_s, attrs)
        if record.score is not None or record.metrics:
            self._judged(_base_attrs(record.target, record.version, record.arm, "call"), record.score, record.metrics)

    def _judged(self, attrs: dict, score: float | None, values: dict | None) -> None:
        """The judged metrics (tokens, cost, score, custom) of a call or of feedback."""
        if score is not None:
            self._score.record(score, attrs)
        for name, value in (values or {}).items():
            if name == "tokens_in" or name == "tokens_out":
                self._tokens.record(value, {**attrs, "gen_ai.token.type": "input" if name == "tokens_in" else "output"})
            elif name == "cost_usd":
                self._cost.record(value, attrs)
            else:
                self._custom.record(value, {**attrs, "sil.metric": name})

    # -- late feedback ---------------------------------------------------------------------
    def feedback_given(self, fb: Any) -> None:
        """A short ``sil.feedback`` span linked to the call's span (when known here)."""
        known = self._linked.get(fb.call_id)
        target, version, arm = known[1:] if known else (None, None, None)
        attrs: dict[str, Any] = {"sil.call_id": fb.call_id}
        attrs.update(_base_attrs(target, version, arm))
        if fb.success is not None:
            attrs["sil.feedback.success"] = fb.success
        if fb.score is not None:
            attrs["sil.score"] = fb.score
        if fb.metrics:
            _metric_attrs(fb.metrics, attrs)
        links = [self._Link(known[0])] if known else None
        span = self.tracer.start_span("sil.feedback", kind=self._INTERNAL, attributes=attrs, links=links)
        span.add_event("sil.feedback", attrs)
        span.end()
        counted = _base_attrs(target, version, arm)
        if fb.success is not None:
            counted["sil.feedback.success"] = fb.success
        self._feedback.add(1, counted)
        if fb.score is not None or fb.metrics:
            self._judged(_base_attrs(target, version, arm, "feedback"), fb.score, fb.metrics)

    # -- decisions -------------------------------------------------------------------------
    def trail_event(self, event: dict) -> None:
        """A trail event as a log record and/or a ``sil.decision`` span, with its evidence."""
        type_ = str(event.get("type"))
        name = DECISION_NAMES.get(type_) or f"sil.{type_}"
        attrs: dict[str, Any] = {"sil.event": name, "sil.trail.type": type_}
        data = {k: v for k, v in event.items() if k != "type"}
        for key in ("target", "change_id", "actor"):
            if data.get(key) is not None:
                attrs[f"sil.{key}"] = str(data[key])
        _event_attrs(data, attrs)
        if self._log is not None:
            severity = "ERROR" if type_ in _ERROR else "WARN" if type_ in _WARN else "INFO"
            self._log(name, severity, attrs, _json_safe({"type": type_, **data}))
        if self._decision_spans:
            span = self.tracer.start_span("sil.decision", kind=self._INTERNAL, attributes=attrs)
            span.add_event(name, attrs)
            if type_ in _ERROR:
                span.set_status(self._Status(self._ERROR, str(data.get("error") or type_)))
            span.end()

    def __repr__(self) -> str:
        return f"<OtelObserver of {self._guard()!r}>"


# -- helpers ---------------------------------------------------------------------------------
def _histogram(meter: Any, name: str, unit: str, description: str, buckets: tuple | None) -> Any:
    if buckets is not None:
        try:  # bucket advice exists since opentelemetry-api 1.23
            return meter.create_histogram(name, unit=unit, description=description,
                                          explicit_bucket_boundaries_advisory=list(buckets))
        except TypeError:
            pass
    return meter.create_histogram(name, unit=unit, description=description)


def _base_attrs(target: str | None, version: str | None, arm: str | None, source: str | None = None) -> dict:
    attrs: dict[str, Any] = {}
    if target is not None:
        attrs["sil.target"] = target
    if version is not None:
        attrs["sil.version"] = version
    if arm is not None:
        attrs["sil.arm"] = arm
    if source is not None:
        attrs["sil.source"] = source
    return attrs


def _metric_attrs(values: dict, attrs: dict) -> None:
    for name, value in values.items():
        key = _METRIC_ATTRS.get(name)
        if key is None:
            attrs[f"sil.metric.{name}"] = value
        elif key.startswith("gen_ai.usage."):
            attrs[key] = int(value) if float(value).is_integer() else value
        else:
            attrs[key] = value


def _detach(context: Any, token: Any, span: Any, trace: Any) -> None:
    """Restore the context the call started in; never raises. Reset in another context (a
    generator resumed elsewhere, a task that finishes the call) fails: then, if this
    context still has the call's span current, the span's parent context is put back, so an
    ended span is never left current."""
    var = getattr(token, "var", None)
    if var is None:  # not a contextvars token (another runtime context): its own detach
        context.detach(token)
        return
    try:
        var.reset(token)
        return
    except (ValueError, RuntimeError):  # made in another context, or already used
        pass
    if trace.get_current_span() is span:
        old = token.old_value
        var.set(context.Context() if old is token.MISSING else old)


def _log_emitter(logger_provider: Any, version: str) -> Any:
    """``emit(name, severity, attributes, body)`` through the logs API (``None`` without it)."""
    try:
        from opentelemetry import _logs
    except ImportError:
        return None
    import inspect
    import time

    logger = _logs.get_logger("sil_core", version, logger_provider)
    sev = {"INFO": _logs.SeverityNumber.INFO, "WARN": _logs.SeverityNumber.WARN, "ERROR": _logs.SeverityNumber.ERROR}
    try:
        modern = "event_name" in inspect.signature(logger.emit).parameters
    except (TypeError, ValueError):
        modern = False

    def emit(name: str, severity: str, attrs: dict, body: Any) -> None:
        if modern:
            logger.emit(event_name=name, severity_number=sev[severity], severity_text=severity, body=body,
                        attributes=attrs, timestamp=time.time_ns())
        else:  # an API before event_name (< 1.35): the name as the ``event.name`` attribute
            logger.emit(_logs.LogRecord(timestamp=time.time_ns(), severity_number=sev[severity],
                                        severity_text=severity, body=body,
                                        attributes={**attrs, "event.name": name}))

    return emit


def _event_attrs(data: dict, out: dict) -> None:
    """A trail event's data as attributes: the verdict flattened (``sil.verdict.kind``,
    ``sil.verdict.evidence.n.candidate``, ...: what an alert or a dashboard reads), other
    dicts (patch, policy, metadata) as JSON text, primitives as they are."""
    for key, value in data.items():
        if key in _EVENT_SKIP or value is None:
            continue
        if key == "verdict" and isinstance(value, dict):
            _flatten(value, "sil.verdict", out)
        else:
            _put(f"sil.{key}", value, out)


def _flatten(data: dict, prefix: str, out: dict, depth: int = 0) -> None:
    """Nested dicts as dotted keys (up to 4 levels; deeper ones as JSON text)."""
    for key, value in data.items():
        if value is None:
            continue
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and depth < 4:
            _flatten(value, name, out, depth + 1)
        else:
            _put(name, value, out)


def _put(name: str, value: Any, out: dict) -> None:
    """One attribute: a primitive, a list of one primitive type, else JSON text."""
    if isinstance(value, (bool, int, float, str)):
        out[name] = value
    elif isinstance(value, (list, tuple)) and value and len({type(v) for v in value}) == 1 \
            and isinstance(value[0], (bool, int, float, str)):
        out[name] = list(value)
    elif value or value == 0:
        out[name] = json.dumps(_json_safe(value), sort_keys=True)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))
