"""sil-guard core: record every call of agent code and keep its statistics.

The public names are re-exported here; modules hold one concept each.
"""

from __future__ import annotations

import importlib.metadata as _metadata

from .adapters import ConfigAdapter, DictConfigAdapter, JsonFileConfigAdapter
from .aggregates import Stats
from .calls import CallHandle, CallInfo, current_call, last_call
from .detect import Verdict
from .errors import ConfigError, MissingExtra, SilError, StoreError
from .compat import AutoRollback, SelfImprovingLoop
from .guard import Guard
from .health import Health
from .metrics import Guardrail, MetricStats, PriceTable
from .policy import RolloutPolicy
from .rollout import Change, InvalidTransition, State
from .strategies import Strategy, StrategyDecision
from .trail import TrailReport, verify_trail
from .versions import config_version
from .notify import LoggingNotifier, Notifier, TelegramNotifier, WebhookNotifier
from .outcomes import classify_exception, register_control_flow
from .records import CallRecord, Feedback, Outcome
from .seed_stores import JsonlTraceStore, SQLiteTraceStore
from .shared_adapter import SharedConfigAdapter
from .store import Store, default_store_url, open_store
from .thresholds import PROFILES, AdaptiveThreshold, ThresholdProfile
from .yijing import (
    CORE_HEXAGRAMS, DIMENSIONS, YijingEvolutionStrategy, identify_hexagram, policy_for_hexagram, score_lines,
)

try:
    __version__ = _metadata.version("sil-guard")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = (
    "CORE_HEXAGRAMS",
    "DIMENSIONS",
    "PROFILES",
    "AdaptiveThreshold",
    "AutoRollback",
    "CallHandle",
    "CallInfo",
    "CallRecord",
    "Change",
    "ConfigAdapter",
    "ConfigError",
    "DictConfigAdapter",
    "Feedback",
    "Guard",
    "Guardrail",
    "Health",
    "InvalidTransition",
    "JsonFileConfigAdapter",
    "JsonlTraceStore",
    "LoggingNotifier",
    "MetricStats",
    "MissingExtra",
    "Notifier",
    "Outcome",
    "PriceTable",
    "RolloutPolicy",
    "SQLiteTraceStore",
    "SelfImprovingLoop",
    "SharedConfigAdapter",
    "SilError",
    "State",
    "Stats",
    "Store",
    "StoreError",
    "Strategy",
    "StrategyDecision",
    "TelegramNotifier",
    "ThresholdProfile",
    "TrailReport",
    "Verdict",
    "WebhookNotifier",
    "YijingEvolutionStrategy",
    "classify_exception",
    "config_version",
    "current_call",
    "default_store_url",
    "identify_hexagram",
    "last_call",
    "open_store",
    "policy_for_hexagram",
    "register_control_flow",
    "score_lines",
    "verify_trail",
)
