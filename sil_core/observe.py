"""Observers: how an exporter (OpenTelemetry, a metrics library) sees what a guard does.

``guard.add_observer(obs)`` registers an object with any of these methods; each is
optional, runs where the event happens, and fails open (an observer that raises is
reported and the call goes on):

* ``call_started(info: CallInfo) -> state``: on the caller's thread (or task) when a
  guarded call starts, inside the caller's context: a span started here nests under the
  caller's current span, and one made current here is the parent of what the call does.
* ``call_ended(state, record: CallRecord)``: on the same thread and context when the call's
  record is built (its outcome, latency, version, arm, metrics); ``state`` is what
  ``call_started`` returned.
* ``call_entered(state) -> token`` and ``call_exited(state, token)``: a *detached* call
  (``info.detached``: one that spans several steps, an agent run whose model and tool calls
  run in other contexts; ``Recorder.open``) is not made current by ``call_started``;
  each of its steps (``Recorder.step``) enters it and exits it, on the step's thread.
* ``feedback_given(feedback: Feedback)``: on the thread that called ``guard.feedback``.
* ``trail_event(event: dict)``: each event the guard appends to the trail
  (``change_proposed``, ``change_applied``, ``ramp``, ``verdict``, ``rollback_started``,
  ``rollback_succeeded``, ``promoted``, ``restore_failed``, ... : see the README, "The trail"),
  with ``type``, ``target``, ``change_id``, ``actor`` and its data, on the thread that
  decided it (often a background one).

Without an observer of calls the hot path pays one attribute test.
"""

from __future__ import annotations

from typing import Any

from ._internal.failopen import report

__all__ = ("Observers",)


class Observers(list):
    """The observers of one guard. ``calls`` says whether any of them watches calls (the
    hot path tests only that: an observer of decisions alone costs a call nothing)."""

    calls = False

    def changed(self) -> None:
        """Recompute ``calls`` after the list changed."""
        self.calls = any(callable(getattr(o, "call_started", None)) or callable(getattr(o, "call_ended", None))
                         for o in self)

    def started(self, info: Any) -> list | None:
        """Tell every observer a call started; their states, for :meth:`ended`."""
        states = []
        for obs in self:
            fn = getattr(obs, "call_started", None)
            if fn is None:
                continue
            try:
                states.append((obs, fn(info)))
            except Exception as exc:
                report("observer.call_started", exc)
        return states or None

    @staticmethod
    def ended(states: list, record: Any) -> None:
        """Tell each observer that saw the start how the call ended (in reverse order)."""
        for obs, state in reversed(states):
            fn = getattr(obs, "call_ended", None)
            if fn is None:
                continue
            try:
                fn(state, record)
            except Exception as exc:
                report("observer.call_ended", exc)

    @staticmethod
    def entered(states: list) -> list:
        """Enter a detached call's step; the tokens, for :meth:`exited`."""
        tokens = []
        for obs, state in states:
            fn = getattr(obs, "call_entered", None)
            if fn is None:
                continue
            try:
                tokens.append((obs, state, fn(state)))
            except Exception as exc:
                report("observer.call_entered", exc)
        return tokens

    @staticmethod
    def exited(tokens: list) -> None:
        for obs, state, token in reversed(tokens):
            try:
                obs.call_exited(state, token)
            except Exception as exc:
                report("observer.call_exited", exc)

    def feedback(self, fb: Any) -> None:
        for obs in self:
            fn = getattr(obs, "feedback_given", None)
            if fn is not None:
                try:
                    fn(fb)
                except Exception as exc:
                    report("observer.feedback_given", exc)

    def trail(self, event: dict) -> None:
        for obs in self:
            fn = getattr(obs, "trail_event", None)
            if fn is not None:
                try:
                    fn(dict(event))
                except Exception as exc:
                    report("observer.trail_event", exc)
