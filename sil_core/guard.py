"""The Guard: wrap agent code, record every call, guard every config change.

One object in three forms: a decorator (``@guard.track``), a context manager
(``with guard.call(target) as call``, also ``async with``) and an explicit
``guard.record(...)`` for imports and replays. Results and exceptions pass through
unchanged; recording is write-behind and fails open. Config changes go through
``guard.propose(...)`` and are judged and acted on in the background (see ``changes.py``).
"""

from __future__ import annotations

import atexit
import time
import weakref
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

from ._internal.failopen import fail_open, report
from ._internal.ids import new_id
from ._internal.jsonsafe import error_message
from ._internal.worker import BackgroundWorker
from ._internal.writer import Writer
from .adapters import ConfigAdapter
from .aggregates import BUCKET_S, Stats, merge
from .calls import CallHandle, CallInfo, _current, wrap
from .changes import ChangeManager, default_worker_id
from .detect.verdict import Verdict
from .errors import ConfigError
from .notify import Notifier
from .outcomes import classify_exception
from .policy import RolloutPolicy
from .records import CallRecord, Feedback, Outcome
from .rollout import Change
from .store import Store, open_store
from .strategies import run_strategy
from .thresholds import AdaptiveThreshold
from .trail import TrailReport, append_event, verify_trail
from .versions import list_versions

__all__ = ("Guard",)

F = TypeVar("F", bound=Callable[..., Any])
_now = time.time
_mono = time.monotonic
#: consecutive failures that trigger whatever the window's failure rate (an outage)
OUTAGE_RUN = 5
_OK, _ERROR = Outcome.OK, Outcome.ERROR


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
        self._sync = durability == "sync"
        self._enqueue = self._writer.put_durable if self._sync else self._writer.put
        self._closed = False
        ref = weakref.ref(self)
        atexit.register(lambda: (g := ref()) is not None and g.close(timeout=5.0))

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

    # -- changes -------------------------------------------------------------------------
    def propose(self, target: str, patch: dict, *, adapter: ConfigAdapter | None = None, mode: str | None = None,
                policy: RolloutPolicy | None = None, actor: str | None = None, approve: bool = True,
                metadata: dict | None = None) -> Change:
        """Roll a config patch out under guard and return the :class:`Change`.

        ``mode="canary"`` serves baseline and candidate side by side (read the arm's config
        from ``guard.call(...).config`` or :func:`current_call`); ``mode="switch"`` applies
        the patch globally through the adapter and compares with a frozen baseline window.
        A target has at most one change in flight: a proposal meanwhile is ``rejected``.
        ``approve=False`` leaves it ``proposed`` until :meth:`approve`. ``metadata`` (why
        it was proposed) goes to the trail's ``change_proposed`` event, not to the config.
        """
        self.flush()  # the baseline's evidence includes every call made before the proposal
        return self._changes.propose(target, patch, adapter=adapter, mode=mode or self.mode, policy=policy,
                                     actor=actor, approve=approve, metadata=metadata)

    def change(self, target: str) -> Change | None:
        """The target's latest change, in flight or finished, with its latest verdict."""
        self.flush()
        row = self._changes.latest_row(target)
        if row is None:
            return None
        verdict = None
        if row["state"] == "canary" or (row["state"] == "paused" and not row.get("verdict")):
            with fail_open("change.verdict"):
                verdict = self._changes.current_verdict(row)
        return Change.from_row(row, verdict)

    def evaluate(self, target: str) -> Verdict | None:
        """Judge the target's change now, on this thread, and act on the verdict."""
        self.flush()
        return self._changes.evaluate(target)

    def approve(self, target: str, *, actor: str = "api") -> Change:
        """Start a change that waits for approval."""
        return self._changes.approve(target, actor)

    def promote(self, target: str, *, actor: str = "api") -> bool:
        """Promote the change in flight now."""
        return self._changes.promote(target, Verdict(Verdict.HEALTHY, f"promoted by {actor}", "manual"), actor=actor)

    def rollback(self, target: str, *, actor: str = "api") -> bool:
        """Roll the change in flight back now (idempotent: ``False`` if there is none)."""
        return self._changes.rollback(target, Verdict(Verdict.REGRESSED, f"rolled back by {actor}", "manual"), actor=actor)

    def pause(self, target: str, *, actor: str = "api") -> bool:
        """Stop ramping and acting on the change in flight (it keeps being served)."""
        return self._changes.set_paused(target, True, actor=actor)

    def resume(self, target: str, *, actor: str = "api") -> bool:
        return self._changes.set_paused(target, False, actor=actor)

    def pin(self, target: str, version: str, *, adapter: ConfigAdapter | None = None, actor: str = "api") -> None:
        """Make ``version`` the active version (restored through the adapter if any)."""
        self._changes.pin(target, version, adapter=adapter, actor=actor)

    def route(self, target: str, *, key: Any = None) -> tuple[str | None, str | None, dict | None]:
        """``(version, arm, config)`` that serves a call of ``target`` now: the active
        version (arm ``None``) or, during a canary, the arm ``key`` routes to (the same arm
        for the same key on every worker; a random one without a key). For adapters that
        serve config themselves (LangGraph's ``configurable``, a Hermes skill)."""
        return self._changes.route(target, key)

    def versions(self, target: str) -> list[dict]:
        """Every stored config version of a target, oldest first."""
        return list_versions(self.store, target)

    def trail(self, target: str | None = None) -> list[dict]:
        """The trail's events (one target's, or all), oldest first."""
        return self.store.trail_read(target=target)

    def verify_trail(self) -> TrailReport:
        """Check the trail's hash chain (see :func:`sil_core.verify_trail`)."""
        return verify_trail(self.store)

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write every queued record now; ``True`` if all of it is committed."""
        return self._writer.flush(timeout)

    def drain(self, timeout: float | None = 30.0) -> bool:
        """Flush, then wait until background judging, strategies and notifiers are done."""
        ok = self.flush(timeout)
        return self._decide.drain(timeout) and self._events.drain(timeout) and ok

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, stop the background threads and close a store this guard opened."""
        if self._closed:
            return
        self._closed = True
        with fail_open("guard.close"):
            self._writer.close(timeout)
            self._decide.close(timeout)
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
                return None, None  # the common case: a target without versions
            route = self._changes.route(target, key)
            if route[0] is None:
                return None, None
            return route, _current.set(CallInfo(target, *route))
        except Exception as exc:
            report("guard.route", exc)
            return None, None

    def _finish(self, target: str, ts: float, duration: float, exc: BaseException | None, ok: Any,
                route: tuple | None, token: Any, call_id: str | None = None, context: Any = None,
                score: float | None = None, attempt: int = 1) -> CallRecord | None:
        """Build the record of a finished call (never raises)."""
        try:
            if token is not None:
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
    def _after_write(self, calls: list[CallRecord]) -> None:
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
            for target in self._changes.observe(calls):
                self._schedule_evaluation(target)

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
        if now - self._last_tick >= 1.0 and self._changes._watch:
            self._last_tick = now
            self._decide.submit(lambda: self._changes.tick())

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
