"""The Guard: wrap agent code, record every call, keep statistics per target.

One object in three forms: a decorator (``@guard.track``), a context manager
(``with guard.call(target) as call``, also ``async with``) and an explicit
``guard.record(...)`` for imports and replays. Results and exceptions pass through
unchanged; recording is write-behind and fails open.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import time
import weakref
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

from ._internal.failopen import fail_open, report
from ._internal.ids import new_id
from ._internal.jsonsafe import error_message
from ._internal.worker import BackgroundWorker
from ._internal.writer import Writer
from .aggregates import BUCKET_S, Stats, merge
from .errors import ConfigError
from .notify import Notifier
from .outcomes import classify_exception
from .records import CallRecord, Feedback, Outcome
from .store import Store, open_store
from .thresholds import AdaptiveThreshold

__all__ = ("CallHandle", "Guard")

F = TypeVar("F", bound=Callable[..., Any])
_perf = time.perf_counter
_now = time.time
_OK, _ERROR = Outcome.OK, Outcome.ERROR
PREDICATE_FAILED = "PredicateFailed"
PREDICATE_ERROR = "PredicateError"
MARKED_FAILED = "MarkedFailed"


def _is_coroutine_callable(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)
    return inspect.iscoroutinefunction(call)


def _to_epoch(since: datetime | timedelta | float | None) -> float | None:
    if since is None or isinstance(since, (int, float)):
        return since
    if isinstance(since, timedelta):
        return _now() - since.total_seconds()
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return since.timestamp()


class Guard:
    """Records calls of guarded targets and keeps their statistics.

    Args:
        store: a store URL (``memory://``, ``jsonl:///dir``, ``sqlite:///file``,
            ``postgresql://...``) or a :class:`~sil_core.store.Store`; by default
            ``$SIL_STORE`` or the embedded SQLite file (see ``default_store_url``).
        durability: ``"batched"`` (default) returns at once and writes in the background
            every ``flush_interval`` seconds; ``"sync"`` returns only once the call's record
            is committed (group commit: concurrent calls share one transaction).
        notifiers: objects with ``notify(event)``; they run on a background thread.
        thresholds: the :class:`AdaptiveThreshold` that decides when failures trigger.
        flush_interval: seconds between background writes in batched mode.
        max_pending: records kept in memory at most while the store is slow or down.

    Example:
        >>> guard = Guard("memory://")
        >>> @guard.track("greeter")
        ... def greet(name):
        ...     return f"hello {name}"
        >>> greet("ada")
        'hello ada'
        >>> guard.stats("greeter").n
        1
    """

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        durability: str = "batched",
        notifiers: Iterable[Notifier] = (),
        thresholds: AdaptiveThreshold | None = None,
        flush_interval: float = 0.2,
        max_pending: int = 100_000,
    ) -> None:
        if durability not in ("batched", "sync"):
            raise ConfigError(f"durability must be 'batched' or 'sync', not {durability!r}")
        self.durability = durability
        self._owns_store = not isinstance(store, Store)
        self.store: Store = open_store(store) if self._owns_store else store  # type: ignore[arg-type]
        self.notifiers = list(notifiers)
        self.thresholds = thresholds if thresholds is not None else AdaptiveThreshold()
        self._trigger_listeners: list[Callable[[dict], None]] = []
        self._last_trigger: dict[str, float] = {}
        self._writer = Writer(self.store, interval=flush_interval, max_pending=max_pending, on_written=self._after_write)
        self._events = BackgroundWorker("sil-notify", self._dispatch)
        self._sync = durability == "sync"
        self._closed = False
        ref = weakref.ref(self)
        atexit.register(lambda: (g := ref()) is not None and g.close(timeout=5.0))

    # -- the three forms -----------------------------------------------------------------
    def track(self, target: str | Callable | None = None, *, success: Callable[[Any], Any] | None = None):
        """Decorate a sync or async function so every call is recorded.

        ``@guard.track`` names the target after the function's qualified name;
        ``@guard.track("name", success=predicate)`` names it and judges each result
        (a falsy predicate value, or a predicate that raises, records a failure while
        the result is still returned). Generator functions are recorded when the
        iteration ends.
        """
        if callable(target):
            return self._wrap(target, target.__qualname__, None)
        return lambda fn: self._wrap(fn, target or fn.__qualname__, success)

    def call(self, target: str, *, context: Any = None) -> "CallHandle":
        """A context manager (``with`` or ``async with``) that records one call."""
        return CallHandle(self, target, context)

    def record(
        self,
        target: str,
        *,
        success: bool,
        latency_s: float,
        version: str | None = None,
        arm: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        context: Any = None,
        score: float | None = None,
        ts: datetime | float | None = None,
        outcome: str | None = None,
    ) -> str:
        """Record a call made elsewhere (an import, a replay); returns its call id."""
        if outcome is not None and outcome not in Outcome.ALL:
            raise ConfigError(f"unknown outcome {outcome!r}; use one of {Outcome.ALL}")
        call_id = new_id()
        record = CallRecord(
            call_id, target, _now() if ts is None else _to_epoch(ts), float(latency_s),
            outcome or (_OK if success else _ERROR), error_type, error_message, version, arm, 1,
            score, dict(context) if isinstance(context, dict) else context,
        )
        self._put(record)
        return call_id

    def feedback(self, call_id: str, *, success: bool | None = None, score: float | None = None) -> None:
        """Late feedback on a call; it overrides that call's success (or score) everywhere."""
        if success is None and score is None:
            raise ConfigError("feedback needs success= or score=")
        self._put(Feedback(call_id, None if success is None else bool(success), None if score is None else float(score)))

    # -- reading -------------------------------------------------------------------------
    def stats(self, target: str, *, version: str | None = None, since: datetime | timedelta | float | None = None) -> Stats:
        """Statistics of a target (all versions unless ``version``), including every call
        recorded so far; ``since`` (datetime, timedelta ago, or epoch seconds) resolves to
        the start of its hour. Cost does not depend on history length."""
        self.flush()
        return self.store.stats(target, version=version, since=_to_epoch(since))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write every queued record now; ``True`` if all of it is committed."""
        return self._writer.flush(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, stop the background threads and close a store this guard opened."""
        if self._closed:
            return
        self._closed = True
        with fail_open("guard.close"):
            self._writer.close(timeout)
            self._events.close(timeout)
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_trigger(self, listener: Callable[[dict], None]) -> None:
        """Call ``listener(event)`` (on a background thread) when a target's failures
        cross its adaptive threshold."""
        self._trigger_listeners.append(listener)

    # -- internals: recording ------------------------------------------------------------
    def _put(self, item: CallRecord | Feedback) -> None:
        try:
            if self._sync:
                self._writer.put_durable(item)
            else:
                self._writer.put(item)
        except Exception as exc:
            report("guard.record", exc)

    async def _aput(self, item: CallRecord | Feedback) -> None:
        try:
            if self._sync:
                await self._writer.aput_durable(item)
            else:
                self._writer.put(item)
        except Exception as exc:
            report("guard.record", exc)

    def _finish(self, target: str, ts: float, duration: float, exc: BaseException | None, ok: Any = True,
                call_id: str | None = None, context: Any = None, score: float | None = None,
                version: str | None = None, arm: str | None = None) -> CallRecord | None:
        """Build the record of a finished call (never raises)."""
        try:
            if exc is None:
                if ok is True:  # the id of a decorated call is assigned off the hot path
                    return CallRecord(call_id, target, ts, duration, _OK, None, None, version, arm, 1, score, context)
                outcome, etype, msg = _ERROR, ok, None
            else:
                outcome, etype, msg = classify_exception(exc), type(exc).__name__, error_message(exc)
            return CallRecord(call_id, target, ts, duration, outcome, etype, msg, version, arm, 1, score, context)
        except Exception as err:
            report("guard.record", err)
            return None

    def _wrap(self, fn: F, target: str, success: Callable[[Any], Any] | None) -> F:
        if inspect.isasyncgenfunction(fn):
            wrapper = self._wrap_asyncgen(fn, target, success)
        elif inspect.isgeneratorfunction(fn):
            wrapper = self._wrap_gen(fn, target, success)
        elif _is_coroutine_callable(fn):
            wrapper = self._wrap_async(fn, target, success)
        else:
            wrapper = self._wrap_sync(fn, target, success)
        wrapper = functools.wraps(fn)(wrapper)
        wrapper.guard = self  # type: ignore[attr-defined]
        wrapper.target = target  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def _wrap_sync(self, fn, target, success):
        finish, put = self._finish, self._put

        def guarded(*args, **kwargs):
            ts, t0 = _now(), _perf()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                record = finish(target, ts, _perf() - t0, exc)
                if record is not None:
                    put(record)
                raise
            record = finish(target, ts, _perf() - t0, None, _judge(success, result))
            if record is not None:
                put(record)
            return result

        return guarded

    def _wrap_async(self, fn, target, success):
        finish, aput = self._finish, self._aput

        async def guarded(*args, **kwargs):
            ts, t0 = _now(), _perf()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                record = finish(target, ts, _perf() - t0, exc)
                if record is not None:
                    await aput(record)
                raise
            record = finish(target, ts, _perf() - t0, None, _judge(success, result))
            if record is not None:
                await aput(record)
            return result

        return guarded

    def _wrap_gen(self, fn, target, success):
        finish, put = self._finish, self._put

        def guarded(*args, **kwargs):
            ts, t0 = _now(), _perf()
            error: BaseException | None = None
            try:
                result = yield from fn(*args, **kwargs)
            except BaseException as exc:
                error = exc
                raise
            finally:
                ok = True if error is not None else _judge(success, result)
                record = finish(target, ts, _perf() - t0, error, ok)
                if record is not None:
                    put(record)
            return result

        return guarded

    def _wrap_asyncgen(self, fn, target, success):
        finish, put = self._finish, self._put

        async def guarded(*args, **kwargs):
            ts, t0 = _now(), _perf()
            error: BaseException | None = None
            try:
                async for item in fn(*args, **kwargs):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                record = finish(target, ts, _perf() - t0, error, True)
                if record is not None:
                    put(record)

        return guarded

    # -- internals: after a batch is written (flusher thread) -----------------------------
    def _after_write(self, calls: list[CallRecord]) -> None:
        failing = {r.target for r in calls if r.outcome == _ERROR}
        for target in failing:
            with fail_open("trigger.check"):
                self._check_trigger(target)

    def _check_trigger(self, target: str) -> None:
        now = _now()
        day = self.store.cells(target, since_hour=int((now - 86400) // BUCKET_S))
        all_time = merge(self.store.cells(target).values())
        calls_24h = merge(day.values()).n
        profile = self.thresholds.profile(target, calls_24h=calls_24h, total_calls=all_time.n)
        last = self._last_trigger.get(target)
        if last is not None and now - last < profile.cooldown_hours * 3600:
            return
        window = merge(self.store.cells(target, since_hour=int((now - profile.analysis_window_hours * 3600) // BUCKET_S)).values())
        decided = window.successes + window.failures
        if not profile.triggers(window.failures, decided):
            return
        self._last_trigger[target] = now
        event = {
            "type": "failure_trigger",
            "target": target,
            "ts": now,
            "failures": window.failures,
            "calls": decided,
            "failure_rate": window.failures / decided if decided else None,
            "profile": profile.as_dict(),
            "message": (
                f"{target}: {window.failures} failures in {decided} calls over "
                f"{profile.analysis_window_hours:g} h (threshold {profile.failure_threshold}, "
                f"min rate {profile.min_failure_rate:.0%}, profile {profile.name})"
            ),
        }
        self.emit(event)
        for listener in self._trigger_listeners:
            with fail_open("trigger.listener"):
                listener(event)

    def emit(self, event: dict) -> None:
        """Send an event to every notifier, on the notifier thread."""
        if self.notifiers:
            self._events.submit(event)

    def _dispatch(self, event: dict) -> None:
        for notifier in self.notifiers:
            with fail_open("notifier"):
                notifier.notify(event)


def _judge(success: Callable[[Any], Any] | None, result: Any) -> Any:
    """``True`` for a good result, else the error type to record."""
    if success is None:
        return True
    try:
        return True if success(result) else PREDICATE_FAILED
    except Exception as exc:
        report("success predicate", exc)
        return PREDICATE_ERROR


class CallHandle:
    """One call being recorded: ``with guard.call("t") as call:`` or ``async with``.

    Set ``call.success = False`` to record a failure without raising, ``call.score`` for a
    quality score, ``call.latency_s`` to record a latency measured elsewhere. Read
    ``call.call_id`` (for later ``guard.feedback``), ``call.version``, ``call.arm`` and
    ``call.config`` (the config of the version serving this call, when the target has one).
    An exception inside the block is recorded and propagates unchanged.
    """

    __slots__ = ("guard", "target", "context", "success", "score", "latency_s", "call_id",
                 "version", "arm", "config", "_ts", "_t0")

    def __init__(self, guard: Guard, target: str, context: Any = None) -> None:
        self.guard = guard
        self.target = target
        self.context = dict(context) if isinstance(context, dict) else context
        self.success: bool | None = None
        self.score: float | None = None
        self.latency_s: float | None = None
        self.call_id = new_id()
        self.version: str | None = None
        self.arm: str | None = None
        self.config: dict | None = None
        self._ts = self._t0 = 0.0

    def __enter__(self) -> "CallHandle":
        self._ts, self._t0 = _now(), _perf()
        return self

    def _record(self, exc: BaseException | None) -> CallRecord | None:
        duration = self.latency_s if self.latency_s is not None else _perf() - self._t0
        ok = True if self.success is None or self.success else MARKED_FAILED
        return self.guard._finish(self.target, self._ts, duration, exc, ok, self.call_id, self.context,
                                  self.score, self.version, self.arm)

    def __exit__(self, et, exc, tb) -> bool:
        record = self._record(exc)
        if record is not None:
            self.guard._put(record)
        return False

    async def __aenter__(self) -> "CallHandle":
        return self.__enter__()

    async def __aexit__(self, et, exc, tb) -> bool:
        record = self._record(exc)
        if record is not None:
            await self.guard._aput(record)
        return False
