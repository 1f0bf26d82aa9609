"""sil-guard core: record every call of agent code and keep its statistics.

The public names are re-exported here; modules hold one concept each.
"""

from __future__ import annotations

import importlib.metadata as _metadata

from .aggregates import Stats
from .errors import ConfigError, MissingExtra, SilError, StoreError
from .guard import CallHandle, Guard
from .notify import LoggingNotifier, Notifier, TelegramNotifier, WebhookNotifier
from .outcomes import classify_exception, register_control_flow
from .records import CallRecord, Feedback, Outcome
from .store import Store, default_store_url, open_store
from .thresholds import PROFILES, AdaptiveThreshold, ThresholdProfile

try:
    __version__ = _metadata.version("sil-guard")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = (
    "PROFILES",
    "AdaptiveThreshold",
    "CallHandle",
    "CallRecord",
    "ConfigError",
    "Feedback",
    "Guard",
    "LoggingNotifier",
    "MissingExtra",
    "Notifier",
    "Outcome",
    "SilError",
    "Stats",
    "Store",
    "StoreError",
    "TelegramNotifier",
    "ThresholdProfile",
    "WebhookNotifier",
    "classify_exception",
    "default_store_url",
    "open_store",
    "register_control_flow",
)
