"""Observe-only recording of LangGraph node executions through LangChain callbacks.

For nodes a function wrapper cannot reach: a compiled subgraph added as a node, a
``ToolNode``, an LCEL chain or any other ``Runnable``. Attach the handler once::

    graph = builder.compile().with_config(callbacks=[GuardCallbackHandler(guard)])

or per run (``graph.invoke(inputs, {"callbacks": [handler]})``). Each node execution
(each attempt, under a ``RetryPolicy``) becomes one record of the target named after the
node (``metadata["langgraph_node"]``): latency from start to end, outcome ``ok`` or
``error``. ``GraphInterrupt``, ``ParentCommand`` and ``GraphDrained`` (LangGraph's
``GraphBubbleUp`` control flow, which reaches callbacks through ``on_chain_error``) are
recorded as ``interrupted``, a node cancelled because a sibling failed as ``cancelled``:
never as errors. A node that exceeded its ``timeout=`` is an error (``NodeTimeoutError``):
it only sees a cancellation, so its record waits until its graph run ends and says why. When the run was configured by
:meth:`sil_langgraph.ConfigurableAdapter.run_config`, the record carries the version and
arm that served it.

The handler cannot change a node's config (use ``sil_langgraph.guarded_node`` for that).
A node that is also wrapped by ``guarded_node`` of the same guard, under the same target,
is recorded once, by the wrapper (which knows the version that served it).
It is thread-safe, cheap, and never raises into the graph (fail open).

``langchain-core`` is imported when :data:`GuardCallbackHandler` is first used, not when
this module is imported.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable
from uuid import UUID

from sil_core.integration import error_message, report
from sil_core.errors import MissingExtra
from sil_core.outcomes import classify_exception
from sil_core.records import Outcome

from . import _compat
from .adapters import arm_key, version_key
from .nodes import _node_targets

__all__ = ("GuardCallbackHandler", "note_own_node")

#: node runs kept open at most (runs whose end never arrives are dropped oldest first)
MAX_OPEN_RUNS = 10_000

_now = time.time
_perf = time.perf_counter

#: LangGraph node names that ran a sil-guard node (a GuardNode), in this process
_own_nodes: set = set()
#: what GuardNode.route returns; a run of a node with such a child run is a GuardNode's
_ROUTES = frozenset(("ok", "fallback"))


def note_own_node(node: str | None = None) -> None:
    """Mark the running LangGraph node (or ``node``) as one of sil-guard's own (a
    :class:`~sil_langgraph.GuardNode` calls it when it runs): :class:`GuardCallbackHandler`
    leaves such nodes out unless told otherwise."""
    try:
        if node is None:
            config = _compat.load().current_config()
            node = ((config or {}).get("metadata") or {}).get("langgraph_node")
        if isinstance(node, str) and node:
            _own_nodes.add(node)
    except Exception as exc:  # fail open
        report("langgraph.own_node", exc)


class _Open:
    __slots__ = ("target", "node", "ts", "t0", "version", "arm", "context", "parent", "step", "own", "forced")

    def __init__(self, target: str, node: str, ts: float, t0: float, version: Any, arm: Any, context: Any,
                 parent: UUID | None, step: Any = None, forced: bool = False) -> None:
        self.target, self.node, self.ts, self.t0 = target, node, ts, t0
        self.version, self.arm, self.context, self.parent = version, arm, context, parent
        self.step, self.own, self.forced = step, False, forced


class _GuardCallbackLogic:
    """The handler's behaviour; combined with ``BaseCallbackHandler`` lazily (see below)."""

    raise_error = False  # a recording problem must never fail the graph
    run_inline = True  # cheap and thread-safe: no executor hop in async runs

    def __init__(
        self,
        guard: Any,
        include: Iterable[str] | Callable[[str], Any] | None = None,
        exclude: Iterable[str] | Callable[[str], Any] = (),
        *,
        nodes: Iterable[str] | None = None,
        target: Callable[[str, dict], str | None] | None = None,
        prefix: str = "",
        subgraph_nodes: bool = True,
        context: bool = True,
        own_nodes: bool = False,
    ) -> None:
        """
        Args:
            guard: the :class:`sil_core.Guard` that records.
            include: record only these node names, or the nodes for which
                ``include(name)`` is true (default: every node). A node named in an
                ``include`` collection is recorded even if it is one of sil-guard's own.
            exclude: never record these node names, or the nodes for which
                ``exclude(name)`` is true (applied after ``include``).
            nodes: the former name of ``include`` (a collection of names).
            target: ``target(node, metadata) -> str | None`` names the target of a node
                execution (``None`` skips it); default ``prefix + node``.
            prefix: prepended to node names (e.g. ``"support-graph/"``).
            subgraph_nodes: also record nodes inside subgraphs (their metadata names them
                too); ``False`` records only the nodes of the graph the handler is attached
                to (and subgraphs as single nodes).
            context: attach ``{node, step, checkpoint_ns}`` to each record.
            own_nodes: also record sil-guard's own nodes: a ``GuardNode`` (a node that ran
                one, or whose conditional edge is a ``GuardNode.route``) and the fallback
                node it routed to (the node started, in the next step of the same graph run,
                by a ``branch:to:<node>`` trigger after the route said ``"fallback"``). They
                always "succeed" and are left out by default.
        """
        self.guard = guard
        if include is None:
            include = nodes
        self.include_fn = include if callable(include) else None
        self.nodes = frozenset(include) if include is not None and not callable(include) else None
        self.exclude_fn = exclude if callable(exclude) else None
        self.exclude = frozenset(()) if callable(exclude) else frozenset(exclude)
        self.own_nodes = own_nodes
        self._routes: dict[UUID, UUID] = {}  # run of a GuardNode.route candidate -> its node's run
        self._fallback: dict[tuple, bool] = {}  # (graph run, step) a GuardNode routed to its fallback
        self.target_fn = target
        self.prefix = prefix
        self.subgraph_nodes = subgraph_nodes
        self.context = context
        self._open: dict[UUID, _Open] = {}
        # cancelled node runs, held until their parent (graph) run ends: a node timeout
        # reaches the node as CancelledError and only its graph learns it was a timeout
        self._held: dict[UUID, list[tuple[_Open, float, BaseException]]] = {}
        self._lock = threading.Lock()
        # a guard writing synchronously blocks per record: keep that off the event loop
        if getattr(guard, "durability", None) == "sync":
            self.run_inline = False

    # -- selection ----------------------------------------------------------------------------
    def _select(self, name: Any, metadata: dict | None) -> str | None:
        if not metadata:
            return None
        node = metadata.get("langgraph_node")
        if node is None or node != name:  # only the node's own run, not its children
            return None
        if node.startswith("__"):  # LangGraph's own nodes: __start__, __error_handler__<node>, ...
            return None
        if self.nodes is not None and node not in self.nodes:
            return None
        if self.include_fn is not None and not self.include_fn(node):
            return None
        if node in self.exclude or (self.exclude_fn is not None and self.exclude_fn(node)):
            return None
        if not self.subgraph_nodes and "|" in (metadata.get("langgraph_checkpoint_ns") or ""):
            return None
        if self.target_fn is not None:
            return self.target_fn(node, metadata)
        return self.prefix + node

    # -- callbacks ----------------------------------------------------------------------------
    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       tags: Any = None, metadata: dict | None = None, **kwargs: Any) -> None:
        try:
            target = self._select(kwargs.get("name"), metadata)
            if target is None:
                if not self.own_nodes and kwargs.get("name") == "route" and parent_run_id is not None:
                    with self._lock:  # maybe a GuardNode.route conditional edge: see its answer
                        if parent_run_id in self._open:
                            self._routes[run_id] = parent_run_id
                return
            with self._lock:
                parent = self._open.get(parent_run_id) if parent_run_id is not None else None
                if parent is not None and parent.node == metadata["langgraph_node"]:
                    return  # a child Runnable that happens to carry the node's name
            ctx = None
            if self.context:
                ctx = {"node": metadata["langgraph_node"], "step": metadata.get("langgraph_step"),
                       "checkpoint_ns": metadata.get("langgraph_checkpoint_ns")}
            node = metadata["langgraph_node"]
            step = metadata.get("langgraph_step")
            forced = self.nodes is not None and node in self.nodes
            if not self.own_nodes and not forced and self._is_fallback(node, step, parent_run_id, metadata):
                return
            run = _Open(target, node, _now(), _perf(), metadata.get(version_key(target)),
                        metadata.get(arm_key(target)), ctx, parent_run_id, step, forced)
            with self._lock:
                if len(self._open) >= MAX_OPEN_RUNS:  # runs whose end never came: forget the oldest
                    self._open.pop(next(iter(self._open)))
                self._open[run_id] = run
        except Exception as exc:  # fail open
            report("langgraph.callback", exc)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self._routes:
            with self._lock:
                node_run = self._routes.pop(run_id, None)
            if node_run is not None:
                self._routed(node_run, outputs)
                return
        self._finish(run_id, None)

    # -- sil-guard's own nodes ------------------------------------------------------------------
    def _routed(self, node_run: UUID, outputs: Any) -> None:
        """A ``route`` child of a node run ended: ``"ok"``/``"fallback"`` is a GuardNode's."""
        try:
            if not isinstance(outputs, str) or outputs not in _ROUTES:
                return
            with self._lock:
                run = self._open.get(node_run)
                if run is None:
                    return
                run.own = True
                if outputs == "fallback" and isinstance(run.step, int):
                    if len(self._fallback) >= MAX_OPEN_RUNS:
                        self._fallback.pop(next(iter(self._fallback)))
                    self._fallback[(run.parent, run.step + 1)] = True
        except Exception as exc:  # fail open
            report("langgraph.callback", exc)

    def _is_fallback(self, node: str, step: Any, parent: UUID | None, metadata: dict) -> bool:
        """Whether this node run is the fallback a GuardNode just routed to."""
        if not self._fallback or not isinstance(step, int):
            return False
        with self._lock:
            if (parent, step) not in self._fallback:
                return False
        return tuple(metadata.get("langgraph_triggers") or ()) == (f"branch:to:{node}",)

    def _own(self, run: _Open) -> bool:
        return not self.own_nodes and not run.forced and (run.own or run.node in _own_nodes)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if self._routes:
            with self._lock:
                if self._routes.pop(run_id, None) is not None:
                    return
        self._finish(run_id, error)

    # -- recording ----------------------------------------------------------------------------
    def _finish(self, run_id: UUID, error: BaseException | None) -> None:
        try:
            with self._lock:
                run = self._open.pop(run_id, None)
                held = self._held.pop(run_id, None) if self._held else None
            if held:
                self._release(held, error)
            if run is None or self._wrapped(run) or self._own(run):
                return
            latency = _perf() - run.t0
            if error is None:
                self.guard.record(run.target, success=True, latency_s=latency, version=run.version, arm=run.arm,
                                  context=run.context, ts=run.ts)
                return
            outcome = classify_exception(error)
            if outcome == Outcome.CANCELLED and run.parent is not None:
                with self._lock:
                    if len(self._held) >= MAX_OPEN_RUNS:
                        stale = self._held.pop(next(iter(self._held)))
                    else:
                        stale = None
                    self._held.setdefault(run.parent, []).append((run, latency, error))
                if stale:
                    self._release(stale, None)
                return
            self._record_error(run, latency, error, outcome)
        except Exception as exc:  # fail open
            report("langgraph.callback", exc)

    def _wrapped(self, run: _Open) -> bool:
        """Whether a ``guarded_node`` wrapper of this guard already records this node
        execution under the same target (it knows the version; one record per execution)."""
        entry = _node_targets.get(run.node)
        return entry is not None and entry[0]() is self.guard and entry[1] == run.target

    def _release(self, held: list[tuple[_Open, float, BaseException]], parent_error: BaseException | None) -> None:
        """Record held cancellations: a timeout of that node (the parent's error says so) is
        an error; anything else (sibling failure, run cancelled) stays ``cancelled``."""
        timed_out = getattr(parent_error, "node", None) if type(parent_error).__name__ == "NodeTimeoutError" else None
        for run, latency, error in held:
            if timed_out is not None and timed_out == run.node:
                self._record_error(run, latency, parent_error, Outcome.ERROR)
            else:
                self._record_error(run, latency, error, Outcome.CANCELLED)

    def _record_error(self, run: _Open, latency: float, error: BaseException, outcome: str) -> None:
        self.guard.record(run.target, success=False, latency_s=latency, version=run.version, arm=run.arm,
                          error_type=type(error).__name__, error_message=error_message(error),
                          context=run.context, ts=run.ts, outcome=outcome)

    @property
    def open_runs(self) -> int:
        """Node runs started and not finished yet (for diagnostics)."""
        with self._lock:
            return len(self._open)


def _register_langgraph_control_flow() -> None:
    """LangGraph's control flow, registered by the one loader the package has."""
    try:
        _compat.load()
    except MissingExtra:  # langchain-core without langgraph: nothing to register
        pass


_HANDLER = _compat.LazyClass(__name__, "GuardCallbackHandler", _GuardCallbackLogic, __doc__,
                             "langchain_core.callbacks:BaseCallbackHandler", "langchain-core",
                             before=_register_langgraph_control_flow)


def __getattr__(name: str) -> Any:
    if name == "GuardCallbackHandler":
        return _HANDLER.get()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
