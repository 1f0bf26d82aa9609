"""``SharedConfigAdapter``: one config per target for every worker, host and restart.

The contract on every store backend, then the motivating scenario in four real processes
(spawn) on SQLite and PostgreSQL: a promotion on worker A is seen by B..D, a rollback on B
restores the promoted config, and a fresh process starts with it. The same scenario with
``DictConfigAdapter`` shows what goes wrong without it.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import threading
import time
from types import SimpleNamespace

import pytest

from sil_core import (
    ConfigError, DictConfigAdapter, Guard, SharedConfigAdapter, State, config_version, current_call, open_store,
)
from sil_core.adapters import adapter_from_spec, merge_patch
from sil_core.shared_adapter import _locator
from sil_core.versions import get_version

from ..conftest import store_url

ORIGINAL = {"prompt": "Write a short, sourced answer.", "model": "m1", "temperature": 0.2}
PROMOTE = {"model": "m2"}
PROMOTED = merge_patch(ORIGINAL, PROMOTE)
NEXT = {"prompt": "Write a long answer."}
V_ORIGINAL, V_PROMOTED = config_version(ORIGINAL), config_version(PROMOTED)


def shared_guard(url_or_store, defaults=None, **options) -> Guard:
    """A Guard whose adapter keeps configs in the guard's own store (the usual way)."""
    guard = Guard(url_or_store, **options)
    guard.adapter = SharedConfigAdapter(guard.store, {"bot": ORIGINAL} if defaults is None else defaults)
    return guard


def same_store(url, store):
    """Another connection to ``store`` (the same object for ``memory://``, one process only)."""
    return store if url == "memory://" else open_store(url)


# -- the contract, on every backend ---------------------------------------------------------
def test_get_apply_rollback_and_version_ids_on_every_backend(url, store):
    adapter = SharedConfigAdapter(store, defaults={"bot": ORIGINAL})
    assert adapter.get_config("bot") == ORIGINAL
    assert adapter.active_version("bot") == V_ORIGINAL
    assert get_version(store, "bot", V_ORIGINAL) == ORIGINAL  # the guard's version rows, the guard's ids
    assert adapter.get_config("nobody") == {} and adapter.active_version("nobody") is None

    assert adapter.apply_config("bot", {"model": "m2", "tools": ["search"]}) is True
    applied = merge_patch(ORIGINAL, {"model": "m2", "tools": ["search"]})
    assert adapter.get_config("bot") == applied and adapter.active_version("bot") == config_version(applied)
    other = same_store(url, store)
    try:  # another connection (another worker) reads the same config and version
        seen = SharedConfigAdapter(other, defaults={"bot": {"prompt": "a different default"}})
        assert seen.get_config("bot") == applied and seen.active_version("bot") == config_version(applied)
        seen.rollback_config("bot", ORIGINAL)  # exactly this config: the added key is gone
    finally:
        if other is not store:
            other.close()
    assert adapter.get_config("bot") == ORIGINAL and adapter.active_version("bot") == V_ORIGINAL
    assert [(m["action"], m["from"], m["to"]) for m in adapter.history("bot")] == [
        ("seed", None, V_ORIGINAL), ("apply", V_ORIGINAL, config_version(applied)),
        ("rollback", config_version(applied), V_ORIGINAL)]
    assert {m["seq"] for m in adapter.history("bot")} == {1, 2, 3}
    assert all(m["by"] and m["ts"] > 0 for m in adapter.history("bot"))
    assert {v["version"] for v in adapter.versions("bot")} == {V_ORIGINAL, config_version(applied)}

    adapter.rollback_config("bot", ORIGINAL)  # already active: no move
    assert adapter.apply_config("bot", {"model": "m1"}) is True  # changes nothing: no move
    assert len(adapter.history("bot")) == 3
    with pytest.raises(ConfigError):
        adapter.apply_config("bot", ["not", "a", "dict"])
    with pytest.raises(ConfigError):
        adapter.rollback_config("bot", {"when": object()})  # not JSON: refused, nothing moved
    assert adapter.get_config("bot") == ORIGINAL


def test_the_guard_and_the_adapter_name_the_same_versions(url, store):
    guard = shared_guard(store)
    try:
        change = guard.propose("bot", PROMOTE, mode="switch")
        assert change.state in (State.CANARY, State.SWITCHED)
        assert (change.baseline_version, change.candidate_version) == (V_ORIGINAL, V_PROMOTED)
        assert guard.adapter.active_version("bot") == V_PROMOTED
        with guard.call("bot") as call:
            assert call.version == V_PROMOTED and call.config == PROMOTED
        assert guard.rollback("bot")
        assert guard.change("bot").state == State.ROLLED_BACK
        assert guard.adapter.get_config("bot") == ORIGINAL and guard.adapter.active_version("bot") == V_ORIGINAL
        assert [v["version"] for v in guard.versions("bot")] == [V_ORIGINAL, V_PROMOTED]
    finally:
        guard.close()


def test_the_history_is_bounded(store):
    adapter = SharedConfigAdapter(store, defaults={"bot": {"n": 0}}, history_size=3)
    for n in range(1, 6):
        adapter.apply_config("bot", {"n": n})
    moves = adapter.history("bot")
    assert [m["seq"] for m in moves] == [4, 5, 6] and moves[-1]["to"] == config_version({"n": 5})
    assert adapter.set_config("bot", {"n": 0}) == config_version({"n": 0})  # back to a stored version
    assert [m["action"] for m in adapter.history("bot")] == ["apply", "apply", "set"]
    assert adapter.get_config("bot") == {"n": 0} and len(adapter.versions("bot")) == 6


def test_workers_starting_together_seed_once_and_concurrent_applies_lose_nothing(url, store):
    threads, per_thread = 6, 4
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        own = same_store(url, store)
        try:
            barrier.wait()
            adapter = SharedConfigAdapter(own, defaults={"bot": {"seeded_by": i}})
            for j in range(per_thread):
                assert adapter.apply_config("bot", {f"w{i}-{j}": j}) is True
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            if own is not store:
                own.close()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors
    config = SharedConfigAdapter(store).get_config("bot")
    assert {k for k in config if k.startswith("w")} == {f"w{i}-{j}" for i in range(threads) for j in range(per_thread)}
    moves = SharedConfigAdapter(store).history("bot")
    assert [m["action"] for m in moves].count("seed") == 1
    assert [m["seq"] for m in moves] == list(range(1, threads * per_thread + 2))  # every move, once, in order
    assert all(a["to"] == b["from"] for a, b in zip(moves, moves[1:]))  # a chain: no move was lost


def test_reads_inside_a_guarded_call_are_cached_for_cache_s_and_other_reads_are_fresh(url, store):
    reader = SharedConfigAdapter(store, defaults={"bot": ORIGINAL}, cache_s=1.0)
    other = same_store(url, store)
    writer = SharedConfigAdapter(other)
    try:
        with Guard("memory://") as calls:
            cached_at = time.monotonic()
            assert reader.get_config("bot") == ORIGINAL  # outside a call: read now, and cached
            with calls.call("agent"):
                assert current_call() is not None
                writer.apply_config("bot", PROMOTE)
                assert reader.get_config("bot") == ORIGINAL  # the hot path: cached, at most cache_s old
                while reader.get_config("bot") != PROMOTED and time.monotonic() < cached_at + 3:
                    time.sleep(0.01)
                assert reader.get_config("bot") == PROMOTED and 1.0 <= time.monotonic() - cached_at <= 1.0 + 0.5
                writer.rollback_config("bot", ORIGINAL)
            assert reader.get_config("bot") == ORIGINAL  # outside a call: read now (a proposal's baseline)
    finally:
        if other is not store:
            other.close()
    uncached = SharedConfigAdapter(store, cache_s=0)
    with Guard("memory://") as calls, calls.call("agent"):
        uncached.get_config("bot")
        SharedConfigAdapter(store).apply_config("bot", PROMOTE)
        assert uncached.get_config("bot") == PROMOTED


# -- rebuilding it elsewhere: spec, from_spec, the CLI ------------------------------------------
def test_the_spec_names_the_store_without_its_password():
    pg = SimpleNamespace(url="postgresql://sil:s3cr%40t@db.internal:5432/prod?sslmode=require&password=x",
                         schema="public")
    assert _locator(pg) == "postgresql://sil@db.internal:5432/prod?sslmode=require&schema=public"
    assert "s3cr" not in json.dumps(SharedConfigAdapter.spec(SimpleNamespace(store=pg, cache_s=0.5, history_size=9)))
    assert _locator(SimpleNamespace(url="postgresql://sil@h/db?schema=sil", schema="sil")) == \
        "postgresql://sil@h/db?schema=sil"


def test_from_spec_reuses_the_store_it_was_read_from_or_opens_it_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///configs.db"  # relative: the spec must still work from another folder
    with Guard(url) as guard:
        guard.adapter = SharedConfigAdapter(guard.store, defaults={"bot": ORIGINAL}, cache_s=0.2)
        spec = guard.adapter.spec()
        assert spec["url"] == f"sqlite:///{tmp_path / 'configs.db'}" and spec["cache_s"] == 0.2
        assert adapter_from_spec(spec, store=guard.store).store is guard.store
        monkeypatch.chdir("/")
        rebuilt = adapter_from_spec(spec)
        assert rebuilt.store is not guard.store and rebuilt.get_config("bot") == ORIGINAL
        assert adapter_from_spec(spec) is rebuilt  # one connection per process
    assert adapter_from_spec({"kind": "shared", "url": "memory://"}) is None  # gone with its process
    missing = {"kind": "shared", "url": f"sqlite:///{tmp_path / 'nope.db'}"}
    assert adapter_from_spec(missing) is None and not (tmp_path / "nope.db").exists()  # never created


def test_the_cli_rebuilds_it_from_the_store(tmp_path, capsys):
    from sil_core.cli import main

    url = f"sqlite:///{tmp_path / 'ops.db'}"
    with shared_guard(url) as guard:
        guard.propose("bot", PROMOTE, mode="switch")
        guard.promote("bot")
    assert main(["revert", "bot", "--store", url]) == 0  # no adapter in this process: rebuilt from the spec
    with shared_guard(url) as guard:
        assert guard.adapter.get_config("bot") == ORIGINAL
        assert guard.adapter.history("bot")[-1]["action"] == "rollback"
        guard.propose("bot", NEXT, mode="switch")
    assert main(["rollback", "bot", "--store", url]) == 0
    with shared_guard(url) as guard:
        assert guard.change("bot").state == State.ROLLED_BACK and guard.adapter.get_config("bot") == ORIGINAL
    capsys.readouterr()


# -- four processes, then a fresh one ---------------------------------------------------------
CACHE_S = 0.5
REFRESH_S = 0.5  # Guard(refresh_interval=...), the default


def _make(url: str, kind: str) -> Guard:
    """What every worker of the web service runs at startup."""
    if kind == "dict":
        return Guard(url, adapter=DictConfigAdapter({"bot": dict(ORIGINAL)}), flush_interval=0.05,
                     refresh_interval=REFRESH_S)
    guard = Guard(url, flush_interval=0.05, refresh_interval=REFRESH_S)
    guard.adapter = SharedConfigAdapter(guard.store, defaults={"bot": ORIGINAL}, cache_s=CACHE_S)
    return guard


def _agent(guard: Guard) -> tuple[dict, dict | None]:
    """One request: the agent reads its own config (switch mode), and what the guard serves."""
    with guard.call("bot"):
        return guard.adapter.get_config("bot"), current_call().config


def _worker(role: str, url: str, kind: str, barrier, promoted, promoted_at, b_done, results) -> None:
    try:
        barrier.wait(60)
        guard = _make(url, kind)  # all four together: the default is seeded once
        barrier.wait(60)
        if role == "A":
            _agent(guard)
            change = guard.propose("bot", PROMOTE, mode="switch")
            assert change.state in (State.CANARY, State.SWITCHED), change.reason
            assert guard.promote("bot")
            promoted_at.value = time.time()
            promoted.set()
            b_done.wait(60)
            results.put((role, {"after_b": guard.adapter_config("bot")}))
        else:
            while not promoted.is_set():  # serving requests: the cache is warm when A promotes
                _agent(guard)
                time.sleep(0.005)
            deadline = promoted_at.value + CACHE_S + 1.5
            seen_after = None
            while time.time() < deadline:
                own, _ = _agent(guard)
                if own == PROMOTED:
                    seen_after = time.time() - promoted_at.value
                    break
                time.sleep(0.01)
            # what the guard itself serves is up to its refresh_interval (0.5 s) old
            time.sleep(max(0.0, promoted_at.value + REFRESH_S + 0.3 - time.time()))
            out = {"seen_after": seen_after, "in_call": _agent(guard), "adapter": guard.adapter_config("bot")}
            if role == "B":
                change = guard.propose("bot", NEXT, mode="switch")
                out["next"] = (change.state, change.baseline_version, change.candidate_version)
                out["rolled_back"] = guard.rollback("bot")
                out["after_rollback"] = guard.adapter_config("bot")
                b_done.set()
            else:
                b_done.wait(60)
                out["after_b"] = guard.adapter_config("bot")
            results.put((role, out))
        guard.close()
    except BaseException as exc:
        results.put((role, {"error": repr(exc)}))
        raise


def _fresh(url: str, kind: str, results) -> None:
    """A process started after every worker exited (a restart, a deploy)."""
    guard = _make(url, kind)
    results.put(("fresh", {"adapter": guard.adapter_config("bot"), "in_call": _agent(guard)}))
    guard.close()


def _run_scenario(url: str, kind: str) -> dict:
    ctx = mp.get_context("spawn")
    barrier, promoted, b_done = ctx.Barrier(4), ctx.Event(), ctx.Event()
    promoted_at, results = ctx.Value("d", 0.0), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(role, url, kind, barrier, promoted, promoted_at, b_done, results))
             for role in "ABCD"]
    for p in procs:
        p.start()
    out = {}
    try:
        for _ in procs:
            role, seen = results.get(timeout=90)
            out[role] = seen
    finally:
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4, out
    fresh = ctx.Process(target=_fresh, args=(url, kind, results))
    fresh.start()
    out["fresh"] = results.get(timeout=60)[1]
    fresh.join(30)
    assert fresh.exitcode == 0
    with open_store(url) as store:
        out["head"] = store.kv_get("head", "bot")[0]["active"]
        out["history"] = SharedConfigAdapter(store).history("bot") if kind == "shared" else []
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_workers_share_one_config_and_a_fresh_process_starts_with_it(backend, tmp_path, request):
    url = store_url(backend, tmp_path, request)
    open_store(url).close()  # the schema exists before the workers start, as in a deployment
    out = _run_scenario(url, "shared")
    assert not [r for r, o in out.items() if isinstance(o, dict) and "error" in o], out
    for role in "BCD":  # every worker's agent reads the promoted config within the cache time
        assert out[role]["seen_after"] is not None and out[role]["seen_after"] <= CACHE_S + 0.5, out[role]
        assert out[role]["in_call"] == (PROMOTED, PROMOTED) and out[role]["adapter"] == PROMOTED
    state, baseline, candidate = out["B"]["next"]  # B's next change starts from the promoted config
    assert state in (State.CANARY, State.SWITCHED) and baseline == V_PROMOTED
    assert candidate == config_version(merge_patch(PROMOTED, NEXT))
    assert out["B"]["rolled_back"] is True and out["B"]["after_rollback"] == PROMOTED  # not the original
    assert out["A"]["after_b"] == out["C"]["after_b"] == out["D"]["after_b"] == PROMOTED
    assert out["fresh"] == {"adapter": PROMOTED, "in_call": (PROMOTED, PROMOTED)}
    assert out["head"] == V_PROMOTED
    moves = [(m["action"], m["from"], m["to"]) for m in out["history"]]
    assert moves == [("seed", None, V_ORIGINAL), ("apply", V_ORIGINAL, V_PROMOTED),
                     ("apply", V_PROMOTED, candidate), ("rollback", candidate, V_PROMOTED)]
    assert len({m["by"] for m in out["history"][1:]}) == 2  # A applied, B applied and rolled back


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_same_four_workers_with_a_dict_adapter_lose_the_promotion(backend, tmp_path, request):
    """The demonstration that motivated ``SharedConfigAdapter``: each worker's dict is its own."""
    url = store_url(backend, tmp_path, request)
    open_store(url).close()
    out = _run_scenario(url, "dict")
    assert not [r for r, o in out.items() if isinstance(o, dict) and "error" in o], out
    for role in "BCD":  # the guard serves the promoted version, but the agent reads its stale dict
        assert out[role]["seen_after"] is None
        assert out[role]["in_call"] == (ORIGINAL, PROMOTED) and out[role]["adapter"] == ORIGINAL
    state, baseline, candidate = out["B"]["next"]  # B's next change takes the stale dict as baseline
    assert state in (State.CANARY, State.SWITCHED) and baseline == V_ORIGINAL
    assert candidate == config_version(merge_patch(ORIGINAL, NEXT))  # A's promoted change is missing
    assert out["B"]["rolled_back"] is True and out["B"]["after_rollback"] == ORIGINAL  # the promotion undone
    assert out["head"] == V_ORIGINAL  # ... silently, in the store too
    assert out["A"]["after_b"] == PROMOTED and out["C"]["after_b"] == ORIGINAL  # workers disagree
    assert out["fresh"]["adapter"] == ORIGINAL  # a restart serves the original config
