"""Token usage and cost of chat-model calls, summed into one guarded call's metrics.

A model call's usage is its ``AIMessage.usage_metadata`` (``input_tokens``,
``output_tokens``): they add to the call's ``tokens_in`` / ``tokens_out``. Its cost is the
one the framework reports (``usage_metadata["total_cost"]``, else ``input_cost +
output_cost``: LangSmith's convention, which langchain-core follows when it zeroes the cost
of a cache hit), else ``prices.cost(model, ...)`` with the model named by the message's
``response_metadata`` (``model_name`` / ``model``). A call's ``cost_usd`` is recorded only if
every model call of it has a cost: a partial sum would look like a saving.

:func:`watch` adds a :class:`UsageHandler` to the callbacks of a LangGraph node execution
(``config["callbacks"]``, which every run started inside the node inherits, in any thread
or task it is passed to); it counts each model run once, on ``on_llm_end`` (a stream ends
with one aggregated message), and skips a model run nested in another it counts.

Nothing here imports LangChain until a handler is first made.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Optional

from sil_core import PriceTable
from sil_core.integration import report

from . import _compat

__all__ = ("Tally", "price_table", "unwatch", "usage_of", "watch")

_lock = threading.Lock()  # one for all tallies: model calls end rarely next to everything else
_MISSING = object()


def price_table(prices: Optional[Mapping[str, Any] | PriceTable]) -> Optional[PriceTable]:
    """``prices`` as a :class:`sil_core.PriceTable` (a dict is validated now), or ``None``."""
    if prices is None or isinstance(prices, PriceTable):
        return prices
    return PriceTable(prices)


def usage_of(message: Any) -> Optional[tuple]:
    """``(tokens_in, tokens_out, cost or None, model or None)`` of an AI message with usage."""
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return None
    meta = getattr(message, "response_metadata", None) or {}
    model = meta.get("model_name") or meta.get("model")
    cost = usage.get("total_cost")
    if cost is None and usage.get("input_cost") is not None and usage.get("output_cost") is not None:
        cost = usage["input_cost"] + usage["output_cost"]
    return usage.get("input_tokens") or 0, usage.get("output_tokens") or 0, cost, model


class Tally:
    """The usage of one guarded call, summed into ``metrics`` over its model calls (thread-safe)."""

    __slots__ = ("metrics", "prices", "uncosted")

    def __init__(self, metrics: Optional[dict], prices: Optional[PriceTable]) -> None:
        self.metrics, self.prices, self.uncosted = metrics, prices, False

    def add(self, message: Any, model: Optional[str] = None) -> None:
        """Add one model call's usage (nothing if its message reports none)."""
        found = usage_of(message)
        if found is None:
            return
        t_in, t_out, cost, name = found
        if cost is None and self.prices is not None:
            cost = self.prices.cost(name or model, t_in, t_out)
        with _lock:
            m = self.metrics
            if m is None:
                m = self.metrics = {}
            m["tokens_in"] = m.get("tokens_in", 0) + t_in
            m["tokens_out"] = m.get("tokens_out", 0) + t_out
            if cost is None:
                self.uncosted = True
            else:
                m["cost_usd"] = m.get("cost_usd", 0.0) + float(cost)

    def close(self) -> Optional[dict]:
        """The metrics to record (``cost_usd`` dropped if a model call had no cost), or ``None``."""
        if not self.metrics:
            return None
        with _lock:
            if self.uncosted:
                self.metrics.pop("cost_usd", None)
            return self.metrics or None


class _UsageLogic(Tally):
    """Counts the model runs started under one node execution (a :class:`Tally` of its own)."""

    raise_error = False
    run_inline = True  # cheap and thread-safe: no executor hop in async runs
    ignore_chain = ignore_agent = ignore_retriever = ignore_retry = ignore_custom_event = True

    open: Optional[dict] = None  # model run id -> its model name (None: nested in a counted run), once one starts

    def __init__(self, metrics: Optional[dict], prices: Optional[PriceTable], callbacks: Any) -> None:
        self.metrics, self.prices, self.uncosted, self.callbacks = metrics, prices, False, callbacks

    def _start(self, run_id: Any, parent_run_id: Any, metadata: Optional[dict]) -> None:
        with _lock:
            runs = self.open
            if runs is None:
                runs = self.open = {}
            nested = parent_run_id is not None and parent_run_id in runs
            runs[run_id] = None if nested else (metadata or {}).get("ls_model_name") or ""

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: Any, parent_run_id: Any = None,
                            metadata: Optional[dict] = None, **kwargs: Any) -> None:
        self._start(run_id, parent_run_id, metadata)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: Any, parent_run_id: Any = None,
                     metadata: Optional[dict] = None, **kwargs: Any) -> None:
        self._start(run_id, parent_run_id, metadata)

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        with _lock:
            model = self.open.pop(run_id, _MISSING) if self.open else _MISSING
        if model is None:
            return  # inside a model run that reports its own usage
        model = model if isinstance(model, str) and model else None
        for generations in getattr(response, "generations", None) or ():
            if generations:  # n completions of one prompt share one usage
                self.add(getattr(generations[0], "message", None), model)

    def on_llm_error(self, error: BaseException, *, run_id: Any, **kwargs: Any) -> None:
        with _lock:
            if self.open:
                self.open.pop(run_id, None)


_HANDLER = _compat.LazyClass(__name__, "UsageHandler", _UsageLogic, _UsageLogic.__doc__,
                             "langchain_core.callbacks:BaseCallbackHandler", "langchain-core")
_handler_class: Any = None


def watch(config: dict, metrics: Optional[dict], prices: Optional[PriceTable]) -> Any:
    """Count the model calls of the execution running under LangGraph's ``config`` into
    ``metrics`` (a new dict if ``None``); returns what :func:`unwatch` takes."""
    callbacks = config.get("callbacks")
    try:
        handler = (_handler_class or _build())(metrics, prices, callbacks)
        try:  # LangGraph's per-execution CallbackManager
            callbacks.handlers.append(handler)
            callbacks.inheritable_handlers.append(handler)
        except AttributeError:
            if callbacks is not None and not isinstance(callbacks, list):
                return None
            config["callbacks"] = [*(callbacks or ()), handler]
        return handler
    except Exception as exc:  # fail open: the execution runs, its usage uncounted
        report("langgraph.usage", exc)
        return None


def _build() -> Any:
    global _handler_class
    _handler_class = _HANDLER.get()
    return _handler_class


def unwatch(config: dict, handler: Any) -> Optional[dict]:
    """Detach what :func:`watch` attached; the metrics to record, or ``None``."""
    if handler is None:
        return None
    callbacks = handler.callbacks
    try:
        handlers = callbacks.handlers
        handlers.pop() if handlers[-1] is handler else handlers.remove(handler)
        handlers = callbacks.inheritable_handlers
        handlers.pop() if handlers[-1] is handler else handlers.remove(handler)
    except AttributeError:
        config["callbacks"] = callbacks
    except Exception as exc:
        report("langgraph.usage", exc)
    return handler.close() if handler.metrics else None
