"""The recording shells around one call: decorator wrappers and the ``CallHandle``.

Each shell only measures, routes and builds a record; the decision logic lives in the
Guard and its ChangeManager. The user's function always runs outside any fail-open
block, so its result and exceptions pass through untouched.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from ._internal.failopen import report
from ._internal.ids import new_id
from ._internal.validate import finite

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ("CallHandle", "CallInfo", "current_call", "last_call")

_perf = time.perf_counter
_now = time.time
PREDICATE_FAILED = "PredicateFailed"
PREDICATE_ERROR = "PredicateError"
MARKED_FAILED = "MarkedFailed"


class CallInfo:
    """What a guarded function can learn about its own call (see :func:`current_call`).

    ``config`` is the config of the version serving the call: the arm's during a change;
    before a target's first change, what its adapter holds (read when asked for), or
    ``None`` without an adapter. ``call_id`` is the id the call's record will carry, for
    :meth:`Guard.feedback <sil_core.Guard.feedback>` (made when first asked for).
    ``metrics`` is the call's dict of numeric metrics (``metrics["tokens_out"] = 812``),
    recorded with the call (see ``sil_core.metrics``)."""

    __slots__ = ("target", "version", "arm", "_config", "_id", "_metrics", "_observed", "detached")

    def __init__(self, target: str, version: str | None, arm: str | None,
                 config: dict | Callable[[], dict | None] | None, call_id: str | None = None) -> None:
        # ``config`` may be a function that reads it when asked for (a target without versions)
        self.target, self.version, self.arm, self._config, self._id = target, version, arm, config, call_id
        self._metrics: dict | None = None
        self._observed: list | None = None  # (observer, state) pairs (sil_core.observe)
        #: a call that spans several steps (an agent run): current only inside each step
        self.detached = False

    @property
    def config(self) -> dict | None:
        config = self._config
        return config() if callable(config) else config

    @property
    def metrics(self) -> dict:
        if self._metrics is None:
            self._metrics = {}
        return self._metrics

    @property
    def call_id(self) -> str:
        if self._id is None:
            with _id_lock:  # the caller and the writer may ask at once: one id
                if self._id is None:
                    self._id = new_id()
        return self._id

    def __repr__(self) -> str:
        return f"CallInfo(target={self.target!r}, version={self.version!r}, arm={self.arm!r})"


_id_lock = threading.Lock()
_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("sil_current_call", default=None)
_last: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("sil_last_call", default=None)


def current_call() -> CallInfo | None:
    """Inside a guarded call: its target, version, arm, config (the arm's config during a
    canary; before the target's first change, its adapter's config) and ``call_id``.
    ``None`` elsewhere."""
    return _current.get()


def last_call() -> CallInfo | None:
    """The guarded call that last finished in this thread or task (``None`` before any):
    how the caller of a ``@guard.track`` function gets its ``call_id`` for feedback."""
    return _last.get()


def judge_result(success: Callable[[Any], Any] | None, result: Any) -> Any:
    """``True`` for a good result, else the error type to record."""
    if success is None:
        return True
    try:
        return True if success(result) else PREDICATE_FAILED
    except Exception as exc:
        report("success predicate", exc)
        return PREDICATE_ERROR


def routing_key(key: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """The routing key a user's ``key=`` callable gives for a call (``None`` if it raises)."""
    try:
        return key(*args, **kwargs)
    except Exception as exc:
        report("routing key", exc)
        return None


def is_coroutine_callable(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    return inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def wrap(guard: "Guard", fn: Callable, target: str, success: Callable | None, key: Callable | None,
         evaluate: Callable | None = None) -> Callable:
    """The recording wrapper of ``fn`` (sync, async, generator or async generator)."""
    if inspect.isasyncgenfunction(fn):
        shell = _asyncgen_shell
    elif inspect.isgeneratorfunction(fn):
        shell = _gen_shell
    elif is_coroutine_callable(fn):
        shell = _async_shell
    else:
        shell = _sync_shell
    wrapper = functools.wraps(fn)(shell(guard, fn, target, success, key, evaluate))
    wrapper.guard = guard  # type: ignore[attr-defined]
    wrapper.target = target  # type: ignore[attr-defined]
    return wrapper


def _evaluate_later(guard: "Guard", evaluate: Callable, result: Any) -> None:
    """Queue ``evaluate(result)`` for the call that just finished (off the hot path)."""
    info = _last.get()
    if info is not None:
        guard.evaluate_later(info.call_id, evaluate, result)


def _sync_shell(guard, fn, target, success, key, evaluate=None):
    start, finish, put = guard._start_call, guard._finish, guard._put

    def guarded(*args, **kwargs):
        route, token = start(target, None if key is None else routing_key(key, args, kwargs))
        ts, t0 = _now(), _perf()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            put(finish(target, ts, _perf() - t0, exc, True, route, token))
            raise
        put(finish(target, ts, _perf() - t0, None, judge_result(success, result), route, token))
        if evaluate is not None and token is not None:
            _evaluate_later(guard, evaluate, result)
        return result

    return guarded


def _async_shell(guard, fn, target, success, key, evaluate=None):
    start, finish, aput = guard._start_call, guard._finish, guard._aput

    async def guarded(*args, **kwargs):
        route, token = start(target, None if key is None else routing_key(key, args, kwargs))
        ts, t0 = _now(), _perf()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await aput(finish(target, ts, _perf() - t0, exc, True, route, token))
            raise
        await aput(finish(target, ts, _perf() - t0, None, judge_result(success, result), route, token))
        if evaluate is not None and token is not None:
            _evaluate_later(guard, evaluate, result)
        return result

    return guarded


def _gen_shell(guard, fn, target, success, key, evaluate=None):
    start, finish, put = guard._start_call, guard._finish, guard._put

    def guarded(*args, **kwargs):
        route, token = start(target, None if key is None else routing_key(key, args, kwargs))
        ts, t0 = _now(), _perf()
        error: BaseException | None = None
        result = None
        try:
            result = yield from fn(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            put(finish(target, ts, _perf() - t0, error, True if error else judge_result(success, result), route, token))
        if evaluate is not None and token is not None:
            _evaluate_later(guard, evaluate, result)
        return result

    return guarded


def _asyncgen_shell(guard, fn, target, success, key, evaluate=None):
    start, finish, put = guard._start_call, guard._finish, guard._put

    async def guarded(*args, **kwargs):
        route, token = start(target, None if key is None else routing_key(key, args, kwargs))
        ts, t0 = _now(), _perf()
        error: BaseException | None = None
        try:
            async for item in fn(*args, **kwargs):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            put(finish(target, ts, _perf() - t0, error, True, route, token))

    return guarded


class CallHandle:
    """One call being recorded: ``with guard.call("t") as call:`` or ``async with``.

    Set ``call.success = False`` to record a failure without raising, ``call.score`` for a
    quality score, ``call.metrics["name"] = value`` for any numeric metric (tokens, cost;
    the same dict as ``current_call().metrics``), ``call.latency_s`` to record a latency measured elsewhere (a value that
    is not a finite number, or a negative latency, is dropped and counted: the measured
    latency and no score are recorded instead). Read
    ``call.call_id`` (for later ``guard.feedback``), ``call.version``, ``call.arm`` and
    ``call.config``: the config of the version serving this call (during a canary, the
    baseline's or the candidate's; before a target's first change, its adapter's config,
    or ``None`` without an adapter).
    An exception inside the block is recorded and propagates unchanged.
    """

    __slots__ = ("guard", "target", "context", "success", "score", "latency_s", "call_id",
                 "version", "arm", "metrics", "_config", "_route", "_token", "_ts", "_t0")

    def __init__(self, guard: "Guard", target: str, context: Any = None, key: Any = None) -> None:
        self.guard = guard
        self.target = target
        self.context = dict(context) if isinstance(context, dict) else context
        self.success: bool | None = None
        self.score: float | None = None
        self.latency_s: float | None = None
        self.call_id = new_id()
        self._route, self._token = guard._start_call(target, key)
        info = _current.get()
        self.metrics: dict = {}
        if self._token is not None and info is not None:
            info._id = self.call_id  # current_call().call_id inside the block is this call's
            info._metrics = self.metrics
        self.version, self.arm, self._config = self._route if self._route else (None, None, None)
        self._ts = self._t0 = 0.0

    @property
    def config(self) -> dict | None:
        """The config of the version serving this call (see :class:`CallInfo`)."""
        if self._route is None:
            return self.guard.adapter_config(self.target)
        return self._config

    def __enter__(self) -> "CallHandle":
        self._ts, self._t0 = _now(), _perf()
        return self

    def _record(self, exc: BaseException | None):
        measured = _perf() - self._t0
        duration = measured if self.latency_s is None else finite(self.latency_s, "call.latency_s", minimum=0.0)
        score = finite(self.score, "call.score")
        ok = True if self.success is None or self.success else MARKED_FAILED
        return self.guard._finish(self.target, self._ts, measured if duration is None else duration, exc, ok,
                                  self._route, self._token, self.call_id, self.context, score,
                                  metrics=self.metrics or None)

    def __exit__(self, et, exc, tb) -> bool:
        self.guard._put(self._record(exc))
        return False

    async def __aenter__(self) -> "CallHandle":
        return self.__enter__()

    async def __aexit__(self, et, exc, tb) -> bool:
        await self.guard._aput(self._record(exc))
        return False
