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
import concurrent.futures
import copy
import threading
import time
import uuid
from typing import Any, Iterable, Mapping

from sil_core.adapters import merge_patch
from sil_core.errors import ConfigError, MissingExtra
from sil_core.versions import config_version

__all__ = ("AsyncStoreError", "ConfigurableAdapter", "StoreConfigAdapter", "arm_key", "version_key")

ACTIVE = "active"
_PENDING = object()  # config_for: a read scheduled on the loop, no answer yet


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


class AsyncStoreError(RuntimeError):
    """A synchronous method of :class:`StoreConfigAdapter` was called where its async-only
    store cannot serve it (on the store's event loop thread): await the ``a``-prefixed twin."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (an op over the store's sync API) to its end."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()  # pragma: no cover - _SyncIO never awaits anything that suspends
    raise RuntimeError("a synchronous store call suspended")


def _is_async_batched(store: Any) -> bool:
    """LangGraph's async stores (``AsyncPostgresStore``, ``AsyncSqliteStore``): their sync
    methods refuse to run on the store's event loop thread."""
    try:
        from langgraph.store.base.batch import AsyncBatchedBaseStore
    except ImportError:  # pragma: no cover - depends on the langgraph version
        return False
    return isinstance(store, AsyncBatchedBaseStore)


class _SyncIO:
    """The store's sync API behind awaitables that never suspend (see :func:`_drive`)."""

    __slots__ = ("store",)

    def __init__(self, store: Any) -> None:
        self.store = store

    async def get(self, namespace: tuple[str, ...], key: str) -> Any:
        return self.store.get(namespace, key)

    async def search(self, namespace: tuple[str, ...], limit: int, offset: int) -> list[Any]:
        return self.store.search(namespace, limit=limit, offset=offset)

    async def put(self, namespace: tuple[str, ...], key: str, value: dict) -> None:
        try:  # never embed config items in a semantically indexed store
            self.store.put(namespace, key, value, index=False)
        except TypeError:  # a third-party store without the ``index`` argument
            self.store.put(namespace, key, value)


class _AsyncIO(_SyncIO):
    """The store's async API (``aget``, ``asearch``, ``aput``)."""

    __slots__ = ()

    async def get(self, namespace: tuple[str, ...], key: str) -> Any:
        return await self.store.aget(namespace, key)

    async def search(self, namespace: tuple[str, ...], limit: int, offset: int) -> list[Any]:
        return await self.store.asearch(namespace, limit=limit, offset=offset)

    async def put(self, namespace: tuple[str, ...], key: str, value: dict) -> None:
        try:
            await self.store.aput(namespace, key, value, index=False)
        except TypeError:
            await self.store.aput(namespace, key, value)


class StoreConfigAdapter:
    """The :class:`~sil_core.ConfigAdapter` contract over a LangGraph ``BaseStore``.

    Works with any ``BaseStore``: ``InMemoryStore``, ``SqliteStore``, ``PostgresStore``
    (call their ``setup()`` first, as LangGraph requires), the async ``AsyncPostgresStore``
    / ``AsyncSqliteStore``, or a third-party one. Use the same store the graph is compiled
    with (``builder.compile(store=store)``) and nodes can read their config with
    ``store.get(...)`` too, but :meth:`get_config` is the simple way.

    Every method has an async twin (``aget_config``, ``aapply_config``,
    ``arollback_config``, ...) that uses the store's async API (``aget``, ``aput``,
    ``asearch``; a store without one is used on a worker thread). With an async-only store
    the sync methods work from any thread but the store's event loop thread (they run on
    that loop, which must be running, or in ``asyncio.run`` when no loop is known): that
    is how the guard's background threads and ``await guard.apropose(...)`` reach the
    store. On the loop thread itself they raise :class:`AsyncStoreError`: await the twin.
    :meth:`config_for` reads a target's config without blocking, from any thread.

    Args:
        store: the ``BaseStore``.
        namespace: the namespace prefix for every item this adapter writes.
        defaults: the config of a target that has no active version yet (``{}`` otherwise).
        loop: the event loop an async-only store runs on (default: the store's ``loop``
            attribute, else the loop running when the adapter was made or last awaited).
        timeout: seconds a sync method waits for the store's event loop.
        cache_ttl: seconds :meth:`config_for` serves a cached active config before
            reading it again.

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

    #: stored versions' configs kept by :meth:`config_for` (versions are immutable)
    VERSION_CACHE = 4096

    def __init__(self, store: Any, namespace: Iterable[str] = ("sil", "config"), *,
                 defaults: Mapping[str, dict] | None = None, loop: asyncio.AbstractEventLoop | None = None,
                 timeout: float = 30.0, cache_ttl: float = 1.0) -> None:
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
        self.loop = loop
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        # one writer at a time, across threads and coroutines (a coroutine polls for it, so a
        # thread holding it while it waits for the store's loop never deadlocks that loop)
        self._lock = threading.Lock()
        self._sio, self._aio = _SyncIO(store), _AsyncIO(store)
        self._async_only = _is_async_batched(store)  # learned too, from a sync call that refuses
        self._sync_only = False  # learned from an async call that raises NotImplementedError
        self._seen_loop = _running_loop()
        self._active_cache: dict[str, tuple[float, dict]] = {}
        self._version_cache: dict[tuple[str, str], dict] = {}
        self._refreshing: dict[Any, Any] = {}

    # -- namespaces -------------------------------------------------------------------------
    def _ns(self, target: str, *more: str) -> tuple[str, ...]:
        return self.namespace + (_escape(target),) + more

    # -- the ConfigAdapter contract -------------------------------------------------------
    def get_config(self, agent_id: str) -> dict:
        """The active config of ``agent_id`` (its ``defaults`` entry, or ``{}``, before any
        version was activated)."""
        return self._sync("get_config", self._op_get_config, agent_id)

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        """Store ``active config + patch`` (a shallow merge) as a version and activate it."""
        self._check_patch(config_patch)
        return self._sync("apply_config", self._op_apply, agent_id, dict(config_patch), write=True)

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        """Activate exactly ``backup_config`` (stored as a version, or its existing one)."""
        self._sync("rollback_config", self._op_activate, agent_id, copy.deepcopy(dict(backup_config)), "rollback",
                   write=True)

    # -- more for users ---------------------------------------------------------------------
    def set_config(self, agent_id: str, config: dict) -> str:
        """Activate exactly ``config`` (e.g. to seed a target); returns its version id."""
        return self._sync("set_config", self._op_activate, agent_id, copy.deepcopy(dict(config)), "set", write=True)

    def activate(self, agent_id: str, version: str) -> dict:
        """Move the pointer to a stored ``version`` (a pin); returns its config."""
        return self._sync("activate", self._op_pin, agent_id, version, write=True)

    def active_version(self, agent_id: str) -> str | None:
        """The id of the active version (``None`` before any was activated)."""
        return self._sync("active_version", self._op_active, agent_id).get("version")

    def version_config(self, agent_id: str, version: str) -> dict | None:
        """The config of a stored version, or ``None``."""
        return self._sync("version_config", self._op_version_config, agent_id, version)

    def versions(self, agent_id: str) -> list[dict]:
        """Every stored version of ``agent_id``, oldest first: ``{version, config, created}``."""
        return self._sync("versions", self._op_versions, agent_id)

    def history(self, agent_id: str) -> list[dict]:
        """Every move of the active pointer, oldest first:
        ``{version, previous, action, ts}`` where ``action`` is ``apply``, ``rollback``,
        ``set`` or ``activate``."""
        return self._sync("history", self._op_history, agent_id)

    # -- async twins ------------------------------------------------------------------------
    async def aget_config(self, agent_id: str) -> dict:
        """Async twin of :meth:`get_config`."""
        return await self._async(self._op_get_config, agent_id)

    async def aapply_config(self, agent_id: str, config_patch: dict) -> bool:
        """Async twin of :meth:`apply_config`."""
        self._check_patch(config_patch)
        return await self._async(self._op_apply, agent_id, dict(config_patch), write=True)

    async def arollback_config(self, agent_id: str, backup_config: dict) -> None:
        """Async twin of :meth:`rollback_config`."""
        await self._async(self._op_activate, agent_id, copy.deepcopy(dict(backup_config)), "rollback", write=True)

    async def aset_config(self, agent_id: str, config: dict) -> str:
        """Async twin of :meth:`set_config`."""
        return await self._async(self._op_activate, agent_id, copy.deepcopy(dict(config)), "set", write=True)

    async def aactivate(self, agent_id: str, version: str) -> dict:
        """Async twin of :meth:`activate`."""
        return await self._async(self._op_pin, agent_id, version, write=True)

    async def aactive_version(self, agent_id: str) -> str | None:
        """Async twin of :meth:`active_version`."""
        return (await self._async(self._op_active, agent_id)).get("version")

    async def aversion_config(self, agent_id: str, version: str) -> dict | None:
        """Async twin of :meth:`version_config`."""
        return await self._async(self._op_version_config, agent_id, version)

    async def aversions(self, agent_id: str) -> list[dict]:
        """Async twin of :meth:`versions`."""
        return await self._async(self._op_versions, agent_id)

    async def ahistory(self, agent_id: str) -> list[dict]:
        """Async twin of :meth:`history`."""
        return await self._async(self._op_history, agent_id)

    # -- reading without blocking -----------------------------------------------------------
    def config_for(self, agent_id: str, version: str | None = None) -> dict | None:
        """The active config of ``agent_id`` (or the config of its stored ``version``),
        safe to call anywhere, the event loop thread of an async-only store included: it
        never blocks that loop and never raises.

        It answers from a cache every read and write of this adapter fills (an active
        config for ``cache_ttl`` seconds, a version for good: versions are immutable).
        On a miss, or a stale active config, it reads the store where a sync read may run;
        on the loop thread of an async-only store it schedules the read on the loop and
        answers with what it has (a stale active config, else ``None``). An async app can
        warm the cache with ``await adapter.aget_config(target)``.
        """
        try:
            if version is not None:
                config = self._version_cache.get((agent_id, version))
                if config is None:
                    config = self._read_soon(self._op_version_config, agent_id, version)
                return None if config is None or config is _PENDING else copy.deepcopy(config)
            entry = self._active_cache.get(agent_id)
            if entry is not None and time.monotonic() - entry[0] <= self.cache_ttl:
                return copy.deepcopy(entry[1]["config"])
            value = self._read_soon(self._op_active, agent_id)
            if value is _PENDING:
                return None if entry is None else copy.deepcopy(entry[1]["config"])
            return copy.deepcopy(value["config"])
        except Exception as exc:  # fail open: a node reading its config never breaks
            from sil_core.integration import report

            report("store_adapter.config_for", exc)
            return None

    def _read_soon(self, op: Any, *args: Any) -> Any:
        """``op`` read now where a sync read may run, else scheduled on this thread's loop
        (once per ``(op, args)`` at a time) and :data:`_PENDING` returned."""
        running = _running_loop()
        if running is None or not self._async_only:
            try:
                return self._sync(op.__name__, op, *args)
            except AsyncStoreError:
                if running is None:
                    raise
        key = (op.__name__,) + args
        if key not in self._refreshing:
            task = running.create_task(self._async(op, *args))
            self._refreshing[key] = task
            task.add_done_callback(lambda t, key=key: self._refreshed(key, t))
        return _PENDING

    def _refreshed(self, key: Any, task: Any) -> None:
        self._refreshing.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            from sil_core.integration import report

            report("store_adapter.refresh", task.exception())

    # -- dispatch ---------------------------------------------------------------------------
    def _sync(self, name: str, op: Any, *args: Any, write: bool = False) -> Any:
        """Run ``op`` for a sync method: over the store's sync API, or (an async-only store)
        on the store's event loop."""
        if write:
            self._acquire(name)
        try:
            if not self._async_only:
                try:
                    return _drive(op(self._sio, *args))
                except (asyncio.InvalidStateError, NotImplementedError):
                    self._async_only = True  # the store refuses sync calls (here, at least)
            return self._on_store_loop(name, op, *args)
        finally:
            if write:
                self._lock.release()

    def _acquire(self, name: str) -> None:
        if _running_loop() is not None:  # never block a loop whose coroutine may hold the lock
            if self._lock.acquire(blocking=False):
                return
            raise AsyncStoreError(f"{type(self).__name__}.{name}() on an event loop thread while a coroutine of "
                                  f"this adapter is writing: use `await adapter.a{name}(...)`")
        if not self._lock.acquire(timeout=self.timeout):
            raise TimeoutError(f"{type(self).__name__}.{name}() waited {self.timeout}s for another writer")

    def _store_loop(self) -> asyncio.AbstractEventLoop | None:
        if self.loop is not None:
            return self.loop
        own = getattr(self.store, "loop", None)  # AsyncPostgresStore, AsyncSqliteStore
        return own if isinstance(own, asyncio.AbstractEventLoop) else self._seen_loop

    def _on_store_loop(self, name: str, op: Any, *args: Any) -> Any:
        running, loop = _running_loop(), self._store_loop()
        if running is not None and (loop is None or loop is running or not loop.is_running()):
            raise AsyncStoreError(
                f"{type(self).__name__}.{name}() was called on the event loop thread of its async-only store "
                f"({type(self.store).__name__}), where the store refuses synchronous calls. Use "
                f"`await adapter.a{name}(...)`, or the guard's async twins (`await guard.apropose(...)`, "
                f"`apromote`, `arollback`), which run the guard's work off the loop.")
        if loop is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(op(self._aio, *args), loop)
            try:
                return future.result(self.timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise TimeoutError(f"{type(self).__name__}.{name}(): the store's event loop did not run the call "
                                   f"within {self.timeout}s (is it blocked?)") from None
        return asyncio.run(op(self._aio, *args))

    async def _async(self, op: Any, *args: Any, write: bool = False) -> Any:
        """Run ``op`` for an async twin: over the store's async API, or (a store without
        one) over its sync API on a worker thread."""
        self._seen_loop = asyncio.get_running_loop()
        if not self._sync_only:
            if write:
                await self._aacquire()
            try:
                return await op(self._aio, *args)
            except NotImplementedError:  # e.g. SqliteStore: no async API
                self._sync_only = True
            finally:
                if write:
                    self._lock.release()
        return await asyncio.to_thread(self._sync, op.__name__, op, *args, write=write)

    async def _aacquire(self) -> None:
        delay = 0.0005
        while not self._lock.acquire(blocking=False):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    @staticmethod
    def _check_patch(config_patch: Any) -> None:
        if not isinstance(config_patch, Mapping):
            raise ConfigError(f"config_patch must be a dict, not {type(config_patch).__name__}")

    # -- operations, written once over _SyncIO / _AsyncIO -----------------------------------
    async def _op_active(self, io: _SyncIO, agent_id: str) -> dict:
        item = await io.get(self._ns(agent_id), ACTIVE)
        value = {"version": None, "config": self.defaults.get(agent_id, {})} if item is None else item.value
        value = copy.deepcopy(dict(value))
        self._active_cache[agent_id] = (time.monotonic(), value)
        return value

    async def _op_get_config(self, io: _SyncIO, agent_id: str) -> dict:
        return copy.deepcopy((await self._op_active(io, agent_id))["config"])

    async def _op_apply(self, io: _SyncIO, agent_id: str, patch: dict) -> bool:
        merged = merge_patch((await self._op_active(io, agent_id))["config"], patch)
        await self._op_activate(io, agent_id, merged, "apply")
        return True

    async def _op_pin(self, io: _SyncIO, agent_id: str, version: str) -> dict:
        config = await self._op_version_config(io, agent_id, version)
        if config is None:
            raise ConfigError(f"{agent_id!r} has no stored version {version!r}")
        await self._op_activate(io, agent_id, config, "activate")
        return config

    async def _op_version_config(self, io: _SyncIO, agent_id: str, version: str) -> dict | None:
        item = await io.get(self._ns(agent_id, "versions"), version)
        if item is None:
            return None
        self._cache_version(agent_id, version, item.value["config"])
        return copy.deepcopy(item.value["config"])

    async def _op_versions(self, io: _SyncIO, agent_id: str) -> list[dict]:
        rows = [copy.deepcopy(dict(item.value)) for item in await self._op_search(io, self._ns(agent_id, "versions"))]
        return sorted(rows, key=lambda v: (v.get("created", 0.0), v.get("version", "")))

    async def _op_history(self, io: _SyncIO, agent_id: str) -> list[dict]:
        items = sorted(await self._op_search(io, self._ns(agent_id, "log")), key=lambda item: item.key)
        return [copy.deepcopy(dict(item.value)) for item in items]

    async def _op_search(self, io: _SyncIO, namespace: tuple[str, ...]) -> list[Any]:
        """Every item of exactly ``namespace`` (pages through ``search``; a key seen twice
        across pages, when a backend's order has ties, is kept once)."""
        found: dict[str, Any] = {}
        page, offset = 1000, 0
        while True:
            batch = await io.search(namespace, page, offset)
            for item in batch:
                if tuple(item.namespace) == namespace:
                    found.setdefault(item.key, item)
            if len(batch) < page:
                return list(found.values())
            offset += len(batch)

    async def _op_activate(self, io: _SyncIO, agent_id: str, config: dict, action: str) -> str:
        version = config_version(config)
        now = time.time()
        vns = self._ns(agent_id, "versions")
        if await io.get(vns, version) is None:  # versions are immutable: write once
            await io.put(vns, version, {"version": version, "config": config, "created": now})
        previous = (await self._op_active(io, agent_id)).get("version")
        value = {"version": version, "config": config, "previous": previous, "action": action, "updated": now}
        await io.put(self._ns(agent_id), ACTIVE, value)
        await io.put(self._ns(agent_id, "log"), f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}",
                     {"version": version, "previous": previous, "action": action, "ts": now})
        self._active_cache[agent_id] = (time.monotonic(), copy.deepcopy(value))
        self._cache_version(agent_id, version, config)
        return version

    def _cache_version(self, agent_id: str, version: str, config: dict) -> None:
        if (agent_id, version) in self._version_cache:
            return
        while len(self._version_cache) >= self.VERSION_CACHE:
            try:
                self._version_cache.pop(next(iter(self._version_cache)))
            except (StopIteration, KeyError, RuntimeError):  # another thread emptied it meanwhile
                break
        self._version_cache[(agent_id, version)] = copy.deepcopy(config)

    # -- for ConfigurableAdapter ------------------------------------------------------------
    def _active_value(self, agent_id: str) -> dict:
        return self._sync("get_config", self._op_active, agent_id)

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
        served = self._routed(target, key)
        if served is not None:
            return served
        return self._served_active(target, self._active_value(target))

    async def aserve(self, target: str, *, key: Any = None) -> tuple[str, str | None, dict]:
        """Async twin of :meth:`serve` (for an async store: reads it with ``aget``)."""
        served = self._routed(target, key)
        if served is not None:
            return served
        return self._served_active(target, await self._async(self._op_active, target))

    def configurable(self, target: str, *, key: Any = None) -> dict:
        """The ``configurable`` entries for one run of ``target`` (see :meth:`serve`)."""
        return self._entries(target, self.serve(target, key=key)[2])

    async def aconfigurable(self, target: str, *, key: Any = None) -> dict:
        """Async twin of :meth:`configurable`."""
        return self._entries(target, (await self.aserve(target, key=key))[2])

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
        config, configurable, metadata = self._base(base, thread_id)
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
            self._tag(configurable, metadata, target, served)
        return config

    async def arun_config(self, *targets: str, base: Mapping[str, Any] | None = None, thread_id: str | None = None,
                          key: Any = None, pin_from: Any = None) -> dict:
        """Async twin of :meth:`run_config`: reads an async store with its async API and a
        ``pin_from`` graph with ``aget_state``."""
        config, configurable, metadata = self._base(base, thread_id)
        pinned = await self._apinned(pin_from, configurable) if pin_from is not None else {}
        for target in targets:
            served = None
            version = pinned.get(version_key(target))
            if version is not None:
                cfg = await self._aconfig_of(target, version)
                if cfg is not None:
                    served = (version, pinned.get(arm_key(target)), cfg)
            if served is None:
                served = await self.aserve(target, key=key if key is not None else configurable.get("thread_id"))
            self._tag(configurable, metadata, target, served)
        return config

    # -- internals --------------------------------------------------------------------------
    def _routed(self, target: str, key: Any) -> tuple[str, str | None, dict] | None:
        """The guard's arm during a change in flight (``None`` outside one)."""
        if self.guard is not None:
            try:
                version, arm, config = self.guard.route(target, key=key)
                if arm is not None and config is not None:
                    return version, arm, config
            except Exception as exc:  # fail open: serve the active version
                from sil_core.integration import report

                report("configurable.route", exc)
        return None

    @staticmethod
    def _served_active(target: str, active: dict) -> tuple[str, None, dict]:
        config = copy.deepcopy(active["config"])
        return active.get("version") or config_version(config), None, config

    @staticmethod
    def _base(base: Mapping[str, Any] | None, thread_id: str | None) -> tuple[dict, dict, dict]:
        config: dict[str, Any] = dict(base or {})
        configurable = dict(config.get("configurable") or {})
        metadata = dict(config.get("metadata") or {})
        if thread_id is not None:
            configurable["thread_id"] = thread_id
        config["configurable"] = configurable
        config["metadata"] = metadata
        return config, configurable, metadata

    def _tag(self, configurable: dict, metadata: dict, target: str, served: tuple) -> None:
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

    def _entries(self, target: str, config: dict) -> dict:
        config = copy.deepcopy(config)
        return {self.nest: {target: config}} if self.nest else config

    def _config_of(self, target: str, version: str) -> dict | None:
        config = self.version_config(target, version)
        return self._guard_version(target, version) if config is None else config

    async def _aconfig_of(self, target: str, version: str) -> dict | None:
        config = await self.aversion_config(target, version)
        return self._guard_version(target, version) if config is None else config

    def _guard_version(self, target: str, version: str) -> dict | None:
        if self.guard is None:
            return None
        try:
            from sil_core.versions import get_version

            return get_version(self.guard.store, target, version)
        except Exception:
            return None

    def _pinned(self, graph: Any, configurable: dict) -> dict:
        """The version tags of a thread paused mid-run (from its checkpoint metadata)."""
        if "thread_id" not in configurable:
            return {}
        try:
            snapshot = graph.get_state({"configurable": {"thread_id": configurable["thread_id"]}})
        except Exception:
            return {}
        return self._pins(snapshot)

    async def _apinned(self, graph: Any, configurable: dict) -> dict:
        if "thread_id" not in configurable:
            return {}
        try:
            snapshot = await graph.aget_state({"configurable": {"thread_id": configurable["thread_id"]}})
        except Exception:
            return {}
        return self._pins(snapshot)

    @staticmethod
    def _pins(snapshot: Any) -> dict:
        if snapshot is None or not snapshot.next:  # finished (or new) thread: serve the current version
            return {}
        return {k: v for k, v in (snapshot.metadata or {}).items() if isinstance(k, str) and k.startswith("sil_")}
