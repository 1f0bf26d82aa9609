"""Evaluators off the hot path: ``fn(result)`` scores a call's result later, as feedback.

An evaluator (an LLM judge, a checker) may take seconds, so it never runs on the caller:
``guard.evaluate_later(call_id, fn, result)`` (and ``track(..., evaluate=fn)``) queues it
to a small pool of background threads. Its return value becomes feedback on the call:

* a number: the call's ``score``;
* a dict: ``success`` (bool) and ``score`` as feedback of those, every other key a metric;
* ``None``: nothing.

A coroutine function is run to completion in the pool. An evaluator that raises is
reported and skipped; one that takes longer than ``timeout_s`` is abandoned (its thread
is left to finish on its own and its result is discarded) and counted. When the queue is
full the evaluation is dropped and counted. Nothing here ever blocks recording.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from ._internal.failopen import report
from ._internal.worker import BackgroundWorker

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("Evaluations",)

_log = logging.getLogger("sil_core")
#: abandoned (timed-out) evaluator threads still running beyond which new evaluations wait
MAX_ABANDONED = 16


class Evaluations:
    """The evaluator pool of one guard (``workers`` threads, a bounded queue)."""

    def __init__(self, guard: "Guard", *, workers: int = 2, timeout_s: float = 60.0, max_queue: int = 1000) -> None:
        self.guard = guard
        self.timeout_s = timeout_s
        self.timed_out = 0
        self.failed = 0
        self.done = 0
        self._abandoned: list[threading.Thread] = []
        self._next = 0
        self._lock = threading.Lock()
        self._workers = [BackgroundWorker(f"sil-evaluate-{i}", self._run, max_queue=max(1, max_queue // workers))
                         for i in range(max(1, workers))]

    @property
    def dropped(self) -> int:
        """Evaluations dropped because the queue was full."""
        return sum(w.dropped for w in self._workers)

    def submit(self, call_id: str, evaluator: Callable[[Any], Any], result: Any) -> None:
        """Queue ``evaluator(result)``; its value becomes feedback on ``call_id``."""
        with self._lock:
            worker = self._workers[self._next % len(self._workers)]
            self._next += 1
        worker.submit((call_id, evaluator, result))

    def drain(self, timeout: float | None = 30.0) -> bool:
        """Wait until every queued evaluation finished (or was abandoned)."""
        return all([w.drain(timeout) for w in self._workers])

    def close(self, timeout: float | None = 0.0) -> None:
        for w in self._workers:
            w.close(timeout)

    def _run(self, item: tuple) -> None:
        call_id, evaluator, result = item
        with self._lock:  # the pool's threads share it
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            stuck = len(self._abandoned)
        if stuck >= MAX_ABANDONED:
            self.timed_out += 1
            _log.warning("sil-guard: evaluation of call %s skipped: %d evaluators are still running past their "
                         "timeout", call_id, stuck)
            return
        box: dict[str, Any] = {}
        thread = threading.Thread(target=_evaluate, args=(evaluator, result, box), name="sil-evaluator", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            self.timed_out += 1
            with self._lock:
                self._abandoned.append(thread)
            _log.warning("sil-guard: evaluator %s took longer than %gs on call %s: skipped",
                         getattr(evaluator, "__qualname__", evaluator), self.timeout_s, call_id)
            return
        if "error" in box:
            self.failed += 1
            report("evaluator", box["error"])
            return
        self.done += 1
        feed(self.guard, call_id, box.get("value"))


def _evaluate(evaluator: Callable[[Any], Any], result: Any, box: dict) -> None:
    try:
        value = evaluator(result)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
        box["value"] = value
    except BaseException as exc:  # noqa: BLE001 - an evaluator's error is reported, never raised
        box["error"] = exc


async def _await(awaitable: Any) -> Any:
    return await awaitable


def feed(guard: "Guard", call_id: str, value: Any) -> None:
    """Give an evaluator's value to the call as feedback (see the module docstring)."""
    if value is None:
        return
    if isinstance(value, bool):
        guard.feedback(call_id, success=value)
    elif isinstance(value, (int, float)):
        guard.feedback(call_id, score=value)
    elif isinstance(value, dict):
        rest = dict(value)
        success, score = rest.pop("success", None), rest.pop("score", None)
        if success is None and score is None and not rest:
            return
        guard.feedback(call_id, success=None if success is None else bool(success), score=score,
                       metrics=rest or None)
    else:
        report("evaluator", TypeError(f"an evaluator returned {type(value).__name__}; return a number, a dict or None"))
