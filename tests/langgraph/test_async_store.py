"""StoreConfigAdapter over async stores (AsyncPostgresStore, and stores whose sync API
refuses to run in the event loop), driven from an asyncio app: propose (canary, switch),
route, promote, rollback, the async twins, and config_for on the loop."""

import asyncio
import contextlib
import threading
import uuid

import pytest
from langgraph.store.memory import InMemoryStore

from sil_core import Guard, State
from sil_langgraph.adapters import AsyncStoreError, StoreConfigAdapter
from tests.conftest import PG_BASE, require_pg


class LoopBoundStore(InMemoryStore):
    """An async-only store: its sync API refuses to run on the event loop thread it was
    made on (like LangGraph's AsyncBatchedBaseStore) and, from other threads, is not
    implemented at all (like many third-party async stores)."""

    def __init__(self) -> None:
        super().__init__()
        self.made_on = asyncio.get_running_loop()
        self.sync_calls = 0

    def batch(self, ops):
        self.sync_calls += 1
        try:
            if asyncio.get_running_loop() is self.made_on:
                raise asyncio.InvalidStateError("Synchronous calls to LoopBoundStore detected in the main event loop")
        except RuntimeError:
            pass
        raise NotImplementedError("LoopBoundStore is async-only")


@contextlib.asynccontextmanager
async def postgres_store():
    require_pg()
    import psycopg
    from langgraph.store.postgres import AsyncPostgresStore

    schema = f"sil_lga_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_BASE else "?"
    try:
        async with AsyncPostgresStore.from_conn_string(f"{PG_BASE}{sep}options=-csearch_path%3D{schema}") as store:
            await store.setup()
            yield store
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def make_store(kind):
    if kind == "postgres":
        async with postgres_store() as store:
            yield store
    elif kind == "loop-bound":
        yield LoopBoundStore()
    else:
        yield InMemoryStore()


KINDS = ["memory", "loop-bound", "postgres"]


@pytest.mark.parametrize("kind", KINDS)
def test_async_twins(kind):
    async def main():
        async with make_store(kind) as store:
            adapter = StoreConfigAdapter(store, defaults={"w": {"p": 1, "t": 0.2}})
            assert await adapter.aget_config("w") == {"p": 1, "t": 0.2}
            assert await adapter.aapply_config("w", {"p": 2}) is True
            assert await adapter.aget_config("w") == {"p": 2, "t": 0.2}
            v2 = await adapter.aactive_version("w")
            await adapter.arollback_config("w", {"p": 1, "t": 0.2})
            assert await adapter.aget_config("w") == {"p": 1, "t": 0.2}
            assert [h["action"] for h in await adapter.ahistory("w")] == ["apply", "rollback"]
            assert len(await adapter.aversions("w")) == 2
            assert await adapter.aactivate("w", v2) == {"p": 2, "t": 0.2}
            assert await adapter.aversion_config("w", v2) == {"p": 2, "t": 0.2}
            # the sync API from a thread other than the loop's runs on the store's loop
            assert await asyncio.to_thread(adapter.get_config, "w") == {"p": 2, "t": 0.2}
            await asyncio.to_thread(adapter.rollback_config, "w", {"p": 3})
            assert await adapter.aget_config("w") == {"p": 3}
            assert (await asyncio.to_thread(adapter.history, "w"))[-1]["action"] == "rollback"
    asyncio.run(main())


@pytest.mark.parametrize("kind", ["loop-bound", "postgres"])
def test_a_sync_call_on_the_loop_says_to_await_the_twin(kind):
    async def main():
        async with make_store(kind) as store:
            adapter = StoreConfigAdapter(store, defaults={"w": {"p": 1}})
            with pytest.raises(AsyncStoreError, match=r"await adapter\.aget_config"):
                adapter.get_config("w")
            with pytest.raises(AsyncStoreError, match=r"await adapter\.aapply_config"):
                adapter.apply_config("w", {"p": 2})
            guard = Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0)
            try:
                change = guard.propose("w", {"p": 2}, mode="switch")  # sync, on the loop
                assert change.state == State.REJECTED and "apropose" in change.reason
            finally:
                await guard.aclose()
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["canary", "switch"])
def test_propose_route_promote_and_rollback_from_an_asyncio_app(kind, mode):
    async def main():
        async with make_store(kind) as store:
            adapter = StoreConfigAdapter(store, defaults={"w": {"p": "v1"}})
            guard = Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0)
            try:
                change = await guard.apropose("w", {"p": "v2"}, mode=mode)
                assert change.state == (State.CANARY if mode == "canary" else State.SWITCHED), change.reason
                served = {guard.route("w", key=f"user-{i}")[2]["p"] for i in range(200)}
                assert served == ({"v1", "v2"} if mode == "canary" else {"v2"})
                assert await adapter.aget_config("w") == {"p": "v1" if mode == "canary" else "v2"}
                assert await guard.apromote("w") is True
                assert await adapter.aget_config("w") == {"p": "v2"}
                assert {guard.route("w", key=f"u{i}")[2]["p"] for i in range(50)} == {"v2"}

                change = await guard.apropose("w", {"p": "v3"}, mode=mode)
                assert change.state in (State.CANARY, State.SWITCHED), change.reason
                assert await guard.arollback("w", reason="test") is True
                assert await adapter.aget_config("w") == {"p": "v2"}
                assert (await guard.achange("w")).state == State.ROLLED_BACK
                actions = [h["action"] for h in await adapter.ahistory("w")]
                # a canary applies only when promoted; its rollback leaves the adapter alone
                assert actions == (["apply"] if mode == "canary" else ["apply", "apply", "rollback"])
            finally:
                await guard.aclose()
    asyncio.run(main())


@pytest.mark.parametrize("kind", ["loop-bound", "postgres"])
def test_a_background_thread_rolls_back_while_the_loop_runs(kind):
    """What the guard's own threads do during an automatic rollback: sync adapter calls
    from a thread that is not the loop's, while the app keeps awaiting."""
    async def main():
        async with make_store(kind) as store:
            adapter = StoreConfigAdapter(store, defaults={"w": {"p": "v1"}})
            await adapter.aapply_config("w", {"p": "v2"})
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            errors = []

            def worker():
                try:
                    adapter.rollback_config("w", {"p": "v1"})
                    assert adapter.get_config("w") == {"p": "v1"}
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    loop.call_soon_threadsafe(done.set)

            threading.Thread(target=worker).start()
            ticks = 0
            while not done.is_set():  # the loop is never blocked meanwhile
                await asyncio.sleep(0.001)
                ticks += 1
            assert errors == [] and await adapter.aget_config("w") == {"p": "v1"}
    asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_config_for_never_blocks_the_loop(kind):
    async def main():
        async with make_store(kind) as store:
            adapter = StoreConfigAdapter(store, defaults={"w": {"p": 1}}, cache_ttl=60)
            v = await adapter.aset_config("w", {"p": 2})  # fills the cache
            assert adapter.config_for("w") == {"p": 2}
            assert adapter.config_for("w", v) == {"p": 2}
            other = StoreConfigAdapter(store, cache_ttl=60)  # a cold cache
            first = other.config_for("w")
            if kind == "memory":
                assert first == {"p": 2}  # a sync store is read on the spot
            else:
                assert first is None  # the read is scheduled on the loop ...
                await asyncio.sleep(0.05)
                for _ in range(100):
                    if other.config_for("w") is not None:
                        break
                    await asyncio.sleep(0.01)
                assert other.config_for("w") == {"p": 2}  # ... and answered once it is in
    asyncio.run(main())


def test_without_a_running_loop_an_async_only_store_runs_in_asyncio_run():
    store = asyncio.run(_make_loop_bound())
    adapter = StoreConfigAdapter(store, defaults={"w": {"p": 1}})
    assert adapter.apply_config("w", {"p": 2}) is True
    assert adapter.get_config("w") == {"p": 2}
    assert adapter.config_for("w") == {"p": 2}


async def _make_loop_bound():
    return LoopBoundStore()
