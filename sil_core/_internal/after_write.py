"""What a Guard does after each batch is written (on the flusher thread): remember canary
calls for their feedback, count failure runs, check the adaptive threshold (and run the
strategy), feed the change engine's tripwires and schedule judging; plus the periodic
tick and the notifier dispatch."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..aggregates import BUCKET_S, merge
from ..health import HEARTBEAT_S
from ..records import CallRecord, Feedback
from ..store._common import apply_feedback
from ..strategies import run_strategy
from ..trail import append_event
from .failopen import fail_open, report

if TYPE_CHECKING:
    from ..guard import Guard

__all__ = ("AfterWrite",)

#: consecutive failures that trigger whatever the window's failure rate (an outage)
OUTAGE_RUN = 5
#: canary records remembered per guard, so that feedback finds its call's arm without a read
RECENT_MAX = 10_000


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


class AfterWrite:
    def __init__(self, guard: "Guard") -> None:
        self.guard = guard
        self.recent: OrderedDict[str, tuple] = OrderedDict()  # canary records (_slim), for feedback
        self.failure_runs: dict[str, int] = {}  # consecutive failures per target, this worker
        self.last_trigger: dict[str, float] = {}
        self.notifier_errors: dict[str, float] = {}
        self.pending_eval: set[str] = set()
        self.last_tick = 0.0
        self.last_heartbeat = time.monotonic()  # the first report after HEARTBEAT_S: a short script writes none
        self.heartbeats = 0
        self.stopped: float | None = None  # when close wrote this worker's last report

    def __call__(self, calls: list[CallRecord], feedback: list[Feedback], changed: Any = None) -> None:
        if changed is not None:  # the store says which records feedback changed, and how
            calls, judged = _as_stored(calls, changed)
        elif feedback:
            calls, judged = self._judged(calls, feedback)
        else:
            judged = []
        recent = self.recent
        for r in calls:
            if r.arm is not None:
                recent[r.id] = _slim(r)
        while len(recent) > RECENT_MAX:
            recent.popitem(last=False)
        failing = set()
        runs = self.failure_runs
        for r in calls:
            ok = r.success
            if ok is False:
                runs[r.target] = runs.get(r.target, 0) + 1
                failing.add(r.target)
            elif ok:
                runs.pop(r.target, None)
        for target in failing:
            with fail_open("trigger.check"):
                self.check_trigger(target)
        with fail_open("change.observe"):
            for target in self.guard._changes.observe(calls, judged):
                self.schedule_evaluation(target)

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
            if record is None and fb.call_id in self.recent:
                record = _unslim(fb.call_id, self.recent[fb.call_id])
            if record is None:
                with fail_open("feedback.lookup"):
                    if lookup is None:
                        lookup = self.guard._changes.any_in_flight()
                    if lookup:
                        record = self.guard.store.get_call(fb.call_id)  # served by another process
            if record is None or record.arm is None:
                continue  # unknown, or not served during a change: nothing to tell a tripwire
            judged[fb.call_id] = record = apply_feedback(record, fb)
            self.recent[fb.call_id] = _slim(record)
        return list(batch.values()), list(judged.values())

    def schedule_evaluation(self, target: str) -> None:
        if target in self.pending_eval:
            return
        self.pending_eval.add(target)
        changes = self.guard._changes

        def job() -> None:
            self.pending_eval.discard(target)
            with fail_open("change.evaluate"):
                changes.evaluate(target)

        self.guard._decide.submit(job)

    def tick(self) -> None:
        """Every flusher cycle: judge changes in flight about once a second, and write this
        worker's health to the store every ``HEARTBEAT_S``."""
        guard = self.guard
        now = time.monotonic()
        if now - self.last_tick >= 1.0 and guard._changes.busy():
            self.last_tick = now
            guard._decide.submit(guard._changes.tick)
        if now - self.last_heartbeat >= HEARTBEAT_S:
            self.heartbeat(now)

    def heartbeat(self, now: float | None = None, **extra: Any) -> None:
        """Write this worker's health to the store (``extra``: e.g. ``stopped=ts`` at close)."""
        self.last_heartbeat = time.monotonic() if now is None else now
        self.heartbeats += 1
        if "stopped" in extra:
            self.stopped = extra["stopped"]
        elif self.stopped is not None:  # a late one (a job queued before close) still says so
            extra = {**extra, "stopped": self.stopped}
        with fail_open("health.heartbeat"):
            self.guard.store.kv_put("worker", self.guard.worker_id,
                                    {**self.guard.health(probe=False).as_dict(), **extra}, expect_rev=None)

    def check_trigger(self, target: str) -> None:
        guard = self.guard
        store = guard.store
        now = guard.clock.time()
        day = store.cells(target, since_hour=int((now - 86400) // BUCKET_S), hist=False)
        all_time = merge(store.cells(target, hist=False).values())
        calls_24h = merge(day.values()).n
        profile = guard.thresholds.profile(target, calls_24h=calls_24h, total_calls=all_time.n)
        last = self.last_trigger.get(target)
        if last is not None and now - last < profile.cooldown_hours * 3600:
            return
        since = now - profile.analysis_window_hours * 3600
        window = merge(store.cells(target, since_hour=int(since // BUCKET_S), hist=False).values())
        decided = window.successes + window.failures
        run = self.failure_runs.get(target, 0)
        # a burst of consecutive failures (an outage) triggers even when the window's rate is low
        if not profile.triggers(window.failures, decided) and run < max(profile.failure_threshold, OUTAGE_RUN):
            return
        self.last_trigger[target] = now
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
        guard.emit(event)
        for listener in guard._trigger_listeners:
            with fail_open("trigger.listener"):
                listener(event)
        if guard.strategy is not None:
            job = lambda: run_strategy(guard, target, window, since)  # noqa: E731
            if guard.strategy_inline:
                job()
            else:
                guard._decide.submit(job)

    def dispatch(self, event: dict) -> None:
        """Send one event to every notifier (on the notifier thread); a notifier that fails
        is reported, and noted in the trail at most once per 5 minutes."""
        for notifier in self.guard.notifiers:
            try:
                notifier.notify(event)
            except Exception as exc:
                report("notifier", exc)
                name = type(notifier).__name__
                last = self.notifier_errors.get(name, 0.0)
                if time.monotonic() - last < 300 and last:
                    continue  # one trail event per notifier per 5 minutes: a dead one must not flood it
                self.notifier_errors[name] = time.monotonic()
                with fail_open("trail.append"):
                    append_event(self.guard.store, "notifier_error", event.get("target"),
                                 change_id=event.get("change_id"), actor=self.guard.worker_id, notifier=name,
                                 error=repr(exc), event_type=event.get("type"))
