"""LangGraph, imported on first use, with its control flow registered and newer features
detected (the package supports langgraph >= 1.0).

Importing this module imports nothing from LangGraph; :func:`load` does, once, and raises
:class:`sil_core.MissingExtra` naming the ``langgraph`` extra when it is not installed.

Feature detection:

* ``Runtime.execution_info`` (1.1.3+) gives the node attempt and task id. Without it every
  attempt is recorded as attempt 1 and a failed attempt counts as a final failure.
* The retry policy LangGraph applies to the running task (the node's own, given to
  ``add_node`` or ``set_node_defaults``, else the graph's) is read, when a node fails, off
  the task LangGraph's ``__pregel_call`` entry refers to (:func:`running_retry_policy`);
  when that cannot be read, the policy given to ``guarded_node``/``add_guarded_node`` is used.
* ``GraphDrained`` (1.2+), ``GraphInterrupt`` and ``ParentCommand`` all subclass
  ``GraphBubbleUp``, which is registered once as ``interrupted`` control flow.
"""

import importlib
import sys
import threading
from typing import Any, Optional, Sequence

from sil_core.errors import MissingExtra
from sil_core.outcomes import register_control_flow
from sil_core.records import Outcome

__all__ = ("UNKNOWN", "load", "node_attempt", "running_retry_policy", "task_id", "will_retry")

#: keys LangGraph puts in ``config["configurable"]`` (stable since 0.2; private upstream)
RUNTIME_KEY = "__pregel_runtime"
RESUMING_KEY = "__pregel_resuming"
CALL_KEY = "__pregel_call"
#: :func:`running_retry_policy` could not tell
UNKNOWN = object()


class _LangGraph:
    """The few LangGraph names the adapter uses, resolved once."""

    __slots__ = ("get_config", "current_config", "GraphBubbleUp", "GraphInterrupt", "has_execution_info", "Task")

    def __init__(self) -> None:
        try:
            from langgraph.config import get_config
            from langgraph.errors import GraphBubbleUp, GraphInterrupt
        except ImportError as exc:
            raise MissingExtra("langgraph", "langgraph") from exc
        try:
            from langgraph.runtime import Runtime

            fields = getattr(Runtime, "__dataclass_fields__", {})
            self.has_execution_info = "execution_info" in fields
        except ImportError:  # langgraph < 0.6: no Runtime at all
            self.has_execution_info = False
        try:
            from langgraph.types import PregelExecutableTask as Task
        except ImportError:
            Task = None
        self.Task = Task
        self.get_config = get_config
        self.current_config = _current_config(get_config)
        self.GraphBubbleUp = GraphBubbleUp
        self.GraphInterrupt = GraphInterrupt
        register_control_flow(GraphBubbleUp, Outcome.INTERRUPTED)


_lg: Optional[_LangGraph] = None


def load() -> _LangGraph:
    """LangGraph's names, imported (and its control flow registered) on first call."""
    global _lg
    if _lg is None:
        _lg = _LangGraph()
    return _lg


def _current_config(get_config: Any) -> Any:
    """A function returning the running node's config, ``None`` outside a graph run. On
    Python 3.11+ it is the context variable ``get_config()`` reads (one lookup on the hot
    path); before 3.11, ``get_config()`` itself, which refuses async contexts (the variable
    is not propagated to async nodes there)."""
    if sys.version_info >= (3, 11):
        try:
            from langchain_core.runnables.config import var_child_runnable_config

            return var_child_runnable_config.get
        except ImportError:
            pass

    def current_config() -> Any:
        try:
            return get_config()
        except Exception:  # outside a graph run
            return None

    return current_config


def node_attempt(configurable: dict) -> Optional[int]:
    """The attempt number of the running task (1, 2, ...), ``None`` when LangGraph does not
    say (before 1.1.3): then no failure can be known to be retried, so each one is final."""
    try:
        attempt = configurable[RUNTIME_KEY].execution_info.node_attempt
    except (KeyError, AttributeError):
        return None
    return attempt if type(attempt) is int and attempt > 0 else None


def task_id(configurable: dict) -> Optional[str]:
    """The running task's id (stable across interrupt and resume), ``None`` before 1.1.3."""
    try:
        task = configurable[RUNTIME_KEY].execution_info.task_id
    except (KeyError, AttributeError):
        return None
    return task if isinstance(task, str) and task else None


def running_retry_policy(configurable: Any) -> Any:
    """The retry policy LangGraph's retry loop applies to the running task (``None``: it is
    never retried), or :data:`UNKNOWN`. ``run_with_retry`` uses ``task.retry_policy or
    retry_policy`` (the node's own, else the graph's); both are on the ``functools.partial``
    LangGraph puts under ``__pregel_call`` (a weak reference to the task, and the graph's
    policy as a keyword). Read only when a node fails; any other shape means UNKNOWN."""
    try:
        call = configurable[CALL_KEY]
        task = call.args[0]()
        task_type = load().Task
        if task_type is None or not isinstance(task, task_type) or "retry_policy" not in call.keywords:
            return UNKNOWN
        return task.retry_policy or call.keywords["retry_policy"] or None
    except Exception:
        return UNKNOWN


def _retries_on(policy: Any, exc: BaseException) -> bool:
    """LangGraph's ``_should_retry_on`` (``pregel/_retry.py``), which is private upstream."""
    retry_on = policy.retry_on
    if isinstance(retry_on, Sequence):
        return isinstance(exc, tuple(retry_on))
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        return isinstance(exc, retry_on)
    return bool(retry_on(exc))


def will_retry(policy: Any, exc: BaseException, attempt: Optional[int]) -> bool:
    """Whether LangGraph's retry loop runs the task again after ``attempt`` raised ``exc``.

    Mirrors ``run_with_retry``: the first policy whose ``retry_on`` matches decides, and
    the task is retried while ``attempt < max_attempts``. Control flow and
    ``BaseException`` are never retried. A policy that cannot be read means "final"
    (the failure is counted, never hidden).
    """
    if attempt is None or not policy or not isinstance(exc, Exception) or isinstance(exc, load().GraphBubbleUp):
        return False
    policies = (policy,) if hasattr(policy, "max_attempts") else policy  # RetryPolicy is a NamedTuple
    try:
        for p in policies:
            if _retries_on(p, exc):
                return attempt < p.max_attempts
    except Exception:
        return False
    return False


class LazyClass:
    """A class built on first use from sil-guard's logic and a framework base class, so that
    importing ``sil_langgraph`` imports no framework (``GuardCallbackHandler``,
    ``GuardMiddleware``); without the framework, first use raises ``MissingExtra``."""

    def __init__(self, module: str, name: str, logic: type, doc: Optional[str], base: str, package: str,
                 before: Any = None) -> None:
        self.module, self.name, self.logic, self.doc = module, name, logic, doc
        self.base, self.package, self.before = base, package, before  # base: "module:Class"
        self._built: Optional[type] = None
        self._lock = threading.Lock()

    def get(self) -> type:
        if self._built is None:
            with self._lock:
                if self._built is None:
                    module, _, cls = self.base.partition(":")
                    try:
                        base = getattr(importlib.import_module(module), cls)
                    except ImportError as exc:
                        raise MissingExtra("langgraph", self.package) from exc
                    if self.before is not None:
                        self.before()
                    self._built = type(self.name, (self.logic, base), {
                        "__module__": self.module, "__qualname__": self.name, "__doc__": self.doc})
        return self._built
