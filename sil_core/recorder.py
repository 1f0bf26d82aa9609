"""The hot path: route a call, build its record, queue it. And ``Recorder``, the same for
integrations.

``HotPath`` is what every guarded call of a Guard runs (the decorators and ``guard.call``
in ``calls.py``). :class:`Recorder` is the public face of it for integrations
(``guard.recorder(target)``): a framework's wrapper gets one per target, once, and calls
it on every execution, so the record's format stays inside sil_core (see the README,
"Writing an integration").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ._internal.failopen import report
from ._internal.jsonsafe import error_message
from .calls import CallInfo, _current, _last
from .metrics import clean_metrics
from .observe import Observers
from .outcomes import classify_exception
from .records import CallRecord, Feedback, Outcome

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("Begun", "Recorder")

_OK, _ERROR = Outcome.OK, Outcome.ERROR
#: observed calls in flight remembered by their token (``HotPath.observed``)
_OBSERVED_MAX = 100_000
#: what ``begin`` returns: ``(route, token)``; ``route`` is ``(version, arm, config)`` or ``None``
Begun = tuple


class HotPath:
    """Routing and recording for one Guard (never raises: it fails open)."""

    def __init__(self, guard: "Guard") -> None:
        self.guard = guard
        self.router = guard._changes.router
        self.views = self.router.views
        self.clock = guard.clock
        self.writer = guard._writer
        self.readers: dict[str, Callable[[], dict | None]] = {}  # per target: its adapter's config
        self.observers = guard._observers
        #: id(contextvar token) -> (token, CallInfo) of each observed call in flight, so that a call
        #: finished in another context (a generator resumed elsewhere) tells its own observers
        self.observed: dict[int, tuple[Any, CallInfo]] = {}

    def start(self, target: str, key: Any = None, route: tuple | None = None) -> Begun:
        """Route a call: ``((version, arm, config), contextvar token)`` or ``(None, token)``;
        ``route`` serves a call a given version instead (a resumed, pinned execution)."""
        try:
            if route is not None:
                info = CallInfo(target, *route)
            else:
                view = self.views.get(target)
                if view is not None and view.unversioned and self.clock.monotonic() <= view.expires:
                    route, info = None, CallInfo(target, None, None, self.readers.get(target) or self.reader(target))
                else:
                    route = self.router.view(target).route(key)
                    if route[0] is None:
                        route, info = None, CallInfo(target, None, None, self.reader(target))
                    else:
                        info = CallInfo(target, *route)
            if self.observers.calls:
                info._observed = self.observers.started(info)
                token = _current.set(info)
                if info._observed:
                    self._observe(token, info)
                return route, token
            return route, _current.set(info)
        except Exception as exc:
            report("guard.route", exc)
            return None, None

    def reader(self, target: str) -> Callable[[], dict | None]:
        """How a call of a target without versions reads its config: from the target's
        adapter, when asked for (``None`` without an adapter)."""
        read = self.readers.get(target)
        if read is None:
            guard = self.guard
            read = self.readers[target] = lambda: guard.adapter_config(target)
        return read

    def finish(self, target: str, ts: float, duration: float, exc: BaseException | None, ok: Any,
               route: tuple | None, token: Any, call_id: str | None = None, context: Any = None,
               score: float | None = None, attempt: int = 1, metrics: dict | None = None) -> CallRecord | None:
        """Build the record of a finished call (never raises)."""
        info = None
        try:
            if token is not None:
                info = _current.get()
                try:
                    _current.reset(token)
                except ValueError:  # reset from another context (a generator resumed elsewhere)
                    mine = self.observed.get(id(token)) if self.observed else None
                    if mine is not None and mine[0] is token:  # observed: its own info, not that context's
                        info = mine[1]
                if info is not None:
                    # the id the call was given; else the info itself, resolved by the writer, so
                    # that an id the caller asks for later (last_call().call_id) is the record's
                    call_id = call_id or info._id or info
                    _last.set(info)
                    if info._metrics and info._metrics is not metrics:
                        metrics = {**info._metrics, **metrics} if metrics else info._metrics
            version, arm = (route[0], route[1]) if route else (None, None)
            if metrics:
                metrics, score = split_score(clean_metrics(metrics, "call.metrics"), score)
            if exc is None:
                if ok is True:  # the id of a decorated call is assigned off the hot path
                    record = CallRecord(call_id, target, ts, duration, _OK, None, None, version, arm, attempt, score,
                                        context, metrics=metrics)
                    if info is not None and info._observed:
                        self._ended(info, record, token)
                    return record
                outcome, etype, msg = _ERROR, ok, None
            else:
                outcome, etype, msg = classify_exception(exc), type(exc).__name__, error_message(exc)
            record = CallRecord(call_id, target, ts, duration, outcome, etype, msg, version, arm, attempt, score,
                                context, metrics=metrics)
            if info is not None and info._observed:
                self._ended(info, record, token)
            return record
        except Exception as err:
            report("guard.record", err)
            return None

    def _observe(self, token: Any, info: CallInfo) -> None:
        """Remember an observed call's info by its token (bounded: a call never finished is
        forgotten after ``_OBSERVED_MAX`` later ones)."""
        observed = self.observed
        observed[id(token)] = (token, info)
        if len(observed) > _OBSERVED_MAX:
            try:
                del observed[next(iter(observed))]
            except (KeyError, RuntimeError, StopIteration):  # another thread changed it: next time
                pass

    def _ended(self, info: CallInfo, record: CallRecord, token: Any) -> None:
        """Tell the observers how an observed call ended (its id made now, for them), once."""
        mine = self.observed.pop(id(token), None)
        if mine is None or mine[0] is not token or mine[1] is not info:
            if mine is not None:
                self.observed[id(token)] = mine  # not this call's: put back
            return  # another call's info (this call was not observed), or told already
        if record.id is None or record.id is info:
            record.id = info.call_id
        self.observers.ended(info._observed, record)

    def put(self, item: CallRecord | Feedback | None) -> None:
        if item is not None:
            try:
                self.guard._enqueue(item)
            except Exception as exc:
                report("guard.record", exc)

    async def aput(self, item: CallRecord | Feedback | None) -> None:
        if item is None:
            return
        try:
            if self.guard.durability == "sync":
                await self.writer.aput_durable(item)
            else:
                self.writer.put(item)
        except Exception as exc:
            report("guard.record", exc)


def split_score(metrics: dict[str, float] | None, score: float | None) -> tuple[dict | None, float | None]:
    """``(metrics without "score", score)``: a ``score`` metric is the call's score (an
    explicit ``score=`` wins)."""
    if metrics and "score" in metrics:
        metrics = dict(metrics)
        value = metrics.pop("score")
        return metrics or None, score if score is not None else value
    return metrics, score


class _Step:
    """One step of a detached call: current (``current_call()``, observers' spans) inside."""

    __slots__ = ("call", "token", "entered")

    def __init__(self, call: CallInfo | None) -> None:
        self.call, self.token, self.entered = call, None, None

    def __enter__(self) -> CallInfo | None:
        call = self.call
        if call is not None:
            try:
                self.token = _current.set(call)
                if call._observed:
                    self.entered = Observers.entered(call._observed)
            except Exception as exc:
                report("guard.step", exc)
        return call

    def __exit__(self, *exc: Any) -> bool:
        try:
            if self.entered:
                Observers.exited(self.entered)
            if self.token is not None:
                _current.reset(self.token)
        except Exception as err:  # a step that ends in another context: leave it
            report("guard.step", err)
        return False


class Recorder:
    """Records the calls of one target for an integration (``guard.recorder(target)``).

    ::

        rec = guard.recorder("my-node")
        begun = rec.begin(key=thread_id)          # routes; current_call() works inside
        try:
            result = fn(...)
        except BaseException as exc:
            rec.put(rec.end(begun, ts, perf() - t0, exc))
            raise
        rec.put(rec.end(begun, ts, perf() - t0))

    ``end`` builds the :class:`~sil_core.records.CallRecord` (an integration may adjust its
    ``outcome`` or ``id`` before ``put``); ``plain()`` and ``ok()`` are the fast lane for a
    target no version serves yet (see their docstrings). Every method fails open.
    """

    __slots__ = ("guard", "target", "_hot", "_views", "_clock", "_append")

    def __init__(self, guard: "Guard", target: str) -> None:
        self.guard = guard
        self.target = target
        self._hot: HotPath = guard._hot
        self._views = self._hot.views
        self._clock = self._hot.clock
        self._append = guard._writer._queue.append

    def begin(self, key: Any = None, *, route: tuple | None = None) -> Begun:
        """Route one call (``key``: its routing key, e.g. a thread or user id) and make it
        the :func:`~sil_core.current_call`; ``route``: serve it this ``(version, arm,
        config)`` instead (an execution resumed on the version it started with)."""
        return self._hot.start(self.target, key, route)

    def end(self, begun: Begun | None, ts: float, duration: float, exc: BaseException | None = None,
            ok: Any = True, *, attempt: int = 1, call_id: str | None = None, context: Any = None,
            score: float | None = None, metrics: dict | None = None) -> CallRecord | None:
        """The record of a call that started at ``ts`` (epoch seconds) and took ``duration``
        seconds: raised ``exc``, or returned and judged ``ok`` (``True``, or the failure's
        error type as a string). ``begun`` is what :meth:`begin` returned, or ``None`` for
        a call of the fast lane (not routed). ``call_id`` gives the record an id of your
        own (for feedback); ``attempt`` is the framework's attempt number; ``metrics`` the
        call's numeric metrics (merged with ``current_call().metrics``). The record may be
        adjusted before :meth:`put` (e.g. ``record.outcome = Outcome.RETRIED`` for an
        attempt the framework will retry). ``None`` if it could not be built (reported;
        ``put(None)`` does nothing)."""
        route, token = begun or (None, None)
        return self._hot.finish(self.target, ts, duration, exc, ok, route, token, call_id, context, score, attempt,
                                metrics)

    def open(self, route: tuple | None = None) -> CallInfo | None:
        """Start a *detached* call, one that spans several steps in other contexts (an agent
        run: its model and tool calls): ``route`` is the ``(version, arm, config)`` serving
        it (``None``: no version). Observers start watching it now; it becomes the
        :func:`~sil_core.current_call` only inside :meth:`step`. Finish it with :meth:`close`."""
        try:
            info = CallInfo(self.target, *route) if route is not None else CallInfo(self.target, None, None, None)
            info.detached = True
            hot = self._hot
            if hot.observers.calls:
                info._observed = hot.observers.started(info)
            return info
        except Exception as exc:
            report("guard.route", exc)
            return None

    def step(self, call: CallInfo | None) -> "_Step":
        """``with rec.step(call):`` around one step of a detached call (a model or tool call):
        inside, it is the current call (and observers' current span)."""
        return _Step(call)

    def close(self, call: CallInfo | None, ts: float, duration: float, exc: BaseException | None = None,
              ok: Any = True, *, attempt: int = 1, call_id: str | None = None, context: Any = None,
              score: float | None = None, metrics: dict | None = None) -> CallRecord | None:
        """The record of a detached call (as :meth:`end` builds one); observers see it end."""
        if call is None:
            return self.end(None, ts, duration, exc, ok, attempt=attempt, call_id=call_id, context=context,
                            score=score, metrics=metrics)
        if call._metrics:
            metrics = {**call._metrics, **metrics} if metrics else call._metrics
        route = (call.version, call.arm, call._config) if call.version is not None else None
        record = self._hot.finish(self.target, ts, duration, exc, ok, route, None, call_id or call._id, context,
                                  score, attempt, metrics)
        if record is not None:
            if call_id is None:
                record.id = call.call_id
            if call._observed:
                self._hot.observers.ended(call._observed, record)
        return record

    def put(self, record: CallRecord | None) -> None:
        """Queue a record (with ``durability="sync"``, wait until it is committed)."""
        self._hot.put(record)

    async def aput(self, record: CallRecord | None) -> None:
        """``put`` for a coroutine: a sync guard awaits the commit without blocking the loop."""
        await self._hot.aput(record)

    def done(self, begun: Begun | None, ts: float, duration: float, attempt: int = 1,
             metrics: dict | None = None) -> None:
        """Record a call that :meth:`begin` started and that succeeded, as cheaply as the
        fast lane when nothing was asked of it (no version served it, no metrics, no
        observer): ``put(end(begun, ...))`` otherwise. Never raises."""
        try:
            route, token = begun or (None, None)
            if route is None and token is not None and not metrics and self.guard.durability != "sync":
                info = _current.get()
                if info is not None and not info._metrics and not info._observed:
                    _current.reset(token)
                    _last.set(info)
                    # a CallRecord's fields in order, its id the call's (made now, or by the writer)
                    self._append((info._id or info, self.target, ts, duration, _OK, None, None, None, None, attempt,
                                  None, None))
                    return
        except ValueError:  # a reset from another context: the general path below
            pass
        except Exception as exc:
            report("guard.record", exc)
        self._hot.put(self.end(begun, ts, duration, attempt=attempt, metrics=metrics))

    def plain(self) -> bool:
        """Whether the target is served without a version now (no change was ever made, and
        this worker's view of it is fresh): then ``ok`` may record a call, and routing and
        ``current_call`` may be skipped."""
        v = self._views.get(self.target)
        return v is not None and v.unversioned and self._clock.monotonic() <= v.expires and not self._hot.observers.calls

    def ok(self, ts: float, duration: float, attempt: int = 1) -> None:
        """Record a successful call of a :meth:`plain` target, as cheaply as possible (its id
        is made off the hot path). Under ``durability="sync"`` it waits like :meth:`put`."""
        if self.guard.durability == "sync":
            self._hot.put(CallRecord(None, self.target, ts, duration, _OK, attempt=attempt))
        else:  # a CallRecord's fields in order: the writer builds the record
            self._append((None, self.target, ts, duration, _OK, None, None, None, None, attempt, None, None))

    def __repr__(self) -> str:
        return f"<Recorder {self.target!r} of {self.guard!r}>"
