"""Helpers for testing code that uses sil-guard, and for testing a store of your own.

- :class:`ManualClock`: ``Guard(clock=ManualClock())`` moves time only when told, so a
  test advances past a refresh interval or a cooldown instead of sleeping.
"""

from .._internal.clock import ManualClock

__all__ = ["ManualClock"]

from .store_contract import StoreContract  # noqa: E402  (the store contract suite, for store authors)

__all__ += ["StoreContract"]
