"""A guard node: a real graph node that judges the state a guarded target produced.

``GuardNode(guard, "write", check)`` is added with ``add_node`` after the target (also
after a ``Send`` fan-out, with ``defer=True`` so it sees the fan-out's final state). Each
run calls ``check(state)``; a falsy value (or a check that raises) means the target "ran
but produced garbage", a failure of the version that produced it.

How the verdict reaches the right call: the guarded node (:func:`guarded_node`) notes the
successful executions a guard node has not judged yet under the graph run that made them
(and, with a thread id, in the guard's store; see ``_ledger.py``), only for targets a
``GuardNode`` watches, so unwatched targets pay nothing. A failing check turns each of
those calls into a failure with :meth:`Guard.feedback <sil_core.Guard.feedback>`: the
node's own record now says "failed", against its version and arm, so a canary whose
candidate produces garbage is detected like one whose candidate raises, and no execution
is ever counted twice. The verdict of a run resumed in another worker after an
``interrupt()`` finds its calls through the store. A verdict with no call to judge (the
target is not a guarded node of the same guard, or it ran before this guard existed) is
never recorded as a guess: the first one raises :class:`~sil_core.ConfigError` naming
what to change, later ones are logged.

:meth:`GuardNode.route` is a conditional-edge function: ``"fallback"`` when the check
fails or when the version that served the thread belongs to a change that was rolled back,
else ``"ok"``.

No ``from __future__ import annotations`` here: LangGraph reads ``__call__``'s signature.
"""

import asyncio
import inspect
import threading
from typing import Any, Callable, Optional

from sil_core import ConfigError
from sil_core.integration import Mode, State, bucket, report

from ._compat import load
from ._ledger import ledger, run_of
from .callbacks import note_own_node

__all__ = ("GuardNode",)

OK, FALLBACK = "ok", "fallback"


class GuardNode:
    """Judge the state ``target`` produced with ``check(state) -> bool``.

    Args:
        guard: the :class:`sil_core.Guard` the target is guarded by.
        target: the guarded target's name (the node name, by default).
        check: the success predicate on the graph state.
        name: the node's name (``__name__``, used by ``add_node(guard_node)``), by
            default ``"guard_<target>"``.
        update: optional ``update(state, ok) -> dict`` whose result is the node's state
            update (e.g. to write the verdict into state); by default the node writes
            nothing.
        evaluate: optional ``evaluate(state)``, a quality score of the state (an LLM
            judge): run once per verdict, later, on the guard's evaluator pool
            (``guard.evaluate_later``), and given to every execution this verdict judges
            (a number: their ``score``; a dict: ``success``, ``score``, metrics).

    Example::

        judge = GuardNode(guard, "write", lambda s: "[1]" in s["answer"])
        builder.add_node("judge", judge, defer=True)
        builder.add_conditional_edges("judge", judge.route, {"ok": END, "fallback": "safe_write"})
    """

    def __init__(self, guard: Any, target: str, check: Callable[[Any], Any], *, name: Optional[str] = None,
                 update: Optional[Callable[[Any, bool], Any]] = None,
                 evaluate: Optional[Callable[[Any], Any]] = None) -> None:
        self.guard, self.target, self.check, self.update, self.evaluate = guard, target, check, update, evaluate
        self.__name__ = name or f"guard_{target}"
        self._lg = load()
        self._ledger = ledger(guard)
        self._attributed = False  # whether a verdict ever found its call
        with self._ledger.lock:
            self._ledger.judged.add(target)

    def __repr__(self) -> str:
        return f"GuardNode({self.target!r}, name={self.__name__!r})"

    def __call__(self, state: Any) -> Any:
        note_own_node()  # GuardCallbackHandler leaves sil-guard's own nodes out
        ok = self._judge(state)
        try:
            self._record(ok, state)
        except ConfigError:
            raise  # a graph whose verdicts cannot be attributed: said at the first run
        except Exception as exc:  # fail open: the graph keeps running
            report("guard_node.record", exc)
        if self.update is None:
            return None
        return self.update(state, ok)

    def route(self, state: Any) -> str:
        """``"fallback"`` when the state fails the check or the thread's version was rolled
        back; ``"ok"`` otherwise."""
        if not self._judge(state):
            return FALLBACK
        try:
            view = self.guard.view(self.target)
            if view.state == State.ROLLED_BACK and view.candidate is not None:
                served = self._served_version(self._thread(), view)
                if served == view.candidate:
                    return FALLBACK
        except Exception as exc:
            report("guard_node.route", exc)
        return OK

    # -- internals ------------------------------------------------------------------------
    def _judge(self, state: Any) -> bool:
        try:
            return bool(self.check(state))
        except Exception as exc:  # a check that raises is a failed check
            report("guard_node.check", exc)
            return False

    def _configurable(self) -> dict:
        try:
            return self._lg.get_config().get("configurable") or {}
        except Exception:
            return {}

    def _thread(self) -> Any:
        return self._configurable().get("thread_id")

    def _served_version(self, thread: Any, view: Any) -> Optional[str]:
        """The version that served ``thread``'s last call of the target (``view``: the
        target's rolled-back change): from this process's ledger, else (the call ran in
        another worker) the arm the thread's key had at the canary's last weight."""
        entry = self._ledger.served_version(self.target, run_of(self._configurable()), thread)
        if entry is not None:
            return entry[0]
        if view.mode == Mode.CANARY and thread is not None:
            return view.candidate if bucket(view.change_id, thread, view.key_hash) < view.weight else view.baseline
        return self.guard.route(self.target, key=thread)[0]

    def _record(self, ok: bool, state: Any = None) -> None:
        configurable = self._configurable()
        thread = configurable.get("thread_id")
        calls = self._ledger.take(self.target, run_of(configurable), thread)
        if calls is None and thread is not None:
            calls = self._ledger.take_stored(self.target, thread)  # the run was resumed (another worker?)
        if calls is None:
            self._unattributed(thread)
            return
        self._attributed = True
        if not ok:
            for call_id in calls:
                self.guard.feedback(call_id, success=False)
        if self.evaluate is not None and calls:
            once = _Once(self.evaluate)
            for call_id in calls:
                self.guard.evaluate_later(call_id, once, state)

    def _unattributed(self, thread: Any) -> None:
        """A verdict with no call to judge: never recorded as a guess."""
        message = (f"GuardNode({self.target!r}) found no execution of {self.target!r} to judge in this run"
                   + (f" (thread {thread!r})" if thread is not None else "") + ": wrap that node with "
                   f"guarded_node(fn, guard=guard) or add_guarded_node(builder, {self.target!r}, fn, guard=guard), "
                   "with the same guard, and run the GuardNode after it in the same graph")
        if not self._attributed:
            raise ConfigError(message)
        report("guard_node.unattributed", RuntimeError(message))


class _Once:
    """``fn(state)`` computed once for every call one verdict judges (thread-safe)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn, self.lock, self.done, self.value, self.error = fn, threading.Lock(), False, None, None

    def __call__(self, state: Any) -> Any:
        with self.lock:
            if not self.done:
                self.done = True
                try:
                    value = self.fn(state)
                    self.value = asyncio.run(_wait(value)) if inspect.isawaitable(value) else value
                except Exception as exc:  # raised to each call's evaluation (reported there)
                    self.error = exc
            if self.error is not None:
                raise self.error
            return self.value


async def _wait(awaitable: Any) -> Any:
    return await awaitable
