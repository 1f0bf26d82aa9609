"""Config versions: immutable, content-hashed snapshots of a target's config, kept in the
store (``kind="version"``, key ``"<target>@<version>"``)."""

from __future__ import annotations

import time
from typing import Any

from .digest import version_id
from .store.base import Store

__all__ = ("config_version", "get_version", "list_versions", "put_version")


def config_version(config: dict[str, Any]) -> str:
    """The version id of a config: ``v`` + 12 hex digits of its digest (see ``digest.py``)."""
    return version_id(config)


def put_version(store: Store, target: str, config: dict[str, Any]) -> str:
    """Store a config as a version (idempotent) and return its id."""
    version = config_version(config)
    if store.kv_get("version", f"{target}@{version}") is None:
        store.kv_put("version", f"{target}@{version}",
                     {"target": target, "version": version, "config": config, "created": time.time()}, expect_rev=0)
    return version


def get_version(store: Store, target: str, version: str) -> dict[str, Any] | None:
    """The config of a version, or ``None``."""
    row = store.kv_get("version", f"{target}@{version}")
    return row[0]["config"] if row else None


def list_versions(store: Store, target: str) -> list[dict[str, Any]]:
    """Every stored version of a target, oldest first: ``{version, config, created}``."""
    rows = [v for k, v, _ in store.kv_list("version") if v.get("target") == target]
    return sorted(rows, key=lambda v: v.get("created", 0))
