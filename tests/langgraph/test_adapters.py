"""StoreConfigAdapter and ConfigurableAdapter: the ConfigAdapter contract over a LangGraph
BaseStore (InMemoryStore, SqliteStore, PostgresStore) and per-run ``configurable``."""

import asyncio
import random
import uuid
from typing import TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, interrupt

from sil_core import ConfigAdapter, ConfigError, Guard, RolloutPolicy, State, config_version
from sil_langgraph.adapters import ConfigurableAdapter, StoreConfigAdapter, arm_key, version_key
from sil_langgraph.callbacks import GuardCallbackHandler
from tests.conftest import PG_BASE, require_pg


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def lg_store(request, tmp_path):
    """A LangGraph store of each backend (PostgresStore in a throwaway schema)."""
    if request.param == "memory":
        yield InMemoryStore()
        return
    if request.param == "sqlite":
        from langgraph.store.sqlite import SqliteStore

        with SqliteStore.from_conn_string(str(tmp_path / "store.db")) as store:
            store.setup()
            yield store
        return
    require_pg()
    import psycopg
    from langgraph.store.postgres import PostgresStore

    schema = f"sil_lg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_BASE else "?"
    try:
        with PostgresStore.from_conn_string(f"{PG_BASE}{sep}options=-csearch_path%3D{schema}") as store:
            store.setup()
            yield store
    finally:
        with psycopg.connect(PG_BASE, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def adapter(lg_store):
    return StoreConfigAdapter(lg_store, defaults={"writer": {"prompt": "v1", "temperature": 0.2}})


# -- the contract ---------------------------------------------------------------------------
def test_is_a_config_adapter(adapter):
    assert isinstance(adapter, ConfigAdapter)


def test_get_config_defaults_before_any_version(adapter):
    assert adapter.get_config(agent_id="writer") == {"prompt": "v1", "temperature": 0.2}
    assert adapter.get_config(agent_id="unknown") == {}
    assert adapter.active_version("writer") is None
    assert adapter.versions("writer") == [] and adapter.history("writer") == []


def test_apply_merges_stores_a_version_and_moves_the_pointer(adapter, lg_store):
    assert adapter.apply_config(agent_id="writer", config_patch={"prompt": "v2"}) is True
    assert adapter.get_config(agent_id="writer") == {"prompt": "v2", "temperature": 0.2}
    version = config_version({"prompt": "v2", "temperature": 0.2})
    assert adapter.active_version("writer") == version
    # the layout documented in the module: an active pointer and an immutable version item
    assert lg_store.get(("sil", "config", "writer"), "active").value["version"] == version
    assert lg_store.get(("sil", "config", "writer", "versions"), version).value["config"] == {
        "prompt": "v2", "temperature": 0.2}


def test_rollback_restores_exactly_and_reuses_the_stored_version(adapter):
    baseline = adapter.get_config("writer")
    adapter.set_config("writer", baseline)
    adapter.apply_config("writer", {"prompt": "v2", "extra": [1, 2]})
    adapter.rollback_config(agent_id="writer", backup_config=baseline)
    assert adapter.get_config("writer") == baseline
    assert adapter.active_version("writer") == config_version(baseline)
    assert len(adapter.versions("writer")) == 2  # the baseline's version was reused, not duplicated
    assert [(h["action"], h["version"]) for h in adapter.history("writer")] == [
        ("set", config_version(baseline)),
        ("apply", config_version({**baseline, "prompt": "v2", "extra": [1, 2]})),
        ("rollback", config_version(baseline)),
    ]
    assert adapter.history("writer")[-1]["previous"] == adapter.history("writer")[1]["version"]


def test_versions_are_immutable_and_activate_pins_one(adapter):
    adapter.apply_config("writer", {"prompt": "a"})
    first = adapter.active_version("writer")
    created = adapter.versions("writer")[0]["created"]
    adapter.apply_config("writer", {"prompt": "b"})
    adapter.apply_config("writer", {"prompt": "a"})  # same content: same version, not rewritten
    assert [v["version"] for v in adapter.versions("writer")] == [first, config_version({"prompt": "b", "temperature": 0.2})]
    assert adapter.versions("writer")[0]["created"] == created
    assert adapter.activate("writer", config_version({"prompt": "b", "temperature": 0.2})) == {
        "prompt": "b", "temperature": 0.2}
    assert adapter.get_config("writer")["prompt"] == "b"
    with pytest.raises(ConfigError):
        adapter.activate("writer", "v000000000000")


def test_targets_are_isolated_and_may_contain_dots(adapter):
    adapter.apply_config("team.writer", {"prompt": "dotted"})
    adapter.apply_config("team%2Ewriter", {"prompt": "escaped"})
    assert adapter.get_config("team.writer") == {"prompt": "dotted"}
    assert adapter.get_config("team%2Ewriter") == {"prompt": "escaped"}
    assert adapter.get_config("writer")["prompt"] == "v1"


def test_history_pages_past_the_store_search_limit(adapter):
    for i in range(25):
        adapter.apply_config("writer", {"i": i})
    assert len(adapter.history("writer")) == 25
    assert len(adapter.versions("writer")) == 25
    assert [h["action"] for h in adapter.history("writer")] == ["apply"] * 25
    assert adapter.get_config("writer")["i"] == 24


def test_returned_configs_are_copies(adapter):
    config = adapter.get_config("writer")
    config["prompt"] = "mutated"
    assert adapter.get_config("writer")["prompt"] == "v1"


def test_bad_arguments():
    with pytest.raises(ConfigError):
        StoreConfigAdapter(None)
    with pytest.raises(ConfigError):
        StoreConfigAdapter(InMemoryStore(), namespace=("langgraph", "x"))
    with pytest.raises(ConfigError):
        StoreConfigAdapter(InMemoryStore(), namespace=("a.b",))
    with pytest.raises(ConfigError):
        StoreConfigAdapter(InMemoryStore()).get_config("")


def test_aget_config(lg_store):
    adapter = StoreConfigAdapter(lg_store, defaults={"w": {"p": 1}})
    assert asyncio.run(adapter.aget_config("w")) == {"p": 1}
    adapter.apply_config("w", {"p": 2})
    assert asyncio.run(adapter.aget_config("w")) == {"p": 2}


# -- with the guard ---------------------------------------------------------------------------
def test_the_guard_applies_and_rolls_back_through_the_store(adapter):
    guard = Guard("memory://", adapter=adapter, flush_interval=60, refresh_interval=0)
    try:
        baseline = adapter.get_config("writer")
        guard.propose("writer", {"prompt": "v2"}, mode="switch")
        assert adapter.get_config("writer")["prompt"] == "v2"
        assert guard.rollback("writer") is True
        assert adapter.get_config("writer") == baseline
        assert [h["action"] for h in adapter.history("writer")] == ["apply", "rollback"]
    finally:
        guard.close()


def test_a_node_reads_its_config_from_the_graph_store(lg_store):
    adapter = StoreConfigAdapter(lg_store)
    adapter.set_config("writer", {"prompt": "v1"})

    class State(TypedDict, total=False):
        text: str

    def writer(state: State, *, store: BaseStore):
        return {"text": StoreConfigAdapter(store).get_config("writer")["prompt"]}

    builder = StateGraph(State)
    builder.add_node("writer", writer)
    builder.add_edge(START, "writer")
    graph = builder.compile(store=lg_store)
    assert graph.invoke({})["text"] == "v1"
    adapter.apply_config("writer", {"prompt": "v2"})
    assert graph.invoke({})["text"] == "v2"
    adapter.rollback_config("writer", {"prompt": "v1"})
    assert graph.invoke({})["text"] == "v1"


# -- ConfigurableAdapter ----------------------------------------------------------------------
class WState(TypedDict, total=False):
    topic: str
    draft: str
    approved: str


def writer_node(state: WState, config: RunnableConfig):
    return {"draft": f"{config['configurable']['prompt']}: {state['topic']}"}


def build_writer_graph(checkpointer=None, *, ask=False):
    b = StateGraph(WState)
    b.add_node("writer", writer_node)
    b.add_edge(START, "writer")
    if ask:
        def approve(state: WState):
            return {"approved": interrupt({"draft": state["draft"]})}

        b.add_node("approve", approve)
        b.add_edge("writer", "approve")
        b.add_edge("approve", END)
    else:
        b.add_edge("writer", END)
    return b.compile(checkpointer=checkpointer)


def test_configurable_is_the_flat_config_a_node_reads():
    adapter = ConfigurableAdapter({"writer": {"prompt": "Be brief"}})
    graph = build_writer_graph()
    assert adapter.configurable("writer") == {"prompt": "Be brief"}
    out = graph.invoke({"topic": "tea"}, {"configurable": adapter.configurable("writer")})
    assert out["draft"] == "Be brief: tea"
    assert adapter.apply_config("writer", {"prompt": "Be verbose"}) is True
    assert graph.invoke({"topic": "tea"}, adapter.run_config("writer"))["draft"] == "Be verbose: tea"
    adapter.rollback_config("writer", {"prompt": "Be brief"})
    assert graph.invoke({"topic": "tea"}, adapter.run_config("writer"))["draft"] == "Be brief: tea"


def test_run_config_merges_base_and_tags_the_version():
    adapter = ConfigurableAdapter({"writer": {"prompt": "p"}, "critic": {"strict": True}}, nest="sil")
    cfg = adapter.run_config("writer", "critic", thread_id="t1",
                             base={"tags": ["x"], "configurable": {"user": "u"}, "metadata": {"a": 1}})
    assert cfg["tags"] == ["x"]
    assert cfg["configurable"] == {"user": "u", "thread_id": "t1",
                                   "sil": {"writer": {"prompt": "p"}, "critic": {"strict": True}}}
    assert cfg["metadata"] == {"a": 1, version_key("writer"): config_version({"prompt": "p"}),
                               version_key("critic"): config_version({"strict": True})}


def test_version_tags_land_in_checkpoint_metadata():
    saver = InMemorySaver()
    adapter = ConfigurableAdapter({"writer": {"prompt": "p1"}})
    graph = build_writer_graph(saver)
    graph.invoke({"topic": "a"}, adapter.run_config("writer", thread_id="t1"))
    adapter.apply_config("writer", {"prompt": "p2"})
    graph.invoke({"topic": "b"}, adapter.run_config("writer", thread_id="t2"))
    v2 = adapter.active_version("writer")
    threads = {c.config["configurable"]["thread_id"] for c in saver.list(None, filter={version_key("writer"): v2})}
    assert threads == {"t2"}


def test_a_paused_thread_is_resumed_with_the_version_it_started_with():
    """The human approved a v1 draft; the resumed run must not use v2."""
    adapter = ConfigurableAdapter({"writer": {"prompt": "v1"}})
    graph = build_writer_graph(InMemorySaver(), ask=True)
    first = graph.invoke({"topic": "tea"}, adapter.run_config("writer", thread_id="t", pin_from=graph))
    assert first["__interrupt__"][0].value == {"draft": "v1: tea"}
    adapter.apply_config("writer", {"prompt": "v2"})  # the config moves while the human reads
    resumed = graph.invoke(Command(resume="yes"), adapter.run_config("writer", thread_id="t", pin_from=graph))
    assert resumed["draft"] == "v1: tea" and resumed["approved"] == "yes"
    # a new thread, or a new run on a finished thread, gets the active version
    fresh = graph.invoke({"topic": "tea"}, adapter.run_config("writer", thread_id="t2", pin_from=graph))
    assert fresh["__interrupt__"][0].value == {"draft": "v2: tea"}
    again = graph.invoke({"topic": "tea"}, adapter.run_config("writer", thread_id="t", pin_from=graph))
    assert again["__interrupt__"][0].value == {"draft": "v2: tea"}


def test_shared_between_workers_through_a_store(lg_store):
    one = ConfigurableAdapter({"writer": {"prompt": "p1"}}, store=lg_store)
    two = ConfigurableAdapter({"writer": {"prompt": "p1"}}, store=lg_store)
    one.apply_config("writer", {"prompt": "p2"})
    assert two.configurable("writer") == {"prompt": "p2"}


def test_a_canary_is_served_per_run_recorded_per_arm_and_rolled_back():
    random.seed(7)
    adapter = ConfigurableAdapter({"writer": {"prompt": "good"}})
    guard = Guard("memory://", adapter=adapter, policy=RolloutPolicy(min_calls=20, step_calls=20, horizon=400),
                  flush_interval=60, refresh_interval=0)
    adapter.bind(guard)
    try:
        def writer(state: WState, config: RunnableConfig):
            if config["configurable"]["prompt"] == "bad":
                raise RuntimeError("garbage")
            return {"draft": "fine"}

        b = StateGraph(WState)
        b.add_node("writer", writer)
        b.add_edge(START, "writer")
        graph = b.compile().with_config(callbacks=[GuardCallbackHandler(guard)])
        guard.propose("writer", {"prompt": "bad"}, mode="canary")
        served = set()
        for i in range(400):
            cfg = adapter.run_config("writer", key=f"user-{i}")
            served.add(cfg["configurable"]["prompt"])
            try:
                graph.invoke({"topic": "t"}, cfg)
            except RuntimeError:
                pass
            if i % 20 == 19:
                guard.evaluate("writer")
                if guard.change("writer").state == State.ROLLED_BACK:
                    break
        assert served == {"good", "bad"}
        guard.flush()
        arms = {r.arm for r in guard.store.read_calls("writer")}
        assert arms == {"baseline", "candidate"}
        change = guard.change("writer")
        assert change.state == State.ROLLED_BACK
        # after the rollback every run gets the baseline again
        assert {adapter.run_config("writer", key=f"u{i}")["configurable"]["prompt"] for i in range(50)} == {"good"}
        assert adapter.get_config("writer") == {"prompt": "good"}
    finally:
        guard.close()


def test_configurable_adapter_tags_the_arm_only_during_a_change():
    adapter = ConfigurableAdapter({"writer": {"prompt": "p"}})
    assert arm_key("writer") not in adapter.run_config("writer")["metadata"]


def test_missing_langgraph_raises_missing_extra(monkeypatch):
    import sys

    from sil_core import MissingExtra

    monkeypatch.setitem(sys.modules, "langgraph.store.memory", None)
    with pytest.raises(MissingExtra, match=r"sil-guard\[langgraph\]"):
        ConfigurableAdapter({"w": {}})
    # with a store given, nothing needs importing
    assert ConfigurableAdapter({"w": {"a": 1}}, store=InMemoryStore()).configurable("w") == {"a": 1}
