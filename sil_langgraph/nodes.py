"""Guarded LangGraph nodes: record every node execution and serve it its config version.

``guarded_node(fn, guard=guard)`` returns a wrapper to pass to ``add_node``. It keeps
LangGraph's injection working (``config``, ``runtime``, ``store``, ``writer`` are found
through ``__wrapped__``), has a sync and an async twin (LangGraph asks
``inspect.iscoroutinefunction`` of the wrapper itself), and records each execution against
the target named after the node LangGraph reports (so one function under two node names
is two targets). During a canary the thread id is the routing key (one thread, one arm),
or ``key(config)`` when given (e.g. a user id: one user, one arm, across threads). Inside
the node, :func:`node_config` returns the config of the version serving it (and raises
``ConfigError`` when there is none: no version and no adapter). A ``Runnable`` (``ToolNode``,
a compiled subgraph) is wrapped in a ``RunnableLambda`` calling its ``invoke``/``ainvoke``.
While a version serves the node, ``sil_version``, ``sil_arm`` and ``sil_change_id`` are set
in the task's ``config["metadata"]``, which runs started inside the node inherit.

Outcomes:

* ``GraphInterrupt``, ``ParentCommand``, ``GraphDrained`` (every ``GraphBubbleUp``) are
  recorded as ``interrupted`` and re-raised untouched; a cancelled node (a failing
  sibling, a node timeout) as ``cancelled``; every exception is re-raised unchanged.
* Retries: each attempt is one record whose ``attempt`` is LangGraph's ``node_attempt``.
  A failed attempt that LangGraph will retry (its ``RetryPolicy`` matches the exception
  and attempts remain) is recorded as ``retried``: it counts in the attempt error count
  (``n_error`` of the cells) but not in the success rate, which is therefore computed on
  each task's final outcome. When a node fails, the policy LangGraph runs the task with is
  read at run time (``add_node(retry_policy=)``, ``set_node_defaults``, the graph's; see
  ``_compat.running_retry_policy``); if it cannot be read, ``add_guarded_node`` reads the
  builder's and ``guarded_node`` uses its ``retry_policy=``. Without a policy, or on
  langgraph < 1.1.3 (no ``node_attempt``), every failure is final.

Tokens and cost: each execution adds a LangChain callback handler to its own callbacks
(``config["callbacks"]``, a manager LangGraph makes per execution and attempt), so every
chat-model run started inside it, in any thread or task the config or context reaches,
adds its ``usage_metadata`` to that execution's ``tokens_in`` / ``tokens_out`` (the same
dict as ``current_call().metrics``), once per model run (a stream counts its final,
aggregated message; a model run nested in another is left to the outer one). ``cost_usd``
is the cost the framework reports (``usage_metadata["total_cost"]``), else ``prices``,
and is recorded only when every model call of the execution has one. Like latency, usage
is inclusive: a node that runs a subgraph counts the subgraph's model calls, and a guarded
node inside that subgraph counts its own too (so per-target sums of nested targets count
a call twice; parallel branches are separate executions and never mix). A model called
in a thread that was given neither the config nor a copy of the context is not seen.
``evaluate(update)`` scores each execution that returned later, off the hot path.

Pinning ("approved v1, got v2"): a node interrupted writes a pin ``{version, arm}`` to the
guard's store (kind ``"pin"``, key ``"<target>|<thread id>|<task id>"``; the task id, stable across resume, is left out
before langgraph 1.1.3). A target no version serves yet is pinned to its adapter's config,
stored as a version (its content hash, ``sil_core.versions.put_version``); without an
adapter there is nothing to pin. When LangGraph resumes the thread, the re-executed node is
served the pinned version's config instead of being routed again, even if the change was
promoted or rolled back meanwhile; the pin is cleared when that execution ends for good.
The store is read only on resumed runs, so the common path does no I/O.

No ``from __future__ import annotations`` here: LangGraph reads these signatures.
"""

import functools
import inspect
import time
import weakref
from typing import Any, Callable, Optional

from sil_core import ConfigError, current_call
from sil_core.integration import is_coroutine_callable, judge_result, new_id, report
from sil_core.records import Outcome
from sil_core.versions import get_version, put_version

from ._compat import RESUMING_KEY, UNKNOWN, load, node_attempt, running_retry_policy, task_id, will_retry
from ._ledger import ledger, run_of
from ._usage import price_table, unwatch, watch

__all__ = ("add_guarded_node", "guarded_node", "node_config")

_perf = time.perf_counter
_now = time.time
PIN = "pin"


def pin_key(target: str, thread: Any, configurable: Any = None) -> str:
    """The pin's key: per task when LangGraph names it (1.1.3+; a task keeps its id across
    interrupt and resume), so each task of a ``Send`` fan-out keeps its own version."""
    task = task_id(configurable) if configurable else None
    return f"{target}|{thread}" if task is None else f"{target}|{thread}|{task}"


#: LangGraph node name -> (weak ref to the guard, target) of the guarded node last seen
#: running under that name, so node_config() can read the guard's adapter for a target no
#: version serves yet without any work on the hot path
_node_targets: dict = {}
_EMPTY: dict = {}


class _Node:
    """The per-execution decisions of one guarded node, written once for both shells."""

    __slots__ = ("guard", "target", "success", "retry_policy", "default_name", "key", "lg", "ledger", "names",
                 "recorders", "evaluate")

    def __init__(self, guard: Any, target: Optional[str], success: Any, retry_policy: Any, default_name: str,
                 key: Optional[Callable[[Any], Any]] = None, evaluate: Optional[Callable[[Any], Any]] = None) -> None:
        self.guard, self.target, self.success, self.key, self.evaluate = guard, target, success, key, evaluate
        self.retry_policy, self.default_name = retry_policy, default_name
        self.lg = load()
        self.ledger = ledger(guard)
        self.names: set = set()  # node names this wrapper has run under
        self.recorders: dict = {}  # node name -> the guard's Recorder of that target

    def shells(self) -> tuple:
        """``(begin, end)`` for the wrapper: the common path, with every name it needs bound
        to a local (the wrapper runs on every node execution; see ``langgraph_overhead.py``)."""
        target, default_name, names, success, key = self.target, self.default_name, self.names, self.success, self.key
        judged, pinned_route, settle, recorders = self.ledger.judged, self._pinned, self._settle, self.recorders
        tag, evaluate, evaluated = self._tag, self.evaluate, self._evaluated

        def begin(config: Any) -> tuple:
            """``(target, thread, configurable, route, token, pinned)`` of an execution starting
            under LangGraph's ``config`` (``None`` outside a graph run)."""
            if config:
                configurable = config.get("configurable") or _EMPTY
                thread = configurable.get("thread_id")
                name = target or (config.get("metadata") or _EMPTY).get("langgraph_node") or default_name
                if name not in names:
                    self._register(name, config)
                if configurable.get(RESUMING_KEY) and thread is not None:
                    pinned = pinned_route(name, thread, configurable)
                    if pinned is not None:
                        tag(config, name, pinned[0])
                        return name, thread, configurable, pinned[0], pinned[1], True
            else:
                configurable = thread = None
                name = target or default_name
                if name not in names:
                    self._register(name, config)
            # the thread routes; without one, the task (stable across its retries: a retried
            # attempt must not draw the other arm)
            default = thread if thread is not None or configurable is None else task_id(configurable)
            route, token = recorders[name].begin(default if key is None else _routing_key(key, config, default))
            if route is not None and config:
                tag(config, name, route)
            return name, thread, configurable, route, token, False

        def end(run: tuple, ts: float, duration: float, exc: Optional[BaseException], result: Any,
                metrics: Optional[dict] = None) -> Any:
            """The record of a finished execution (``None`` on an internal failure)."""
            try:
                name, thread, configurable, route, token, pinned = run
                attempt = node_attempt(configurable) if configurable else None  # None: LangGraph < 1.1.3
                if exc is None and not pinned and name not in judged:  # the common case
                    ok = True if success is None else judge_result(success, result)
                    record = recorders[name].end((route, token), ts, duration, None, ok, attempt=attempt or 1,
                                                 metrics=metrics)
                else:
                    record = settle(run, attempt, ts, duration, exc, result, metrics)
                if evaluate is not None and exc is None and record is not None:
                    evaluated(record, result)
                return record
            except Exception as err:
                report("langgraph.record", err)
                return None

        return begin, end

    def _evaluated(self, record: Any, result: Any) -> None:
        """Queue ``evaluate(result)`` against the record's call id (made now if it has none)."""
        call_id = record.id if isinstance(record.id, str) else getattr(record.id, "call_id", None) or new_id()
        record.id = call_id
        self.guard.evaluate_later(call_id, self.evaluate, result)

    def _register(self, name: str, config: Any) -> None:
        self.recorders[name] = self.guard.recorder(name)
        self.names.add(name)
        node = (config.get("metadata") or _EMPTY).get("langgraph_node") if config else None
        _node_targets[node or name] = (weakref.ref(self.guard), name)

    def _pinned(self, name: str, thread: Any, configurable: Any) -> Optional[tuple]:
        try:
            row = self.guard.store.kv_get(PIN, pin_key(name, thread, configurable))
            pin = row[0] if row else None
            if not pin or not pin.get("version"):
                return None
            config = get_version(self.guard.store, name, pin["version"])
            return self.recorders[name].begin(route=(pin["version"], pin.get("arm"),
                                                     None if config is None else dict(config)))
        except Exception as exc:  # fail open: route as usual
            report("langgraph.pin", exc)
            return None

    def _settle(self, run: tuple, attempt: Optional[int], ts: float, duration: float, exc: Optional[BaseException],
                result: Any, metrics: Optional[dict] = None) -> Any:
        """The record of an execution off the common path: a failure, a retried attempt, an
        interrupt (pin the version), the end of a pinned execution, a judged target."""
        name, thread, configurable, route, token, pinned = run
        ok = True if exc is not None else judge_result(self.success, result)
        record = self.recorders[name].end((route, token), ts, duration, exc, ok, attempt=attempt or 1,
                                          metrics=metrics)
        if record is None:
            return None
        outcome = record.outcome
        if outcome == Outcome.ERROR and exc is not None and will_retry(self._policy(configurable), exc, attempt):
            record.outcome = Outcome.RETRIED
        elif thread is not None:
            if exc is not None and isinstance(exc, self.lg.GraphInterrupt):
                pin = self._pin_of(name, route)
                if pin is not None:
                    self.guard.store.kv_put(PIN, pin_key(name, thread, configurable), pin, expect_rev=None)
            elif pinned and outcome in Outcome.DECIDED:
                self.guard.store.kv_put(PIN, pin_key(name, thread, configurable), {}, expect_rev=None)
        if outcome == Outcome.OK and name in self.ledger.judged:
            record.id = new_id()
            self.ledger.note(name, run_of(configurable), thread, record.version, record.arm, record.id)
        return record

    def _tag(self, config: Any, name: str, route: tuple) -> None:
        """The served version, arm and change id in the task's ``config["metadata"]`` (a copy
        per task), so runs started inside the node (LLM calls: traces, ``stream_mode=
        "messages"`` chunks) carry them. Checkpoint metadata is the run's, not the task's:
        a node cannot add to it (``ConfigurableAdapter.run_config`` tags it per run)."""
        try:
            metadata = config.get("metadata")
            if metadata is None:
                return
            metadata["sil_version"], metadata["sil_arm"] = route[0], route[1]
            if route[1] is not None:
                metadata["sil_change_id"] = self.guard.view(name).change_id
        except Exception as exc:
            report("langgraph.metadata", exc)

    def _pin_of(self, name: str, route: Any) -> Optional[dict]:
        """What an interrupted execution is pinned to: the version it was served, or, for a
        target no version served, its adapter's config stored as a version (content hash)."""
        if route is not None:
            return {"version": route[0], "arm": route[1]}
        config = self.guard.adapter_config(name)
        if config is None:  # nothing to pin: no adapter
            return None
        return {"version": put_version(self.guard.store, name, config), "arm": None}

    def _policy(self, configurable: Any) -> Any:
        """The retry policy of the failed task: LangGraph's own at run time (``add_node``'s,
        ``set_node_defaults``', the graph's), else the one this wrapper was given."""
        if configurable:
            policy = running_retry_policy(configurable)
            if policy is not UNKNOWN:
                return policy
        policy = self.retry_policy
        return policy() if callable(policy) else policy


def _metrics_of(run: tuple) -> dict:
    """The metrics dict of a routed execution (``current_call().metrics``, so the node's own
    values and the captured usage are one dict), else a new one."""
    if run[4] is None:
        return {}
    info = current_call()
    return {} if info is None else info.metrics


def _routing_key(key: Callable[[Any], Any], config: Any, default: Any) -> Any:
    """``key(config)``, the routing key of an execution; ``default`` (the thread id, else
    the task id) if it fails or gives ``None``."""
    try:
        found = key(config)
    except Exception as exc:
        report("langgraph.key", exc)
        return default
    return default if found is None else found


def _is_runnable(fn: Any) -> bool:
    """A LangChain ``Runnable`` (a ``ToolNode``, a compiled graph, ...): not a function
    LangGraph can inspect and inject into."""
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, functools.partial):
        return False
    try:
        from langchain_core.runnables import Runnable
    except ImportError:
        return False
    return isinstance(fn, Runnable)


def _guarded_runnable(runnable: Any, **kwargs: Any) -> Any:
    """A ``Runnable`` node (``ToolNode``, a compiled subgraph) as a guarded node: its
    ``invoke``/``ainvoke`` called with the node's state and LangGraph's config (so its own
    injection, checkpoint namespace and callbacks work), in a ``RunnableLambda`` with a sync
    and an async twin."""
    from langchain_core.runnables import RunnableConfig, RunnableLambda

    name = getattr(runnable, "name", None) or type(runnable).__name__

    def invoke(state: Any, config: RunnableConfig) -> Any:
        return runnable.invoke(state, config)

    async def ainvoke(state: Any, config: RunnableConfig) -> Any:
        return await runnable.ainvoke(state, config)

    invoke.__qualname__ = ainvoke.__qualname__ = name
    sync, async_ = guarded_node(invoke, **kwargs), guarded_node(ainvoke, **kwargs)
    node = RunnableLambda(sync, afunc=async_, name=name)
    node.guard = kwargs["guard"]  # type: ignore[attr-defined]
    return node


def guarded_node(fn: Callable[..., Any], *, guard: Any, target: Optional[str] = None,
                 success: Optional[Callable[[Any], Any]] = None, retry_policy: Any = None,
                 key: Optional[Callable[[Any], Any]] = None, evaluate: Optional[Callable[[Any], Any]] = None,
                 prices: Any = None) -> Callable[..., Any]:
    """Wrap a node function so each execution is recorded by ``guard``.

    Args:
        fn: the node function (sync or async), unchanged; or a ``Runnable`` such as a
            ``ToolNode`` or a compiled subgraph (then a ``RunnableLambda`` calling its
            ``invoke``/``ainvoke`` with the node's state and config is returned).
        guard: the :class:`sil_core.Guard` that records and routes.
        target: the target's name; by default the node name of each execution.
        success: a predicate on the node's return value (its state update); a falsy
            value records a failure while the update is still returned.
        retry_policy: the ``RetryPolicy`` (or sequence, or a callable returning it) the
            node is added with, used only when LangGraph's own cannot be read at run time.
        key: ``key(config)`` (LangGraph's ``RunnableConfig`` of the execution) returns the
            routing key of a canary, e.g. ``config["configurable"]["user_id"]``; by default
            the thread id. A key that raises or returns ``None`` falls back to the thread id.
        evaluate: ``evaluate(update)`` scores each execution that returned, later, on the
            guard's evaluator pool (``guard.evaluate_later``): a number is the call's
            ``score``; a dict gives ``success``, ``score`` and other metrics.
        prices: ``{model: (USD in, USD out per million tokens)}`` or a
            :class:`sil_core.PriceTable`: the ``cost_usd`` of model calls whose framework
            reports no cost (see "Tokens and cost" in the module docstring).
    """
    if _is_runnable(fn):
        return _guarded_runnable(fn, guard=guard, target=target, success=success, retry_policy=retry_policy, key=key,
                                 evaluate=evaluate, prices=prices)
    if not callable(fn):
        raise ConfigError(f"guarded_node() needs a node function or a Runnable, got {type(fn).__name__}")
    table = price_table(prices)
    node = _Node(guard, target, success, retry_policy, getattr(fn, "__qualname__", repr(fn)), key, evaluate)
    begin, end = node.shells()
    # The fast lane: an execution of a registered, unversioned (Recorder.plain), unjudged
    # target, not resuming, with no success predicate. It skips the shells (no thread pin,
    # no routing key) and records through the Recorder directly, with current_call() set so
    # that the node's own metrics and call id work before any change too; the queue's bound and the
    # flusher's wake-up are checked by the general path, which every target takes at least
    # once per refresh interval (its view expires). LangGraph runs each node between
    # hundreds of µs of its own code, so every Python frame saved here counts (see
    # benchmarks/langgraph_overhead.py). Written out in both twins for the same reason.
    fast = success is None and evaluate is None
    current_config, recorders, judged = node.lg.current_config, node.recorders, node.ledger.judged
    default_rec = guard.recorder(target or node.default_name)

    if is_coroutine_callable(fn):
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            config = current_config()
            if fast and config:
                name = target or (config.get("metadata") or _EMPTY).get("langgraph_node")
                rec = recorders.get(name)
                configurable = config.get("configurable") or _EMPTY
                if (rec is not None and name not in judged and rec.plain()
                        and not configurable.get(RESUMING_KEY)):
                    watched = watch(config, None, table)
                    begun = rec.begin()  # current_call() (its metrics, its call_id) works inside
                    ts, t0 = _now(), _perf()
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        duration = _perf() - t0
                        await rec.aput(end((name, configurable.get("thread_id"), configurable, *begun, False), ts,
                                           duration, exc, None, unwatch(config, watched)))
                        raise
                    duration = _perf() - t0
                    metrics = unwatch(config, watched)
                    if metrics is None and guard.durability != "sync":
                        rec.done(begun, ts, duration, node_attempt(configurable) or 1)
                    else:
                        await rec.aput(rec.end(begun, ts, duration, attempt=node_attempt(configurable) or 1,
                                               metrics=metrics))
                    return result
            run = begin(config)
            watched = watch(config, _metrics_of(run), table) if config else None
            ts, t0 = _now(), _perf()
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                duration = _perf() - t0
                await default_rec.aput(end(run, ts, duration, exc, None, unwatch(config, watched)))
                raise
            duration = _perf() - t0
            await default_rec.aput(end(run, ts, duration, None, result, unwatch(config, watched)))
            return result
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            config = current_config()
            if fast and config:
                name = target or (config.get("metadata") or _EMPTY).get("langgraph_node")
                rec = recorders.get(name)
                configurable = config.get("configurable") or _EMPTY
                if (rec is not None and name not in judged and rec.plain()
                        and not configurable.get(RESUMING_KEY)):
                    watched = watch(config, None, table)
                    begun = rec.begin()  # current_call() (its metrics, its call_id) works inside
                    ts, t0 = _now(), _perf()
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:
                        duration = _perf() - t0
                        rec.put(end((name, configurable.get("thread_id"), configurable, *begun, False), ts,
                                    duration, exc, None, unwatch(config, watched)))
                        raise
                    duration = _perf() - t0
                    rec.done(begun, ts, duration, node_attempt(configurable) or 1, unwatch(config, watched))
                    return result
            run = begin(config)
            watched = watch(config, _metrics_of(run), table) if config else None
            ts, t0 = _now(), _perf()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                duration = _perf() - t0
                default_rec.put(end(run, ts, duration, exc, None, unwatch(config, watched)))
                raise
            duration = _perf() - t0
            default_rec.put(end(run, ts, duration, None, result, unwatch(config, watched)))
            return result

    functools.wraps(fn)(wrapper)
    wrapper.__wrapped__ = inspect.unwrap(fn)  # the innermost function: what LangGraph inspects
    wrapper.guard = guard  # type: ignore[attr-defined]
    return wrapper


def _builder_policy(builder: Any, name: str) -> Callable[[], Any]:
    """The retry policy LangGraph will use for node ``name``: its own, else the builder's
    default (read when a node fails, so ``set_node_defaults`` after ``add_node`` counts)."""
    def policy() -> Any:
        spec = getattr(builder, "nodes", {}).get(name)
        own = getattr(spec, "retry_policy", None)
        if own:
            return own
        return getattr(getattr(builder, "_node_defaults", None), "retry_policy", None)

    return policy


def add_guarded_node(builder: Any, name: str, fn: Callable[..., Any], *, guard: Any,
                     success: Optional[Callable[[Any], Any]] = None, key: Optional[Callable[[Any], Any]] = None,
                     evaluate: Optional[Callable[[Any], Any]] = None, prices: Any = None,
                     **add_node_kwargs: Any) -> Any:
    """``builder.add_node(name, guarded_node(fn, ...), **add_node_kwargs)`` with ``name`` as
    the target; returns the builder, as ``add_node`` does."""
    wrapped = guarded_node(fn, guard=guard, target=name, success=success, retry_policy=_builder_policy(builder, name),
                           key=key, evaluate=evaluate, prices=prices)
    return builder.add_node(name, wrapped, **add_node_kwargs)


def node_config() -> Optional[dict]:
    """Inside a guarded node: the config of the version serving this execution (during a
    canary, the baseline's or the candidate's, the same for a whole routing key; after a
    resume, the version the execution started with). Before the target's first change, the
    config its guard's adapter holds.

    Raises :class:`sil_core.ConfigError` inside a guarded node whose target has no config
    (no version serves it and its guard has no adapter). ``None`` outside a guarded node."""
    info = current_call()
    if info is None:
        return _adapter_config()
    try:
        config = info.config
    except Exception as exc:  # an adapter that fails: reported, then said below
        report("node_config", exc)
        config = None
    if config is None:
        raise _no_config(info.target)
    return dict(config)


def _no_config(target: str) -> ConfigError:
    return ConfigError(f"node_config(): the guarded node {target!r} has no config: no version serves it and its "
                       f"guard has no adapter holding one (Guard(adapter=...), e.g. DictConfigAdapter({{{target!r}: "
                       f"{{...}}}}), or guard.propose({target!r}, config) to create a version)")


def _adapter_config() -> Optional[dict]:
    """The config the guard's adapter holds for the running guarded node (no version yet,
    the fast lane); ``None`` outside a guarded node."""
    config = load().current_config()
    if not config:
        return None
    entry = _node_targets.get((config.get("metadata") or _EMPTY).get("langgraph_node"))
    guard = entry[0]() if entry else None
    if guard is None:
        return None
    found = guard.adapter_config(entry[1])
    if found is None:
        raise _no_config(entry[1])
    return dict(found)
