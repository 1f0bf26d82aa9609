"""Every exception sil-guard raises, in one place.

Tree::

    SilError
    ├── ConfigError          a bad argument or URL given to sil-guard
    ├── MissingExtra         an optional dependency is not installed (names the pip extra)
    └── StoreError           a store backend failed (wraps the driver's exception)

The guard itself fails open: these errors reach the caller only from explicit calls
(constructors, ``stats``, the CLI), never from a guarded call.
"""

from __future__ import annotations

__all__ = ("ConfigError", "MissingExtra", "SilError", "StoreError")


class SilError(Exception):
    """Base class of every sil-guard error."""


class ConfigError(SilError, ValueError):
    """A bad argument, URL or setting was given to sil-guard."""


class MissingExtra(SilError, ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            f"{module!r} is not installed; install it with: pip install 'sil-guard[{extra}]'"
        )


class StoreError(SilError):
    """A store backend failed; ``__cause__`` holds the driver's exception."""
