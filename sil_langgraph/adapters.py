"""Config adapters for LangGraph: node config kept in the graph's ``BaseStore``, or passed per
run in ``configurable``.

Both implement the :class:`sil_core.ConfigAdapter` contract (``get_config``,
``apply_config`` -> ``True`` on success, ``rollback_config``), so a :class:`sil_core.Guard`
can apply a change and roll it back through them.

:class:`StoreConfigAdapter` layout, per target, under ``namespace`` (default ``("sil", "config")``)::

    namespace + (target,)              key "active"     the active pointer:
                                                         {version, config, previous, action, updated}
    namespace + (target, "versions")   key <version id> immutable versions (content hash):
                                                         {version, config, created}
    namespace + (target, "log")        key <time-ordered> one item per pointer move (the history)

The version id is :func:`sil_core.config_version` of the config, the same id the guard uses,
so a version named in the guard's trail is the version stored here. ``BaseStore`` has no
compare-and-swap: writers are last-writer-wins, which suits a pointer moved by one decider
(the guard's change manager); each pointer move is a single ``put``, so a reader sees either
the old or the new active config, never a mix.

Target names are free text: LangGraph forbids ``.`` in namespace labels, so labels are
escaped (``.`` -> ``%2E``, ``%`` -> ``%25``).
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid
from typing import Any, Iterable, Mapping

from sil_core.adapters import merge_patch
from sil_core.errors import ConfigError, MissingExtra
from sil_core.versions import config_version

__all__ = ("ConfigurableAdapter", "StoreConfigAdapter", "arm_key", "version_key")

ACTIVE = "active"


def version_key(target: str) -> str:
    """The run-metadata key naming the version of ``target`` a run was served."""
    return f"sil_version:{target}"


def arm_key(target: str) -> str:
    """The run-metadata key naming the arm (baseline/candidate) of ``target`` a run was served."""
    return f"sil_arm:{target}"


def _escape(label: str) -> str:
    if not isinstance(label, str) or not label:
        raise ConfigError(f"a target must be a non-empty string, not {label!r}")
    return label.replace("%", "%25").replace(".", "%2E")


def _in_memory_store() -> Any:
    try:
        from langgraph.store.memory import InMemoryStore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtra("langgraph", "langgraph") from exc
    return InMemoryStore()


class StoreConfigAdapter:
    """The :class:`~sil_core.ConfigAdapter` contract over a LangGraph ``BaseStore``.

    Works with any ``BaseStore``: ``InMemoryStore``, ``SqliteStore``, ``PostgresStore``
    (call their ``setup()`` first, as LangGraph requires) or a third-party one. Use the
    same store the graph is compiled with (``builder.compile(store=store)``) and nodes can
    read their config with ``store.get(...)`` too, but :meth:`get_config` is the simple way.

    Args:
        store: the ``BaseStore``.
        namespace: the namespace prefix for every item this adapter writes.
        defaults: the config of a target that has no active version yet (``{}`` otherwise).

    Example:
        >>> from langgraph.store.memory import InMemoryStore
        >>> adapter = StoreConfigAdapter(InMemoryStore(), defaults={"writer": {"prompt": "v1"}})
        >>> adapter.apply_config("writer", {"prompt": "v2"})
        True
        >>> adapter.get_config("writer")
        {'prompt': 'v2'}
        >>> adapter.rollback_config("writer", {"prompt": "v1"})
        >>> [h["action"] for h in adapter.history("writer")]
        ['apply', 'rollback']
    """

    def __init__(self, store: Any, namespace: Iterable[str] = ("sil", "config"), *,
                 defaults: Mapping[str, dict] | None = None) -> None:
        if store is None or not hasattr(store, "get") or not hasattr(store, "put"):
            raise ConfigError(f"StoreConfigAdapter needs a LangGraph BaseStore, not {store!r}")
        namespace = tuple(namespace)
        if not namespace or namespace[0] == "langgraph":
            raise ConfigError(f"namespace must be a non-empty tuple not rooted at 'langgraph', not {namespace!r}")
        for label in namespace:
            if not isinstance(label, str) or not label or "." in label:
                raise ConfigError(f"namespace labels must be non-empty strings without '.', not {label!r}")
        self.store = store
        self.namespace: tuple[str, ...] = namespace
        self.defaults: dict[str, dict] = {k: copy.deepcopy(dict(v)) for k, v in (defaults or {}).items()}
        self._lock = threading.RLock()

    # -- namespaces -------------------------------------------------------------------------
    def _ns(self, target: str, *more: str) -> tuple[str, ...]:
        return self.namespace + (_escape(target),) + more

    # -- the ConfigAdapter contract -------------------------------------------------------
    def get_config(self, agent_id: str) -> dict:
        """The active config of ``agent_id`` (its ``defaults`` entry, or ``{}``, before any
        version was activated)."""
        return copy.deepcopy(self._active_value(agent_id)["config"])

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        """Store ``active config + patch`` (a shallow merge) as a version and activate it."""
        if not isinstance(config_patch, Mapping):
            raise ConfigError(f"config_patch must be a dict, not {type(config_patch).__name__}")
        with self._lock:
            merged = merge_patch(self.get_config(agent_id), dict(config_patch))
            self._activate(agent_id, merged, "apply")
        return True

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        """Activate exactly ``backup_config`` (stored as a version, or its existing one)."""
        with self._lock:
            self._activate(agent_id, copy.deepcopy(dict(backup_config)), "rollback")

    # -- more for users ---------------------------------------------------------------------
    def set_config(self, agent_id: str, config: dict) -> str:
        """Activate exactly ``config`` (e.g. to seed a target); returns its version id."""
        with self._lock:
            return self._activate(agent_id, copy.deepcopy(dict(config)), "set")

    def activate(self, agent_id: str, version: str) -> dict:
        """Move the pointer to a stored ``version`` (a pin); returns its config."""
        with self._lock:
            config = self.version_config(agent_id, version)
            if config is None:
                raise ConfigError(f"{agent_id!r} has no stored version {version!r}")
            self._activate(agent_id, config, "activate")
            return config

    def active_version(self, agent_id: str) -> str | None:
        """The id of the active version (``None`` before any was activated)."""
        return self._active_value(agent_id).get("version")

    def version_config(self, agent_id: str, version: str) -> dict | None:
        """The config of a stored version, or ``None``."""
        item = self.store.get(self._ns(agent_id, "versions"), version)
        return None if item is None else copy.deepcopy(item.value["config"])

    def versions(self, agent_id: str) -> list[dict]:
        """Every stored version of ``agent_id``, oldest first: ``{version, config, created}``."""
        rows = [dict(item.value) for item in self._search(self._ns(agent_id, "versions"))]
        return sorted(rows, key=lambda v: (v.get("created", 0.0), v.get("version", "")))

    def history(self, agent_id: str) -> list[dict]:
        """Every move of the active pointer, oldest first:
        ``{version, previous, action, ts}`` where ``action`` is ``apply``, ``rollback``,
        ``set`` or ``activate``."""
        items = sorted(self._search(self._ns(agent_id, "log")), key=lambda item: item.key)
        return [dict(item.value) for item in items]

    async def aget_config(self, agent_id: str) -> dict:
        """:meth:`get_config` for async code (uses the store's ``aget``; a store without
        async support is read on a worker thread)."""
        try:
            item = await self.store.aget(self._ns(agent_id), ACTIVE)
        except NotImplementedError:
            return await asyncio.to_thread(self.get_config, agent_id)
        if item is None:
            return copy.deepcopy(self.defaults.get(agent_id, {}))
        return copy.deepcopy(item.value["config"])

    # -- internals --------------------------------------------------------------------------
    def _active_value(self, agent_id: str) -> dict:
        item = self.store.get(self._ns(agent_id), ACTIVE)
        if item is None:
            return {"version": None, "config": self.defaults.get(agent_id, {})}
        return item.value

    def _search(self, namespace: tuple[str, ...]) -> list[Any]:
        """Every item of exactly ``namespace`` (pages through ``search``; a key seen twice
        across pages, when a backend's order has ties, is kept once)."""
        found: dict[str, Any] = {}
        page, offset = 1000, 0
        while True:
            batch = self.store.search(namespace, limit=page, offset=offset)
            for item in batch:
                if tuple(item.namespace) == namespace:
                    found.setdefault(item.key, item)
            if len(batch) < page:
                return list(found.values())
            offset += len(batch)

    def _put(self, namespace: tuple[str, ...], key: str, value: dict) -> None:
        try:  # never embed config items in a semantically indexed store
            self.store.put(namespace, key, value, index=False)
        except TypeError:  # a third-party store without the ``index`` argument
            self.store.put(namespace, key, value)

    def _activate(self, agent_id: str, config: dict, action: str) -> str:
        version = config_version(config)
        now = time.time()
        vns = self._ns(agent_id, "versions")
        if self.store.get(vns, version) is None:  # versions are immutable: write once
            self._put(vns, version, {"version": version, "config": config, "created": now})
        previous = self.active_version(agent_id)
        self._put(self._ns(agent_id), ACTIVE,
                  {"version": version, "config": config, "previous": previous, "action": action, "updated": now})
        self._put(self._ns(agent_id, "log"), f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}",
                  {"version": version, "previous": previous, "action": action, "ts": now})
        return version

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.store).__name__}, namespace={self.namespace!r})"


class ConfigurableAdapter(StoreConfigAdapter):
    """Node config passed per run in ``config["configurable"]`` (the classic LangGraph way
    to parametrise a graph), with versions, rollback and canary routing.

    The adapter keeps each target's versions and active pointer (in an ``InMemoryStore`` by
    default; pass ``store=`` a ``SqliteStore``/``PostgresStore`` to share them between
    workers). Before each run, build the run's config with it::

        adapter = ConfigurableAdapter({"writer": {"prompt": "Write briefly."}})
        guard = Guard(..., adapter=adapter)   # the guard applies and rolls back through it
        adapter.bind(guard)                   # ... and its canaries are served per run
        graph = builder.compile().with_config(callbacks=[GuardCallbackHandler(guard)])

        config = adapter.run_config("writer", thread_id="t-1", key="user-42")
        graph.invoke(inputs, config)
        # the writer node reads config["configurable"]["prompt"], unchanged

    :meth:`configurable` returns the target's config as flat ``configurable`` keys, which
    is what nodes that read ``config["configurable"][...]`` expect (pass ``nest=`` to put
    each target's config under its own key when several targets share key names).
    :meth:`run_config` also tags the run's metadata with ``sil_version:<target>`` /
    ``sil_arm:<target>``: :class:`~sil_langgraph.GuardCallbackHandler` records the node's
    outcome against that version and arm, and the tag lands in checkpoint metadata.

    With ``guard=`` (or :meth:`bind`), a change in flight is served per run: during a canary each run gets
    the baseline's or the candidate's config (``key`` routes one user or thread to one arm
    consistently); outside a change every run gets the active version. With
    ``pin_from=graph`` (a graph with a checkpointer) a thread that already ran keeps the
    version it started with, so a resumed interrupt is finished with the config the human
    approved.
    """

    def __init__(self, defaults: Mapping[str, dict] | None = None, *, store: Any = None,
                 namespace: Iterable[str] = ("sil", "configurable"), guard: Any = None,
                 nest: str | None = None) -> None:
        super().__init__(store if store is not None else _in_memory_store(), namespace, defaults=defaults)
        self.guard = guard
        self.nest = nest

    def bind(self, guard: Any) -> "ConfigurableAdapter":
        """Serve ``guard``'s changes in flight per run (for an adapter created before its
        guard: ``guard = Guard(adapter=adapter); adapter.bind(guard)``); returns ``self``."""
        self.guard = guard
        return self

    def serve(self, target: str, *, key: Any = None) -> tuple[str, str | None, dict]:
        """``(version, arm, config)`` serving one run of ``target``: the guard's arm during a
        change in flight, else the active version (``arm`` is ``None``)."""
        if self.guard is not None:
            try:
                version, arm, config = self.guard.route(target, key=key)
                if arm is not None and config is not None:
                    return version, arm, config
            except Exception as exc:  # fail open: serve the active version
                from sil_core.integration import report

                report("configurable.route", exc)
        active = self._active_value(target)
        config = copy.deepcopy(active["config"])
        return active.get("version") or config_version(config), None, config

    def configurable(self, target: str, *, key: Any = None) -> dict:
        """The ``configurable`` entries for one run of ``target`` (see :meth:`serve`)."""
        return self._entries(target, self.serve(target, key=key)[2])

    def run_config(self, *targets: str, base: Mapping[str, Any] | None = None, thread_id: str | None = None,
                   key: Any = None, pin_from: Any = None) -> dict:
        """A complete ``RunnableConfig`` for one run: ``base`` (callbacks, tags, ...) with
        every target's config merged into ``configurable``, and ``metadata`` tagged with
        ``"sil_version:<target>"`` (and ``"sil_arm:<target>"`` during a change) naming what
        was served. LangGraph copies string metadata into checkpoint metadata, so runs of a
        version can be listed with ``saver.list(None, filter={"sil_version:writer": v})``.

        ``key`` (default: ``thread_id``) routes the run to an arm during a canary. With
        ``pin_from=graph`` and a thread that is paused mid-run (an interrupt waiting for
        ``Command(resume=...)``), the thread is served the versions it started with.
        """
        config: dict[str, Any] = dict(base or {})
        configurable = dict(config.get("configurable") or {})
        metadata = dict(config.get("metadata") or {})
        if thread_id is not None:
            configurable["thread_id"] = thread_id
        pinned = self._pinned(pin_from, configurable) if pin_from is not None else {}
        for target in targets:
            served = None
            version = pinned.get(version_key(target))
            if version is not None:
                cfg = self._config_of(target, version)
                if cfg is not None:
                    served = (version, pinned.get(arm_key(target)), cfg)
            if served is None:
                served = self.serve(target, key=key if key is not None else configurable.get("thread_id"))
            version, arm, cfg = served
            if self.nest:
                nested = dict(configurable.get(self.nest) or {})
                nested[target] = copy.deepcopy(cfg)
                configurable[self.nest] = nested
            else:
                configurable.update(copy.deepcopy(cfg))
            metadata[version_key(target)] = version
            if arm is not None:
                metadata[arm_key(target)] = arm
            else:
                metadata.pop(arm_key(target), None)
        config["configurable"] = configurable
        config["metadata"] = metadata
        return config

    # -- internals --------------------------------------------------------------------------
    def _entries(self, target: str, config: dict) -> dict:
        config = copy.deepcopy(config)
        return {self.nest: {target: config}} if self.nest else config

    def _config_of(self, target: str, version: str) -> dict | None:
        config = self.version_config(target, version)
        if config is None and self.guard is not None:
            try:
                from sil_core.versions import get_version

                config = get_version(self.guard.store, target, version)
            except Exception:
                config = None
        return config

    def _pinned(self, graph: Any, configurable: dict) -> dict:
        """The version tags of a thread paused mid-run (from its checkpoint metadata)."""
        if "thread_id" not in configurable:
            return {}
        try:
            snapshot = graph.get_state({"configurable": {"thread_id": configurable["thread_id"]}})
        except Exception:
            return {}
        if snapshot is None or not snapshot.next:  # finished (or new) thread: serve the current version
            return {}
        return {k: v for k, v in (snapshot.metadata or {}).items() if isinstance(k, str) and k.startswith("sil_")}
