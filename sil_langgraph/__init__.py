"""sil-guard for LangGraph: guarded nodes that record every execution and serve it its
config version, a guard node that judges what a target produced, config versions in the
graph's own store, and observe-only recording of nodes that cannot be wrapped through
LangChain callbacks, and :class:`GuardMiddleware` for ``langchain.agents.create_agent``
(one record per agent run).

``pip install 'sil-guard[langgraph]'``. LangGraph and langchain-core are imported when a
name that needs them is first used; without them that use raises
:class:`sil_core.MissingExtra` naming the extra.
"""

from typing import Any

from .adapters import ConfigurableAdapter, StoreConfigAdapter
from .guard_node import GuardNode
from .nodes import add_guarded_node, guarded_node, node_config

__all__ = (
    "ConfigurableAdapter",
    "GuardCallbackHandler",
    "GuardMiddleware",
    "GuardNode",
    "StoreConfigAdapter",
    "add_guarded_node",
    "guarded_node",
    "node_config",
)


def __getattr__(name: str) -> Any:
    if name == "GuardCallbackHandler":  # built on first use: it subclasses langchain-core's handler
        from . import callbacks

        return callbacks.GuardCallbackHandler
    if name == "GuardMiddleware":  # built on first use: it subclasses langchain's AgentMiddleware
        from . import middleware

        return middleware.GuardMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
