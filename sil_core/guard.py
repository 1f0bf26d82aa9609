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

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

from ._internal import exits
from ._internal.failopen import fail_open, report
from ._internal.ids import new_id
from ._internal.jsonsafe import error_message
from ._internal import validate
from ._internal.validate import finite
from ._internal.worker import BackgroundWorker
from ._internal.writer import Writer
from .adapters import ConfigAdapter, DictConfigAdapter
from .aggregates import BUCKET_S, Stats, merge
from .calls import CallHandle, CallInfo, _current, _last, wrap
from .changes import ChangeManager, default_worker_id
from .detect.verdict import Verdict
from .health import HEARTBEAT_S, Health
from .errors import ConfigError
from .notify import Notifier
from .outcomes import classify_exception
from .policy import RolloutPolicy
from .records import CallRecord, Feedback, Outcome
from .rollout import IN_FLIGHT, Change, State
from .store import Store, open_store
from .store.memory import apply_feedback
from .strategies import run_strategy
from .thresholds import AdaptiveThreshold
from .trail import TrailReport, append_event, verify_trail
from .versions import list_versions

__all__ = ("Guard",)

F = TypeVar("F", bound=Callable[..., Any])
_now = time.time
_mono = time.monotonic
_log = logging.getLogger("sil_core")
#: consecutive failures that trigger whatever the window's failure rate (an outage)
OUTAGE_RUN = 5
_OK, _ERROR = Outcome.OK, Outcome.ERROR
#: canary records remembered per guard, so that feedback finds its call's arm without a read
_RECENT_MAX = 10_000
#: threads of a guard's pool for the async control plane
_CONTROL_THREADS = 4


def _slim(r: CallRecord) -> tuple:
    """What a remembered canary call needs to meet its feedback (cheaper than a record)."""
    return r.target, r.ts, r.outcome, r.version, r.arm, r.feedback_success


def _unslim(call_id: str, slim: tuple) -> CallRecord:
    target, ts, outcome, version, arm, feedback_success = slim
    return CallRecord(call_id, target, ts, 0.0, outcome, version=version, arm=arm, feedback_success=feedback_success)


def _as_stored(calls: list[CallRecord], changed: list[CallRecord]) -> tuple[list[CallRecord], list[CallRecord]]:
    """The batch's calls as the store now holds them (feedback that waited for them folded
    in), and the earlier canary calls that the batch's feedback changed."""
    if not changed:
        return calls, []
    now = {r.id: r for r in changed}
    ids = {r.id for r in calls}
    return [now.get(r.id, r) for r in calls], [r for r in changed if r.id not in ids and r.arm is not None]


_warned_local: set[str] = set()


def _warn_process_local(store: Store) -> None:
    """Once per store: a config held in one process's memory, with a store others share."""
    key = repr(store)
    if key in _warned_local:
        return
    _warned_local.add(key)
    _log.warning("sil-guard: DictConfigAdapter keeps configs in this process's memory, but %r is shared by other "
                 "processes: a promotion here is invisible to them, and a restart serves the original config. "
                 "Use SharedConfigAdapter(guard.store) (see the README, 'More than one process')", store)


def _after_fork(guard: "Guard") -> None:
    """A forked child starts without the parent's pending jobs and thread pool."""
    guard._pending_eval = set()
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


class Guard:
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
        self._trigger_listeners: list[Callable[[dict], None]] = []
        self._last_trigger: dict[str, float] = {}
        self._notifier_errors: dict[str, float] = {}
        self._failure_runs: dict[str, int] = {}  # consecutive failures per target, this worker
        self._changes = ChangeManager(self, refresh_s=refresh_interval)
        self._views = self._changes._views
        self._writer = Writer(self.store, interval=flush_interval, max_pending=max_pending,
                              on_written=self._after_write, on_tick=self._tick)
        self._events = BackgroundWorker("sil-notify", self._dispatch)
        self._decide = BackgroundWorker("sil-decide", lambda job: job())
        self._pending_eval: set[str] = set()
        self._last_tick = 0.0
        self._last_heartbeat = time.monotonic()  # the first report after HEARTBEAT_S: a short script writes none
        self._sync = durability == "sync"
        self._enqueue = self._writer.put_durable if self._sync else self._writer.put
        self._recent: OrderedDict[str, tuple] = OrderedDict()  # canary records (_slim), for feedback
        self._readers: dict[str, Callable[[], dict | None]] = {}  # per target: its adapter's config
        self._control: ThreadPoolExecutor | None = None
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
              key: Callable[..., Any] | None = None):
        """Decorate a sync or async function so every call is recorded.

        ``@guard.track`` names the target after the function's qualified name;
        ``@guard.track("name", success=predicate)`` names it and judges each result
        (a falsy predicate value, or a predicate that raises, records a failure while
        the result is still returned). ``key(*args, **kwargs)`` gives a routing key (a
        user or session id) so one key always gets the same arm during a canary. Inside
        the function, :func:`sil_core.current_call` tells the version and config serving
        it. Generator functions are recorded when the iteration ends.
        """
        if callable(target):
            return wrap(self, target, target.__qualname__, None, None)
        return lambda fn: wrap(self, fn, target or fn.__qualname__, success, key)

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
    ) -> str:
        """Record a call made elsewhere (an import, a replay); returns its call id.

        A latency that is not a finite number >= 0, or a time that is not finite, makes the
        record unusable: it is dropped and counted (``guard.health()``), never raised; a
        score that is not finite is dropped from the record."""
        if outcome is not None and outcome not in Outcome.ALL:
            raise ConfigError(f"unknown outcome {outcome!r}; use one of {Outcome.ALL}")
        call_id = new_id()
        latency = finite(latency_s, "guard.record latency_s (record dropped)", minimum=0.0)
        when = _now() if ts is None else finite(_to_epoch(ts), "guard.record ts (record dropped)")
        if latency is None or when is None:
            return call_id
        record = CallRecord(
            call_id, target, when, latency, outcome or (_OK if success else _ERROR), error_type, error_message,
            version, arm, 1, finite(score, "guard.record score"), dict(context) if isinstance(context, dict) else context,
        )
        self._put(record)
        return call_id

    def feedback(self, call_id: str, *, success: bool | None = None, score: float | None = None) -> None:
        """Late feedback on a call; it overrides that call's success (or score) everywhere.

        Any worker sharing the store may take it, before or after the call's record is
        written (it waits in the store for the record); per field, the feedback given last
        wins. A score that is not a finite number is dropped and counted."""
        if success is None and score is None:
            raise ConfigError("feedback needs success= or score=")
        value = finite(score, "feedback score")
        if success is None and value is None:
            return  # its only value was not a number: dropped and counted
        # given now: per field, the feedback given last wins, whichever worker writes it first
        self._put(Feedback(call_id, None if success is None else bool(success), value, _now()))

    # -- reading -------------------------------------------------------------------------
    def stats(self, target: str, *, version: str | None = None, since: datetime | timedelta | float | None = None) -> Stats:
        """Statistics of a target (all versions unless ``version``), including every call
        recorded so far; ``since`` (datetime, timedelta ago, or epoch seconds) resolves to
        the start of its hour. Cost does not depend on history length.

        Blocks on the store (a flush, then a read); use :meth:`astats` in a coroutine."""
        self.flush()
        return self.store.stats(target, version=version, since=_to_epoch(since))

    # -- changes -------------------------------------------------------------------------
    def propose(self, target: str, patch: dict, *, adapter: ConfigAdapter | None = None, mode: str | None = None,
                policy: RolloutPolicy | None = None, actor: str | None = None, approve: bool = True,
                metadata: dict | None = None) -> Change:
        """Roll a config patch out under guard and return the :class:`Change`.

        ``mode="canary"`` serves baseline and candidate side by side (read the arm's config
        from ``guard.call(...).config`` or :func:`current_call`); ``mode="switch"`` applies
        the patch globally through the adapter and compares with a frozen baseline window.
        A target has at most one change in flight: a proposal meanwhile is ``rejected``, as
        is one for a pinned target. ``approve=False`` leaves it ``proposed`` until
        :meth:`approve`. ``metadata`` (why it was proposed) goes to the trail's
        ``change_proposed`` event, not to the config.

        Blocks on the store and the adapter; use :meth:`apropose` in a coroutine.
        """
        self.flush()  # the baseline's evidence includes every call made before the proposal
        return self._changes.propose(target, patch, adapter=adapter, mode=mode or self.mode, policy=policy,
                                     actor=actor, approve=approve, metadata=metadata)

    def change(self, target: str) -> Change | None:
        """The target's latest change, in flight or finished, with its latest verdict.

        Blocks on the store; use :meth:`achange` in a coroutine."""
        self.flush()
        row = self._changes.latest_row(target)
        return None if row is None else self._typed(row)

    def changes(self, target: str | None = None) -> list[Change]:
        """Every change (one target's, or all), oldest first, rejected proposals included.

        Blocks on the store; use :meth:`achanges` in a coroutine."""
        return [self._typed(row) for row in self._changes.rows(target)]

    def arms(self, target: str) -> dict[str, Stats] | None:
        """``{"baseline": Stats, "candidate": Stats}`` of the target's change in flight: the
        calls each arm served since the change started (what its verdict is judged on);
        ``None`` without a change in flight. Blocks on the store."""
        self.flush()
        row = self._changes.latest_row(target)
        if row is None or row["state"] not in IN_FLIGHT or row["state"] == State.PROPOSED:
            return None
        base, cand = self._changes.evidence(row)
        return {"baseline": Stats.from_cell(target, base), "candidate": Stats.from_cell(target, cand)}

    def adapter_for(self, target: str) -> ConfigAdapter | None:
        """The :class:`ConfigAdapter` this guard acts through for ``target``: the one its
        latest proposal gave, else ``Guard(adapter=...)``, else one rebuilt from the spec
        its latest change stored (``JsonFileConfigAdapter``, Hermes skills); ``None`` when
        there is none in this process. Blocks on the store."""
        return self._changes.adapter_for(target)

    def _typed(self, row: dict) -> Change:
        verdict = None
        if row["state"] == "canary" or (row["state"] == "paused" and not row.get("verdict")):
            with fail_open("change.verdict"):
                verdict = self._changes.current_verdict(row)
        return Change.from_row(row, verdict)

    def evaluate(self, target: str) -> Verdict | None:
        """Judge the target's change now, on this thread, and act on the verdict.

        Blocks on the store and the adapter; use :meth:`aevaluate` in a coroutine."""
        self.flush()
        return self._changes.evaluate(target)

    def approve(self, target: str, *, actor: str = "api") -> Change:
        """Start a change that waits for approval.

        Blocks on the store and the adapter; use :meth:`aapprove` in a coroutine."""
        return self._changes.approve(target, actor)

    def promote(self, target: str, *, actor: str = "api") -> bool:
        """Promote the change in flight now.

        Blocks on the store and the adapter; use :meth:`apromote` in a coroutine."""
        return self._changes.promote(target, Verdict(Verdict.HEALTHY, f"promoted by {actor}", "manual"), actor=actor)

    def rollback(self, target: str, *, actor: str = "api") -> bool:
        """Roll the change in flight back now (idempotent: ``False`` if there is none). A
        change already promoted is undone with :meth:`revert`.

        Blocks on the store and the adapter; use :meth:`arollback` in a coroutine."""
        return self._changes.rollback(target, Verdict(Verdict.REGRESSED, f"rolled back by {actor}", "manual"), actor=actor)

    def request(self, target: str, action: str, *, actor: str = "api") -> bool:
        """Ask the workers that hold the target's adapter to ``"promote"`` or ``"rollback"``
        its change in flight (for a process that cannot rebuild the adapter, e.g. the CLI);
        a worker acts within about a second. Blocks on the store."""
        if action not in ("promote", "rollback"):
            raise ConfigError(f"action must be 'promote' or 'rollback', not {action!r}")
        return self._changes.request(target, action, actor)

    def pause(self, target: str, *, actor: str = "api") -> bool:
        """Stop ramping and acting on the change in flight (it keeps being served).

        Blocks on the store; use :meth:`apause` in a coroutine."""
        return self._changes.set_paused(target, True, actor=actor)

    def resume(self, target: str, *, actor: str = "api") -> bool:
        """Resume a paused change. Blocks on the store; use :meth:`aresume` in a coroutine."""
        return self._changes.set_paused(target, False, actor=actor)

    def pin(self, target: str, version: str, *, adapter: ConfigAdapter | None = None, actor: str = "api") -> None:
        """Make ``version`` the active version (restored through the adapter if any) and
        hold it: proposals are refused until :meth:`unpin`.

        Blocks on the store and the adapter; use :meth:`apin` in a coroutine."""
        self._changes.pin(target, version, adapter=adapter, actor=actor)

    def unpin(self, target: str, *, actor: str = "api") -> bool:
        """Let changes of a pinned target be proposed again (``False`` if it was not pinned).

        Blocks on the store; use :meth:`aunpin` in a coroutine."""
        return self._changes.unpin(target, actor=actor)

    def revert(self, target: str, *, to: str | None = None, adapter: ConfigAdapter | None = None,
               actor: str = "api") -> Change:
        """Restore an earlier version through the adapter, as a new change recorded in the
        trail: by default the version the last promoted change replaced (whose patch is
        then refused for its cooldown), else ``to``. Raises :class:`ConfigError` when no
        adapter is available, :class:`InvalidTransition` while a change is in flight.

        Blocks on the store and the adapter; use :meth:`arevert` in a coroutine."""
        return self._changes.revert(target, to, adapter=adapter, actor=actor)

    def route(self, target: str, *, key: Any = None) -> tuple[str | None, str | None, dict | None]:
        """``(version, arm, config)`` that serves a call of ``target`` now: the active
        version (arm ``None``) or, during a canary, the arm ``key`` routes to (the same arm
        for the same key on every worker; a random one without a key). For adapters that
        serve config themselves (LangGraph's ``configurable``, a Hermes skill)."""
        return self._changes.route(target, key)

    def versions(self, target: str) -> list[dict]:
        """Every stored config version of a target, oldest first.

        Blocks on the store; use :meth:`aversions` in a coroutine."""
        return list_versions(self.store, target)

    def trail(self, target: str | None = None) -> list[dict]:
        """The trail's events (one target's, or all), oldest first.

        Blocks on the store; use :meth:`atrail` in a coroutine."""
        return self.store.trail_read(target=target)

    def verify_trail(self) -> TrailReport:
        """Check the trail's hash chain (see :func:`sil_core.verify_trail`).

        Blocks on the store; use :meth:`averify_trail` in a coroutine."""
        return verify_trail(self.store)

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write every queued record now; ``True`` if all of it is committed.

        Blocks until the store took the batch (at most ``timeout``); use :meth:`aflush`
        in a coroutine."""
        return self._writer.flush(timeout)

    def drain(self, timeout: float | None = 30.0) -> bool:
        """Flush, then wait until background judging, strategies and notifiers are done.

        Blocks (at most about ``timeout`` per stage); use :meth:`adrain` in a coroutine."""
        ok = self.flush(timeout)
        return self._decide.drain(timeout) and self._events.drain(timeout) and ok

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
        flushed = self._writer.flush(left())
        judged = self._decide.drain(left())
        notified = self._events.drain(left())
        flushed = self._writer.close(left() if flushed else 0.0) and flushed
        self._decide.close(0.0)
        self._events.close(0.0)
        self._report_close(timeout, flushed, judged, notified)
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
        self._sync = True
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

    # -- the async control plane: the same methods, off the event loop ----------------------
    async def _off_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking control-plane call on this guard's pool; the loop keeps running."""
        with self._control_lock:
            if self._control is None:
                self._control = ThreadPoolExecutor(_CONTROL_THREADS, thread_name_prefix="sil-control",
                                                   initializer=exits.own_thread)
            pool = self._control
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def aflush(self, timeout: float | None = 30.0) -> bool:
        """Async twin of :meth:`flush`: awaits the batch without a thread of its own."""
        return await self._writer.aflush(timeout)

    async def adrain(self, timeout: float | None = 30.0) -> bool:
        """Async twin of :meth:`drain`."""
        return await self._off_loop(self.drain, timeout)

    async def aclose(self, timeout: float | None = 30.0) -> None:
        """Async twin of :meth:`close`."""
        await self._off_loop(self.close, timeout)

    async def __aenter__(self) -> "Guard":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def astats(self, target: str, **kwargs: Any) -> Stats:
        """Async twin of :meth:`stats`."""
        return await self._off_loop(self.stats, target, **kwargs)

    async def achange(self, target: str) -> Change | None:
        """Async twin of :meth:`change`."""
        return await self._off_loop(self.change, target)

    async def aevaluate(self, target: str) -> Verdict | None:
        """Async twin of :meth:`evaluate`."""
        return await self._off_loop(self.evaluate, target)

    async def apropose(self, target: str, patch: dict, **kwargs: Any) -> Change:
        """Async twin of :meth:`propose`."""
        return await self._off_loop(self.propose, target, patch, **kwargs)

    async def aapprove(self, target: str, **kwargs: Any) -> Change:
        """Async twin of :meth:`approve`."""
        return await self._off_loop(self.approve, target, **kwargs)

    async def apromote(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`promote`."""
        return await self._off_loop(self.promote, target, **kwargs)

    async def arollback(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`rollback`."""
        return await self._off_loop(self.rollback, target, **kwargs)

    async def apause(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`pause`."""
        return await self._off_loop(self.pause, target, **kwargs)

    async def aresume(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`resume`."""
        return await self._off_loop(self.resume, target, **kwargs)

    async def apin(self, target: str, version: str, **kwargs: Any) -> None:
        """Async twin of :meth:`pin`."""
        return await self._off_loop(self.pin, target, version, **kwargs)

    async def aunpin(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`unpin`."""
        return await self._off_loop(self.unpin, target, **kwargs)

    async def arevert(self, target: str, **kwargs: Any) -> Change:
        """Async twin of :meth:`revert`."""
        return await self._off_loop(self.revert, target, **kwargs)

    async def ahealth(self, **kwargs: Any) -> Health:
        """Async twin of :meth:`health`."""
        return await self._off_loop(self.health, **kwargs)

    async def achanges(self, target: str | None = None) -> list[Change]:
        """Async twin of :meth:`changes`."""
        return await self._off_loop(self.changes, target)

    async def arequest(self, target: str, action: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`request`."""
        return await self._off_loop(self.request, target, action, **kwargs)

    async def aversions(self, target: str) -> list[dict]:
        """Async twin of :meth:`versions`."""
        return await self._off_loop(self.versions, target)

    async def atrail(self, target: str | None = None) -> list[dict]:
        """Async twin of :meth:`trail`."""
        return await self._off_loop(self.trail, target)

    async def averify_trail(self) -> TrailReport:
        """Async twin of :meth:`verify_trail`."""
        return await self._off_loop(self.verify_trail)

    def on_trigger(self, listener: Callable[[dict], None]) -> None:
        """Call ``listener(event)`` (on a background thread) when a target's failures
        cross its adaptive threshold."""
        self._trigger_listeners.append(listener)

    def emit(self, event: dict) -> None:
        """Send an event to every notifier, on the notifier thread."""
        if self.notifiers:
            self._events.submit(event)

    # -- internals: the hot path ---------------------------------------------------------
    def _start_call(self, target: str, key: Any = None) -> tuple[tuple | None, Any]:
        """Route a call: ``((version, arm, config), contextvar token)`` or ``(None, None)``."""
        try:
            view = self._views.get(target)
            if view is not None and view.unversioned and _mono() <= view.expires:
                read = self._readers.get(target) or self._reader(target)
                return None, _current.set(CallInfo(target, None, None, read))  # the common case
            route = self._changes.route(target, key)
            if route[0] is None:
                return None, _current.set(CallInfo(target, None, None, self._reader(target)))
            return route, _current.set(CallInfo(target, *route))
        except Exception as exc:
            report("guard.route", exc)
            return None, None

    def _reader(self, target: str) -> Callable[[], dict | None]:
        """How a call of a target without versions reads its config: from the target's
        adapter, when asked for (``None`` without an adapter)."""
        read = self._readers.get(target)
        if read is None:
            read = self._readers[target] = lambda: self.adapter_config(target)
        return read

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

    def _finish(self, target: str, ts: float, duration: float, exc: BaseException | None, ok: Any,
                route: tuple | None, token: Any, call_id: str | None = None, context: Any = None,
                score: float | None = None, attempt: int = 1) -> CallRecord | None:
        """Build the record of a finished call (never raises)."""
        try:
            if token is not None:
                info = _current.get()
                if info is not None:
                    # the id the call was given; else the info itself, resolved by the writer, so
                    # that an id the caller asks for later (last_call().call_id) is the record's
                    call_id = call_id or info._id or info
                    _last.set(info)
                try:
                    _current.reset(token)
                except ValueError:  # reset from another context (a generator resumed elsewhere)
                    pass
            version, arm = (route[0], route[1]) if route else (None, None)
            if exc is None:
                if ok is True:  # the id of a decorated call is assigned off the hot path
                    return CallRecord(call_id, target, ts, duration, _OK, None, None, version, arm, attempt, score,
                                      context)
                outcome, etype, msg = _ERROR, ok, None
            else:
                outcome, etype, msg = classify_exception(exc), type(exc).__name__, error_message(exc)
            return CallRecord(call_id, target, ts, duration, outcome, etype, msg, version, arm, attempt, score, context)
        except Exception as err:
            report("guard.record", err)
            return None

    def _put(self, item: CallRecord | Feedback | None) -> None:
        if item is not None:
            try:
                self._enqueue(item)
            except Exception as exc:
                report("guard.record", exc)

    async def _aput(self, item: CallRecord | Feedback | None) -> None:
        if item is None:
            return
        try:
            if self._sync:
                await self._writer.aput_durable(item)
            else:
                self._writer.put(item)
        except Exception as exc:
            report("guard.record", exc)

    # -- internals: after a batch is written (flusher thread) -----------------------------
    def _after_write(self, calls: list[CallRecord], feedback: list[Feedback], changed: Any = None) -> None:
        if changed is not None:  # the store says which records feedback changed, and how
            calls, judged = _as_stored(calls, changed)
        elif feedback:
            calls, judged = self._judged(calls, feedback)
        else:
            judged = []
        recent = self._recent
        for r in calls:
            if r.arm is not None:
                recent[r.id] = _slim(r)
        while len(recent) > _RECENT_MAX:
            recent.popitem(last=False)
        failing = set()
        runs = self._failure_runs
        for r in calls:
            ok = r.success
            if ok is False:
                runs[r.target] = runs.get(r.target, 0) + 1
                failing.add(r.target)
            elif ok:
                runs.pop(r.target, None)
        for target in failing:
            with fail_open("trigger.check"):
                self._check_trigger(target)
        with fail_open("change.observe"):
            for target in self._changes.observe(calls, judged):
                self._schedule_evaluation(target)

    def _judged(self, calls: list[CallRecord], feedback: list[Feedback]) -> tuple[list[CallRecord], list[CallRecord]]:
        """The batch's calls with the batch's own feedback applied, and the earlier canary
        calls its other feedback judged (as they now stand), so that a verdict given later
        (a thumbs-down, a check node) reaches the tripwire of the arm that served the call."""
        batch = {r.id: r for r in calls}
        judged: dict[str, CallRecord] = {}
        lookup: bool | None = None  # whether a call served elsewhere is worth a read
        for fb in feedback:
            record = batch.get(fb.call_id)
            if record is not None:
                batch[fb.call_id] = apply_feedback(record, fb)
                continue
            record = judged.get(fb.call_id)
            if record is None and fb.call_id in self._recent:
                record = _unslim(fb.call_id, self._recent[fb.call_id])
            if record is None:
                with fail_open("feedback.lookup"):
                    if lookup is None:
                        lookup = self._changes.any_in_flight()
                    if lookup:
                        record = self.store.get_call(fb.call_id)  # served by another process
            if record is None or record.arm is None:
                continue  # unknown, or not served during a change: nothing to tell a tripwire
            judged[fb.call_id] = record = apply_feedback(record, fb)
            self._recent[fb.call_id] = _slim(record)
        return list(batch.values()), list(judged.values())

    def _schedule_evaluation(self, target: str) -> None:
        if target in self._pending_eval:
            return
        self._pending_eval.add(target)

        def job() -> None:
            self._pending_eval.discard(target)
            with fail_open("change.evaluate"):
                self._changes.evaluate(target)

        self._decide.submit(job)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick >= 1.0 and (self._changes._watch or self._changes._watching):
            self._last_tick = now
            self._decide.submit(lambda: self._changes.tick())
        if now - self._last_heartbeat >= HEARTBEAT_S:
            self._last_heartbeat = now
            with fail_open("health.heartbeat"):
                self.store.kv_put("worker", self.worker_id, self.health(probe=False).as_dict(), expect_rev=None)

    def _check_trigger(self, target: str) -> None:
        now = _now()
        day = self.store.cells(target, since_hour=int((now - 86400) // BUCKET_S), hist=False)
        all_time = merge(self.store.cells(target, hist=False).values())
        calls_24h = merge(day.values()).n
        profile = self.thresholds.profile(target, calls_24h=calls_24h, total_calls=all_time.n)
        last = self._last_trigger.get(target)
        if last is not None and now - last < profile.cooldown_hours * 3600:
            return
        since = now - profile.analysis_window_hours * 3600
        window = merge(self.store.cells(target, since_hour=int(since // BUCKET_S), hist=False).values())
        decided = window.successes + window.failures
        run = self._failure_runs.get(target, 0)
        # a burst of consecutive failures (an outage) triggers even when the window's rate is low
        if not profile.triggers(window.failures, decided) and run < max(profile.failure_threshold, OUTAGE_RUN):
            return
        self._last_trigger[target] = now
        event = {
            "type": "failure_trigger",
            "target": target,
            "ts": now,
            "failures": window.failures,
            "calls": decided,
            "failure_rate": window.failures / decided if decided else None,
            "consecutive_failures": run,
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
        if self.strategy is not None:
            job = lambda: run_strategy(self, target, window, since)  # noqa: E731
            if self.strategy_inline:
                job()
            else:
                self._decide.submit(job)

    def _dispatch(self, event: dict) -> None:
        for notifier in self.notifiers:
            try:
                notifier.notify(event)
            except Exception as exc:
                report("notifier", exc)
                name = type(notifier).__name__
                last = self._notifier_errors.get(name, 0.0)
                if _mono() - last < 300 and last:
                    continue  # one trail event per notifier per 5 minutes: a dead one must not flood it
                self._notifier_errors[name] = _mono()
                with fail_open("trail.append"):
                    append_event(self.store, "notifier_error", event.get("target"), change_id=event.get("change_id"),
                                 actor=self.worker_id, notifier=name, error=repr(exc),
                                 event_type=event.get("type"))
