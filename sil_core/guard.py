"""The Guard: wrap agent code, record every call, guard every config change.

One object in three forms: a decorator (``@guard.track``), a context manager
(``with guard.call(target) as call``, also ``async with``) and an explicit
``guard.record(...)`` for imports and replays. Results and exceptions pass through
unchanged; recording is write-behind and fails open. Config changes go through
``guard.propose(...)`` and are judged and acted on in the background (see ``changes.py``).

Every process that ends normally writes what its guards queued and waits for the
judging they started, within ``exit_timeout``: at interpreter exit, in ``multiprocessing``
children (which skip ``atexit``) and on SIGTERM (see ``_internal/exits.py``).

The control plane (``stats``, ``change``, ``propose``, ``promote``, ``rollback``, ``flush``,
``drain``, ``close``, ...) blocks the calling thread on the store; each has an async twin
(``astats``, ``achange``, ...) that runs the same method on a small thread pool of the
guard's own, so a coroutine never freezes its event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

from ._internal import exits, validate
from ._internal.after_write import AfterWrite
from ._internal.clock import SYSTEM, Clock
from ._internal.failopen import fail_open, report
from ._internal.ids import default_worker_id, new_id
from ._internal.validate import finite
from ._internal.worker import BackgroundWorker
from ._internal.writer import Writer
from .adapters import ConfigAdapter, DictConfigAdapter
from .aggregates import Stats
from .async_control import AsyncControl
from .calls import CallHandle, wrap
from .change_control import ChangeControl
from .changes import ChangeManager
from .errors import ConfigError
from .evaluations import Evaluations
from .health import Health
from .notify import Notifier
from .policy import RolloutPolicy
from .records import CallRecord, Feedback, Outcome
from .metrics import clean_metrics
from .observe import Observers
from .recorder import HotPath, Recorder, split_score
from .routing import TargetView
from .store import Store, open_store
from .thresholds import AdaptiveThreshold

__all__ = ("Guard",)

F = TypeVar("F", bound=Callable[..., Any])
_now = time.time
_mono = time.monotonic
_log = logging.getLogger("sil_core")
_OK, _ERROR = Outcome.OK, Outcome.ERROR
_warned_local: set[str] = set()


def _warn_process_local(store: Store) -> None:
    """Once per store: a config held in one process's memory, with a store others share."""
    key = repr(store)
    if key in _warned_local:
        return
    _warned_local.add(key)
    _log.warning("sil-guard: DictConfigAdapter keeps configs in this process's memory, but %r can be shared by "
                 "other processes: a promotion here is invisible to them, and a restart serves the original config. "
                 "Use SharedConfigAdapter(guard.store) (see the README, 'More than one process')", store)


def _after_fork(guard: "Guard") -> None:
    """A forked child starts without the parent's pending jobs and thread pool."""
    guard._after_write.pending_eval = set()
    guard._control = None
    guard._control_lock = threading.Lock()


def _to_epoch(since: datetime | timedelta | float | None) -> float | None:
    if since is None or isinstance(since, (int, float)):
        return since
    if isinstance(since, timedelta):
        return _now() - since.total_seconds()
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return since.timestamp()


class Guard(ChangeControl, AsyncControl):
    """Records calls of guarded targets, keeps their statistics and guards their changes.

    Args:
        store: a store URL (``memory://``, ``jsonl:///dir``, ``sqlite:///file``,
            ``postgresql://...``) or a :class:`~sil_core.store.Store`; by default
            ``$SIL_STORE`` or the embedded SQLite file (see ``default_store_url``).
        durability: ``"batched"`` (default) returns at once and writes in the background
            every ``flush_interval`` seconds; ``"sync"`` returns only once the call's record
            is committed (group commit: concurrent calls share one transaction).
        adapter: the default :class:`ConfigAdapter` for changes (a strategy's proposals, and
            rollbacks of changes another worker proposed).
        strategy: proposes a config patch when a target's failures cross its threshold
            (``analyze(agent_id=, traces=, before_metrics=)``); runs off the caller's thread
            unless ``strategy_inline=True``.
        policy: the default :class:`RolloutPolicy`; ``mode`` the default change mode.
        notifiers: objects with ``notify(event)``; they run on a background thread.
        thresholds: the :class:`AdaptiveThreshold` that decides when failures trigger.
        worker_id: names this worker in the trail (default ``host:pid``).
        flush_interval: seconds between background writes in batched mode.
        max_pending: records kept in memory at most while the store is slow or down
            (guarded LangGraph nodes check it at least once per ``refresh_interval``, so
            they may overshoot it by what they record in that time).
        refresh_interval: seconds a worker serves a target's cached version before
            re-reading it from the store (how fast other workers' moves are seen).
        exit_timeout: how long the end of a process may wait for this guard to write
            what it queued and finish the judging it started (a store that is down must
            not hang the exit); what is left is dropped and said on the ``sil_core`` logger.
        handle_sigterm: on SIGTERM, write what is queued before the process dies (a
            handler set only from the main thread: it chains to a framework's own handler,
            or replaces the default action and then dies of the signal as before).
        clock: where the guard reads the time (tests: ``sil_core.testing.ManualClock``).
        evaluator_workers, evaluator_timeout_s: the pool that runs evaluators
            (``track(..., evaluate=fn)``, :meth:`evaluate_later`): how many at once, and
            how long one may take before its result is discarded.

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
        adapter: ConfigAdapter | None = None,
        strategy: Any = None,
        policy: RolloutPolicy | None = None,
        mode: str = "canary",
        notifiers: Iterable[Notifier] = (),
        thresholds: AdaptiveThreshold | None = None,
        worker_id: str | None = None,
        flush_interval: float = 0.2,
        max_pending: int = 100_000,
        refresh_interval: float = 0.5,
        strategy_inline: bool = False,
        exit_timeout: float = 5.0,
        handle_sigterm: bool = True,
        clock: Clock = SYSTEM,
        evaluator_workers: int = 2,
        evaluator_timeout_s: float = 60.0,
    ) -> None:
        if durability not in ("batched", "sync"):
            raise ConfigError(f"durability must be 'batched' or 'sync', not {durability!r}")
        if mode not in ("canary", "switch"):
            raise ConfigError(f"mode must be 'canary' or 'switch', not {mode!r}")
        self.durability = durability
        self._owns_store = not isinstance(store, Store)
        self.store: Store = open_store(store) if self._owns_store else store  # type: ignore[arg-type]
        self.adapter = adapter
        self.strategy = strategy
        self.strategy_inline = strategy_inline
        self.policy = policy or RolloutPolicy()
        self.mode = mode
        self.worker_id = worker_id or default_worker_id()
        self.notifiers = list(notifiers)
        self.thresholds = thresholds if thresholds is not None else AdaptiveThreshold()
        self.clock = clock
        self._trigger_listeners: list[Callable[[dict], None]] = []
        self._changes = ChangeManager(self.store, worker_id=self.worker_id, clock=clock, refresh_s=refresh_interval,
                                      default_adapter=lambda: self.adapter, default_policy=lambda: self.policy,
                                      strategy=lambda: self.strategy, emit=self.emit)
        self._after_write = AfterWrite(self)
        self._writer = Writer(self.store, interval=flush_interval, max_pending=max_pending,
                              on_written=self._after_write, on_tick=self._after_write.tick)
        self._events = BackgroundWorker("sil-notify", self._after_write.dispatch)
        self._decide = BackgroundWorker("sil-decide", lambda job: job())
        self._evaluator_settings = (evaluator_workers, evaluator_timeout_s)
        self._evaluations: Evaluations | None = None
        self._enqueue = self._writer.put_durable if durability == "sync" else self._writer.put
        self._observers = Observers()
        self._changes.observers = self._observers
        self._hot = HotPath(self)
        # the hot path of the decorators and guard.call (calls.py), bound once
        self._start_call, self._finish, self._put, self._aput = (self._hot.start, self._hot.finish, self._hot.put,
                                                                 self._hot.aput)
        self._recorders: dict[str, Recorder] = {}
        self._control = None
        self._control_lock = threading.Lock()
        self.exit_timeout = exit_timeout
        #: the thread closing this guard, while it does
        self.closing_thread: int | None = None
        self._closed = False
        exits.track(self, handle_sigterm=handle_sigterm, after_fork=_after_fork)
        if isinstance(adapter, DictConfigAdapter) and "multiprocess" in self.store.capabilities:
            _warn_process_local(self.store)

    # -- the three forms -----------------------------------------------------------------
    def track(self, target: str | Callable | None = None, *, success: Callable[[Any], Any] | None = None,
              key: Callable[..., Any] | None = None, evaluate: Callable[[Any], Any] | None = None):
        """Decorate a sync or async function so every call is recorded.

        ``@guard.track`` names the target after the function's qualified name;
        ``@guard.track("name", success=predicate)`` names it and judges each result
        (a falsy predicate value, or a predicate that raises, records a failure while
        the result is still returned). ``key(*args, **kwargs)`` gives a routing key (a
        user or session id) so one key always gets the same arm during a canary. Inside
        the function, :func:`sil_core.current_call` tells the version and config serving
        it. Generator functions are recorded when the iteration ends. ``evaluate(result)``
        scores each returned result later, off the caller's thread (see
        :meth:`evaluate_later`).
        """
        if callable(target):
            return wrap(self, target, target.__qualname__, None, None)
        return lambda fn: wrap(self, fn, target or fn.__qualname__, success, key, evaluate)

    def add_observer(self, observer: Any) -> None:
        """Let ``observer`` see every call, feedback and trail event of this guard (an
        exporter: see ``sil_core.observe`` for the methods it may have)."""
        if observer not in self._observers:
            self._observers.append(observer)
            self._observers.changed()

    def remove_observer(self, observer: Any) -> None:
        """Stop telling ``observer`` (an unknown observer is ignored)."""
        if observer in self._observers:
            self._observers.remove(observer)
            self._observers.changed()

    def evaluate_later(self, call_id: str, evaluator: Callable[[Any], Any], result: Any) -> None:
        """Run ``evaluator(result)`` on a background pool and give its value to the call as
        feedback: a number is its score; a dict gives ``success``, ``score`` and metrics
        (see ``sil_core.evaluations``). Never blocks; a failing or slow evaluator is
        logged and skipped."""
        try:
            evaluations = self._evaluations
            if evaluations is None:
                with self._control_lock:
                    if self._evaluations is None:
                        workers, timeout_s = self._evaluator_settings
                        self._evaluations = Evaluations(self, workers=workers, timeout_s=timeout_s)
                    evaluations = self._evaluations
            evaluations.submit(call_id, evaluator, result)
        except Exception as exc:
            report("guard.evaluate_later", exc)

    def call(self, target: str, *, context: Any = None, key: Any = None) -> CallHandle:
        """A context manager (``with`` or ``async with``) that records one call; ``key``
        routes it deterministically during a canary."""
        return CallHandle(self, target, context, key)

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
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Record a call made elsewhere (an import, a replay); returns its call id.

        A latency that is not a finite number >= 0, or a time that is not finite, makes the
        record unusable: it is dropped and counted (``guard.health()``), never raised; a
        score or a metric that is not finite is dropped from the record."""
        if outcome is not None and outcome not in Outcome.ALL:
            raise ConfigError(f"unknown outcome {outcome!r}; use one of {Outcome.ALL}")
        call_id = new_id()
        latency = finite(latency_s, "guard.record latency_s (record dropped)", minimum=0.0)
        when = _now() if ts is None else finite(_to_epoch(ts), "guard.record ts (record dropped)")
        if latency is None or when is None:
            return call_id
        values, score = split_score(clean_metrics(metrics, "guard.record metrics"), finite(score, "guard.record score"))
        record = CallRecord(
            call_id, target, when, latency, outcome or (_OK if success else _ERROR), error_type, error_message,
            version, arm, 1, score, dict(context) if isinstance(context, dict) else context, metrics=values,
        )
        self._put(record)
        return call_id

    def feedback(self, call_id: str, *, success: bool | None = None, score: float | None = None,
                 metrics: dict[str, float] | None = None) -> None:
        """Late feedback on a call; it overrides that call's success, score or metrics
        everywhere (an evaluator's score, a user's thumbs-down, a bill's cost).

        Any worker sharing the store may take it, before or after the call's record is
        written (it waits in the store for the record); per field (and per metric), the
        feedback given last wins. A value that is not a finite number is dropped and counted."""
        if success is None and score is None and metrics is None:
            raise ConfigError("feedback needs success=, score= or metrics=")
        values, value = split_score(clean_metrics(metrics, "feedback metrics"), finite(score, "feedback score"))
        if success is None and value is None and not values:
            return  # its only values were not numbers: dropped and counted
        # given now: per field, the feedback given last wins, whichever worker writes it first
        fb = Feedback(call_id, None if success is None else bool(success), value, _now(), values)
        if self._observers:
            self._observers.feedback(fb)
        self._put(fb)

    # -- reading -------------------------------------------------------------------------
    def stats(self, target: str, *, version: str | None = None, since: datetime | timedelta | float | None = None) -> Stats:
        """Statistics of a target (all versions unless ``version``), including every call
        recorded so far; ``since`` (datetime, timedelta ago, or epoch seconds) resolves to
        the start of its hour. Cost does not depend on history length.

        Blocks on the store (a flush, then a read); use :meth:`astats` in a coroutine."""
        self.flush()
        return self.store.stats(target, version=version, since=_to_epoch(since))

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write every queued record now; ``True`` if all of it is committed.

        Blocks until the store took the batch (at most ``timeout``); use :meth:`aflush`
        in a coroutine."""
        return self._writer.flush(timeout)

    def drain(self, timeout: float | None = 30.0) -> bool:
        """Flush, then wait until background judging, strategies and notifiers are done.

        Blocks (at most about ``timeout`` per stage); use :meth:`adrain` in a coroutine."""
        evaluated = self._evaluations.drain(timeout) if self._evaluations is not None else True
        ok = self.flush(timeout)
        return self._decide.drain(timeout) and self._events.drain(timeout) and ok and evaluated

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is queued, wait for the judging and notifiers already started, stop
        the background threads and close a store this guard opened, all within ``timeout``.

        What could not be finished in time (a store that is down or locked) is dropped and
        said once on the ``sil_core`` logger. Blocks; use :meth:`aclose` in a coroutine."""
        if self._closed:
            return
        self.closing_thread = threading.get_ident()  # first: a SIGTERM from here on lets us finish
        self._closed = True
        deadline = None if timeout is None else _mono() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - _mono())

        try:
            with fail_open("guard.close"):
                self._close(timeout, left)
        finally:
            self.closing_thread = None
            exits.finished(self)

    def _close(self, timeout: float | None, left: Callable[[], float | None]) -> None:
        self._changes.close()
        if self._evaluations is not None:  # their feedback goes out with the last flush
            self._evaluations.close(left())
        flushed = self._writer.flush(left())
        judged = self._decide.drain(left())
        notified = self._events.drain(left())
        flushed = self._writer.close(left() if flushed else 0.0) and flushed
        self._decide.close(0.0)
        self._events.close(0.0)
        self._report_close(timeout, flushed, judged, notified)
        if flushed and self._after_write.heartbeats:  # its last report says it stopped, and what it wrote
            self._after_write.heartbeat(stopped=_now())
        if self._control is not None:
            self._control.shutdown(wait=False)
        if self._owns_store and flushed and judged:
            self.store.close()  # else a background thread may still be inside it: the process exit frees it

    @property
    def closed(self) -> bool:
        return self._closed

    def health(self, *, probe: bool = True) -> Health:
        """What this guard queued, wrote, dropped and set aside, its last write error, and
        (``probe``) whether the store answers a read now. Blocks on the store when probing;
        use :meth:`ahealth` in a coroutine."""
        w = self._writer
        reachable = w.last_error is None
        if probe:
            try:
                self.store.kv_get("sil", "probe")
                reachable = True
            except Exception:
                reachable = False
        return Health(
            worker_id=self.worker_id, store=repr(self.store), pending=w.pending, written=w.written,
            failed_writes=w.failed_writes, dropped=w.dropped, dropped_after_close=w.dropped_after_close,
            set_aside=w.set_aside, invalid_values=dict(validate.dropped),
            last_write_error=None if w.last_error is None else f"{type(w.last_error).__name__}: {w.last_error}",
            store_reachable=reachable, ts=_now(),
        )

    def __repr__(self) -> str:
        return f"<Guard {self.worker_id} on {self.store!r}>"

    def write_through(self, timeout: float | None = 5.0) -> bool:
        """Write what is queued now and, from here on, return from each call only once its
        record is committed (``durability="sync"``). Used when a graceful shutdown begins
        (SIGTERM under uvicorn or gunicorn), so that nothing is left queued when the
        process dies. Blocks."""
        self.durability = "sync"
        self._enqueue = self._writer.put_durable
        self._writer.hurry()  # records queued without waiting (a LangGraph fast lane) go out at once
        return self._writer.flush(timeout)

    def _report_close(self, timeout: float | None, flushed: bool, judged: bool, notified: bool) -> None:
        writer = self._writer
        lost = []
        if not flushed:
            why = f" (last error: {writer.last_error!r})" if writer.last_error is not None else ""
            lost.append(f"{writer.abandoned} records not written to the store{why}")
        if writer.dropped:
            lost.append(f"{writer.dropped} records dropped earlier while more than max_pending were waiting")
        if not judged:
            lost.append(f"{self._decide.unfinished} judging jobs not finished")
        if not notified:
            lost.append(f"{self._events.unfinished} notifications not sent")
        if lost:
            _log.warning("sil-guard: closing the guard of %r within %s s: %s", self.store,
                         "no limit of" if timeout is None else f"{timeout:.3g}", "; ".join(lost))

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_trigger(self, listener: Callable[[dict], None]) -> None:
        """Call ``listener(event)`` (on a background thread) when a target's failures
        cross its adaptive threshold."""
        self._trigger_listeners.append(listener)

    def emit(self, event: dict) -> None:
        """Send an event to every notifier, on the notifier thread."""
        if self.notifiers:
            self._events.submit(event)

    def adapter_config(self, target: str) -> dict | None:
        """The config the target's adapter holds now (``None`` without an adapter, or when
        it fails): what a target serves before its first change."""
        adapter = self._changes.adapters.get(target) or self.adapter
        if adapter is None:
            return None
        try:
            config = adapter.get_config(agent_id=target)
        except Exception as exc:
            report("adapter.get_config", exc)
            return None
        return config if isinstance(config, dict) else None

    # -- the extension surface for integrations (README, "Writing an integration") ---------
    def recorder(self, target: str) -> Recorder:
        """The :class:`~sil_core.recorder.Recorder` of ``target``: what an integration's
        wrapper calls on every execution (one per target, made once)."""
        rec = self._recorders.get(target)
        if rec is None:
            rec = self._recorders.setdefault(target, Recorder(self, target))
        return rec

    def view(self, target: str, *, fresh: bool = False) -> TargetView:
        """This worker's :class:`~sil_core.routing.TargetView` of ``target``: whether it is
        versioned, the version it serves, the change in flight (state, mode, weight, both
        arms). Never waits on the store (an expired view is re-read in the background),
        unless ``fresh=True``, which reads it now if it expired (blocks: tools, not hot paths)."""
        return self._changes.view_now(target) if fresh else self._changes.view(target)

