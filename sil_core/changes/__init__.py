"""Guarded config changes: propose, route calls to arms, judge, promote or roll back.

The change engine's state lives in the store (change rows, target heads, versions, the
trail), so every worker sharing a store sees the same change; each move is a
compare-and-set on the change row, and acting on a verdict (a promotion or a rollback,
which call the user's adapter) first takes a short lease on the row, so exactly one worker
acts. Judging reads aggregate cells pooled across workers. See ``manager.py`` for the
parts and ``docs/architecture.md`` for the whole.
"""

from __future__ import annotations

from .._internal.ids import default_worker_id
from ..digest import patch_hash
from ..routing import bucket
from .manager import ChangeManager
from .rows import FORMAT, ChangeRow, Head

__all__ = ("FORMAT", "ChangeManager", "ChangeRow", "Head", "bucket", "default_worker_id", "patch_hash")
