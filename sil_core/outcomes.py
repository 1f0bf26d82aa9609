"""How an exception becomes an outcome, and the registry of control-flow exceptions.

Control flow is not failure: ``asyncio.CancelledError``, ``KeyboardInterrupt``,
``SystemExit`` and ``GeneratorExit`` are recorded as ``cancelled``; adapters register
their framework's markers (``sil_langgraph`` adds LangGraph's ``GraphBubbleUp`` as
``interrupted``). Every exception is re-raised unchanged by the guard either way.
"""

from __future__ import annotations

import asyncio

from .records import Outcome

__all__ = ("classify_exception", "register_control_flow")

_CONTROL_FLOW: dict[type[BaseException], str] = {
    asyncio.CancelledError: Outcome.CANCELLED,
    KeyboardInterrupt: Outcome.CANCELLED,
    SystemExit: Outcome.CANCELLED,
    GeneratorExit: Outcome.CANCELLED,
}
_cache: dict[type, str] = {}


def register_control_flow(exc_type: type[BaseException], outcome: str = Outcome.INTERRUPTED) -> None:
    """Record ``exc_type`` (and subclasses) as ``outcome`` instead of ``error``."""
    if outcome not in Outcome.ALL or outcome in Outcome.DECIDED:
        raise ValueError(f"control-flow outcome must be one of interrupted/cancelled/blocked, not {outcome!r}")
    _CONTROL_FLOW[exc_type] = outcome
    _cache.clear()


def classify_exception(exc: BaseException) -> str:
    """The outcome for a call that raised ``exc``: ``error`` unless it is control flow."""
    cls = type(exc)
    outcome = _cache.get(cls)
    if outcome is None:
        outcome = Outcome.ERROR
        for base in cls.__mro__:
            if base in _CONTROL_FLOW:
                outcome = _CONTROL_FLOW[base]
                break
        _cache[cls] = outcome
    return outcome
