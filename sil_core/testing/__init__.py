"""Helpers for testing code that uses sil-guard, and for testing a store of your own.

- :class:`ManualClock`: ``Guard(clock=ManualClock())`` moves time only when told, so a
  test advances past a refresh interval or a cooldown instead of sleeping.
- :class:`StoreContract`: the contract suite sil-guard's own four stores pass; subclass it
  with ``make_store(self, tmp_path)`` to run it against yours (README, "Writing your own store").
"""

from .._internal.clock import ManualClock
from .store_contract import StoreContract

__all__ = ["ManualClock", "StoreContract"]
