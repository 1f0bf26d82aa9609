"""Guarded LangGraph nodes: record every node execution and serve it its config version.

``guarded_node(fn, guard=guard)`` returns a wrapper to pass to ``add_node``. It keeps
LangGraph's injection working (``config``, ``runtime``, ``store``, ``writer`` are found
through ``__wrapped__``), has a sync and an async twin (LangGraph asks
``inspect.iscoroutinefunction`` of the wrapper itself), and records each execution against
the target named after the node LangGraph reports (so one function under two node names
is two targets). During a canary the thread id is the routing key: one thread, one arm.
Inside the node, :func:`node_config` returns the config of the version serving it.

LangGraph's control flow (``GraphInterrupt``, ``ParentCommand``, ``GraphDrained``: every
``GraphBubbleUp``) is recorded as ``interrupted`` and re-raised untouched; a cancelled node
(a failing sibling, a node timeout) as ``cancelled``; every exception is re-raised.

No ``from __future__ import annotations`` here: LangGraph reads these signatures.
"""

import functools
import inspect
import time
from typing import Any, Callable, Optional

from sil_core._internal.failopen import report
from sil_core.calls import current_call, is_coroutine_callable, judge_result
from sil_core.errors import MissingExtra
from sil_core.outcomes import register_control_flow
from sil_core.records import Outcome

__all__ = ("add_guarded_node", "guarded_node", "node_config")

_perf = time.perf_counter
_now = time.time
_get_config: Optional[Callable[[], Any]] = None


def _langgraph() -> Callable[[], Any]:
    """Import LangGraph once: its config accessor, and its control flow registered."""
    global _get_config
    if _get_config is None:
        try:
            from langgraph.config import get_config
            from langgraph.errors import GraphBubbleUp
        except ImportError as exc:
            raise MissingExtra("langgraph", "langgraph") from exc
        register_control_flow(GraphBubbleUp, Outcome.INTERRUPTED)
        _get_config = get_config
    return _get_config


def _node_and_thread(get_config: Callable[[], Any]) -> tuple:
    """The node name and thread id of the running LangGraph task (``None`` outside one)."""
    try:
        config = get_config()
    except Exception:  # called outside a graph run
        return None, None
    metadata = config.get("metadata") or {}
    configurable = config.get("configurable") or {}
    return metadata.get("langgraph_node"), configurable.get("thread_id")


def guarded_node(fn: Callable[..., Any], *, guard: Any, target: Optional[str] = None,
                 success: Optional[Callable[[Any], Any]] = None) -> Callable[..., Any]:
    """Wrap a node function so each execution is recorded by ``guard``.

    Args:
        fn: the node function (sync or async), unchanged.
        guard: the :class:`sil_core.Guard` that records and routes.
        target: the target's name; by default the node name of each execution.
        success: a predicate on the node's return value (its state update); a falsy
            value records a failure while the update is still returned.
    """
    get_config = _langgraph()
    start, finish, put, aput = guard._start_call, guard._finish, guard._put, guard._aput

    def begin() -> tuple:
        node, thread = _node_and_thread(get_config)
        name = target or node or fn.__qualname__
        route, token = start(name, thread)
        return name, route, token

    if is_coroutine_callable(fn):
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            name, route, token = begin()
            ts, t0 = _now(), _perf()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                await aput(finish(name, ts, _perf() - t0, exc, True, route, token))
                raise
            await aput(finish(name, ts, _perf() - t0, None, judge_result(success, result), route, token))
            return result
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name, route, token = begin()
            ts, t0 = _now(), _perf()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                put(finish(name, ts, _perf() - t0, exc, True, route, token))
                raise
            put(finish(name, ts, _perf() - t0, None, judge_result(success, result), route, token))
            return result

    functools.wraps(fn)(wrapper)
    wrapper.__wrapped__ = inspect.unwrap(fn)  # the innermost function: what LangGraph inspects
    wrapper.guard = guard  # type: ignore[attr-defined]
    return wrapper


def add_guarded_node(builder: Any, name: str, fn: Callable[..., Any], *, guard: Any,
                     success: Optional[Callable[[Any], Any]] = None, **add_node_kwargs: Any) -> Any:
    """``builder.add_node(name, guarded_node(fn, ...), **add_node_kwargs)`` with ``name`` as
    the target; returns the builder, as ``add_node`` does."""
    return builder.add_node(name, guarded_node(fn, guard=guard, target=name, success=success), **add_node_kwargs)


def node_config() -> Optional[dict]:
    """Inside a guarded node: the config of the version serving this execution (during a
    canary, the baseline's or the candidate's, the same for a whole thread). ``None`` when
    the node's target has no config versions yet."""
    info = current_call()
    if info is None or info.config is None:
        return None
    try:
        return dict(info.config)
    except Exception as exc:  # fail open: a strange config never breaks the node
        report("node_config", exc)
        return None
