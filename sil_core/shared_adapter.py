"""``SharedConfigAdapter``: target configs kept in the guard's own store, so that every
worker and host reads, changes and restores one config, and a restart keeps it.

Per target the store holds content-hashed versions (``kind="version"``, the rows and ids of
:mod:`sil_core.versions`, so a version id means the same config to the guard, the CLI and
this adapter), an active pointer (``kind="config"``, key = target: ``{version, config,
previous, action, by, ts}``) moved only by compare-and-set, and a bounded log of the
pointer's moves (``kind="config_log"``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ._internal.failopen import report
from .adapters import merge_patch
from .calls import current_call
from .errors import ConfigError, StoreError
from .store import Store, open_store
from .versions import config_version, list_versions, put_version

__all__ = ("SharedConfigAdapter",)

_log = logging.getLogger("sil_core")
_mono = time.monotonic

#: state-row namespaces: the active pointer of each target, and the log of its moves
POINTER, LOG = "config", "config_log"
#: compare-and-set attempts before a move gives up (each waits a little longer)
_ATTEMPTS = 100
#: adapters rebuilt from a spec in this process, per (store locator, pid): one connection each
_rebuilt: dict[tuple[str, int], "SharedConfigAdapter"] = {}


class SharedConfigAdapter:
    """The :class:`~sil_core.ConfigAdapter` contract over a sil store, for more than one
    process: every worker of a web service, every host, a restarted process, the CLI.

    Args:
        store: a :class:`~sil_core.Store` (usually the guard's own, ``guard.store``, so one
            connection serves both) or a store URL (then the adapter opens and owns it).
        defaults: ``{target: config}``, each written as the target's first version when the
            store has none (compare-and-set: workers starting together write it once).
            Later edits of ``defaults`` change nothing: the store is the truth.
        cache_s: how old a config read *inside a guarded call* may be (a per-process cache,
            like the guard's own ``refresh_interval``); every other read (a proposal's
            baseline, the check after a rollback, the CLI, your code outside a call) reads
            the store. ``0`` reads the store every time.
        history_size: moves of each target's pointer kept in :meth:`history`.
        actor: who moves the pointer, for :meth:`history` (default ``host:pid``).

    Example:
        >>> adapter = SharedConfigAdapter("memory://", defaults={"writer": {"prompt": "v1"}})
        >>> adapter.apply_config("writer", {"prompt": "v2"})
        True
        >>> adapter.rollback_config("writer", {"prompt": "v1"})
        >>> [(m["action"], m["to"] == adapter.active_version("writer")) for m in adapter.history("writer")]
        [('seed', True), ('apply', False), ('rollback', True)]
    """

    def __init__(self, store: Store | str, defaults: Mapping[str, dict] | None = None, *,
                 cache_s: float = 0.5, history_size: int = 100, actor: str | None = None) -> None:
        if isinstance(store, Store):
            self.store, self._owns_store = store, False
        elif isinstance(store, str):
            self.store, self._owns_store = open_store(store), True
        else:
            raise ConfigError(f"SharedConfigAdapter needs a Store or a store URL, not {store!r}")
        if cache_s < 0 or history_size < 1:
            raise ConfigError("cache_s must be >= 0 and history_size >= 1")
        self.defaults: dict[str, dict] = {t: _plain(c, t) for t, c in (defaults or {}).items()}
        self.cache_s = float(cache_s)
        self.history_size = int(history_size)
        self.actor = actor
        self._cache: dict[str, tuple[float, dict]] = {}  # target -> (expires, pointer row)
        for target in self.defaults:
            self._read(target)  # seed now, so that the store (and `sil`) shows the version at once

    # -- the ConfigAdapter contract -------------------------------------------------------
    def get_config(self, agent_id: str) -> dict:
        """The active config of ``agent_id`` (``{}`` for a target with no version and no
        default). Inside a guarded call it may be up to ``cache_s`` old."""
        if self.cache_s and current_call() is not None:
            hit = self._cache.get(agent_id)
            if hit is not None and hit[0] > _mono():
                return copy.deepcopy(hit[1]["config"])
        return copy.deepcopy(self._read(agent_id)[0]["config"])

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        """Activate ``active config + patch`` (a shallow update), merged on the config the
        store holds at that moment: a concurrent move by another worker is never lost."""
        if not isinstance(config_patch, Mapping):
            raise ConfigError(f"config_patch must be a dict, not {type(config_patch).__name__}")
        patch = dict(config_patch)
        self._move(agent_id, lambda current: merge_patch(current, patch), "apply")
        return True

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        """Activate exactly ``backup_config`` (stored as a version, or its existing one)."""
        self._move(agent_id, lambda current: backup_config, "rollback")

    # -- more for users ---------------------------------------------------------------------
    def set_config(self, agent_id: str, config: dict) -> str:
        """Activate exactly ``config`` outside any guarded change; returns its version id."""
        return self._move(agent_id, lambda current: config, "set")

    def active_version(self, agent_id: str) -> str | None:
        """The id of the active version (``None`` before the target has one)."""
        return self._read(agent_id)[0]["version"]

    def versions(self, agent_id: str) -> list[dict[str, Any]]:
        """Every stored version of ``agent_id`` (the guard's too), oldest first."""
        return list_versions(self.store, agent_id)

    def history(self, agent_id: str) -> list[dict[str, Any]]:
        """The last ``history_size`` moves of the pointer, oldest first:
        ``{seq, ts, by, action, from, to}``; ``action`` is ``seed``, ``apply``, ``rollback``
        or ``set``, ``seq`` the pointer's revision (a gap: a move whose log write failed)."""
        got = self.store.kv_get(LOG, agent_id)
        return list(got[0]["moves"]) if got else []

    def spec(self) -> dict[str, Any]:
        """How to rebuild this adapter in another process (``sil rollback/revert/pin``): the
        store's locator, never its password (see :meth:`from_spec`)."""
        return {"kind": "shared", "url": _locator(self.store), "cache_s": self.cache_s,
                "history_size": self.history_size}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], store: Store | None = None) -> "SharedConfigAdapter":
        """Rebuild an adapter from :meth:`spec`. A spec is kept in the store it names, so
        ``store`` (the store the spec was read from) is reused when it is that store;
        otherwise the store is opened from the spec's URL (a PostgreSQL password then comes
        from ``PGPASSWORD`` or ``~/.pgpass``), once per process."""
        url = spec.get("url") or ""
        options = {"cache_s": spec.get("cache_s", 0.5), "history_size": spec.get("history_size", 100)}
        if store is not None and _locator(store) == url:
            return cls(store, **options)
        scheme = url.partition("://")[0].lower()
        if scheme in ("", "memory"):
            raise ConfigError(f"a {url or 'missing'!r} store cannot be reopened in another process")
        if scheme in ("sqlite", "jsonl"):
            path = unquote(url[len(scheme) + 4:].partition("?")[0])
            if not (os.path.isfile(path) if scheme == "sqlite" else os.path.isdir(path)):
                raise ConfigError(f"there is no store at {url!r} to rebuild a SharedConfigAdapter from")
        key = (url, os.getpid())
        adapter = _rebuilt.get(key)
        if adapter is None:
            adapter = _rebuilt[key] = cls(url, **options)
        return adapter

    def close(self) -> None:
        """Close the store if this adapter opened it (a ``Store`` passed in is left open)."""
        if self._owns_store:
            self.store.close()

    # -- internals --------------------------------------------------------------------------
    def _read(self, agent_id: str) -> tuple[dict[str, Any], int]:
        """``(pointer row, rev)`` from the store, seeding the target's default if it has
        no pointer yet; ``({"version": None, "config": {}}, 0)`` without either."""
        got = self.store.kv_get(POINTER, agent_id)
        if got is None and agent_id in self.defaults:
            self._write(agent_id, self.defaults[agent_id], {"version": None}, 0, "seed")
            got = self.store.kv_get(POINTER, agent_id)  # ours, or the worker's that won
        row, rev = got if got is not None else ({"version": None, "config": {}}, 0)
        self._cache[agent_id] = (_mono() + self.cache_s, row)
        return row, rev

    def _move(self, agent_id: str, compute: Callable[[dict], dict], action: str) -> str:
        """Point ``agent_id`` at ``compute(active config)``, by compare-and-set on the
        pointer, recomputed and retried while other writers move it first."""
        for attempt in range(_ATTEMPTS):
            current, rev = self._read(agent_id)
            config = _plain(compute(copy.deepcopy(current["config"])), agent_id)
            if rev and config_version(config) == current["version"]:
                return current["version"]  # already active: nothing to move
            version = self._write(agent_id, config, current, rev, action)
            if version is not None:
                return version
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
        raise StoreError(f"{agent_id!r}: the config pointer kept moving; {action} gave up after {_ATTEMPTS} attempts")

    def _write(self, agent_id: str, config: dict, current: dict, rev: int, action: str) -> str | None:
        """One compare-and-set of the pointer; the new version id, or ``None`` if another
        writer moved it since ``rev``."""
        version = put_version(self.store, agent_id, config)
        row = {"target": agent_id, "version": version, "config": config, "previous": current.get("version"),
               "action": action, "by": self.actor or f"{socket.gethostname()}:{os.getpid()}", "ts": time.time()}
        new_rev = self.store.kv_put(POINTER, agent_id, row, expect_rev=rev)
        if new_rev is None:
            return None
        self._cache[agent_id] = (_mono() + self.cache_s, row)
        try:  # the move is done: a log that cannot be written must not make it look failed
            self._log_move(agent_id, row, new_rev)
        except Exception as exc:
            report("shared_config.history", exc)
        return version

    def _log_move(self, agent_id: str, row: dict, seq: int) -> None:
        entry = {"seq": seq, "ts": row["ts"], "by": row["by"], "action": row["action"],
                 "from": row["previous"], "to": row["version"]}
        for attempt in range(_ATTEMPTS):
            got = self.store.kv_get(LOG, agent_id)
            moves, rev = (got[0]["moves"], got[1]) if got else ([], 0)
            moves = sorted(moves + [entry], key=lambda m: m["seq"])[-self.history_size:]
            if self.store.kv_put(LOG, agent_id, {"target": agent_id, "moves": moves}, expect_rev=rev) is not None:
                return
            time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
        _log.warning("%s: the move to %s was made but not logged (the log kept changing)", agent_id, row["version"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_locator(self.store)!r})"


def _plain(config: Any, target: str) -> dict:
    """``config`` as the store will give it back (JSON types only), so that a restored
    config compares equal to the one given and its version id is the same everywhere."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{target!r}: a config must be a dict, not {type(config).__name__}")
    try:
        return json.loads(json.dumps(dict(config), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{target!r}: a shared config must be plain JSON: {exc}") from None


def _locator(store: Store) -> str:
    """The store's URL as another process on this host can open it: file paths made
    absolute, a PostgreSQL password (in the user info or ``password=``) left out."""
    url = store.url
    scheme = url.partition("://")[0].lower()
    if scheme in ("sqlite", "jsonl"):
        path, sep, query = url[len(scheme) + 4:].partition("?")
        return f"{scheme}:///{Path(unquote(path)).expanduser().resolve()}{sep}{query}"
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        if parts.username is not None:
            netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
        schema = getattr(store, "schema", None)
        if schema and not any(k == "schema" for k, _ in query):
            query.append(("schema", schema))
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))
    return url
