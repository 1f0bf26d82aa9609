"""The tripwire sees every failure: raised, judged later by feedback or a check, in one
process or spread over one-shot processes that share a store."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sil_core import Guard, JsonFileConfigAdapter, RolloutPolicy, State, open_store
from sil_core.changes import bucket

from ..conftest import store_url

#: a minimum sample far above the tripwire's 5, so only the tripwire can act this early
POLICY = RolloutPolicy(min_calls=30, ramp=(0.5,), tripwire_consecutive=5)


def candidate_keys(change_id: str, weight: float, n: int) -> list[str]:
    """Routing keys that fall on the candidate arm of a change (as on every worker)."""
    return [k for k in (f"user-{i}" for i in range(10_000)) if bucket(change_id, k) < weight][:n]


def baseline_keys(change_id: str, weight: float, n: int) -> list[str]:
    return [k for k in (f"user-{i}" for i in range(10_000)) if bucket(change_id, k) >= weight][:n]


@pytest.mark.parametrize("backend", ["memory", "jsonl", "sqlite", "postgresql"])
def test_a_candidate_judged_bad_only_by_feedback_is_rolled_back_within_5_candidate_calls(backend, tmp_path, request):
    """Every candidate call returns normally; a thumbs-down arrives right after each. The
    statistics would need 30 candidate calls; the tripwire acts at the 5th."""
    config = tmp_path / "agent.json"
    config.write_bytes(b'{"prompt": "good"}\n')
    with Guard(store_url(backend, tmp_path, request), adapter=JsonFileConfigAdapter(config), policy=POLICY,
               flush_interval=60, refresh_interval=0) as g:
        change = g.propose("agent", {"prompt": "bad"})
        keys = candidate_keys(change.id, 0.5, 10)
        others = baseline_keys(change.id, 0.5, 10)
        served = []
        for i, key in enumerate(keys):
            with g.call("agent", key=others[i]) as base:  # the baseline is fine
                assert base.arm == "baseline"
            with g.call("agent", key=key) as call:
                assert call.arm == "candidate" and call.config == {"prompt": "bad"}
            served.append(call.call_id)
            g.feedback(call.call_id, success=False)  # the user saw a bad answer
            g.drain()
            if g.change("agent").state not in (State.CANARY, State.SWITCHED):
                break
        done = g.change("agent")
        assert done.state == State.ROLLED_BACK and len(served) == 5
        assert done.verdict.metric == "tripwire" and "5 judged failed after they returned" in done.verdict.reason
        assert done.verdict.evidence["tripwire"]["calls"] == served
        assert g.stats("agent", version=change.candidate_version).failures == 5
    assert config.read_bytes() == b'{"prompt": "good"}\n'  # a canary never touched the file


def test_check_failures_reported_as_feedback_trip_in_switch_mode(tmp_path):
    """Switch mode: the candidate serves every call; a check that judges each answer bad
    trips the wire, and the file is restored byte for byte."""
    config = tmp_path / "agent.json"
    original = b'{\n  "prompt": "good"\n}\n'
    config.write_bytes(original)
    with Guard(f"sqlite:///{tmp_path / 's.db'}", adapter=JsonFileConfigAdapter(config), policy=POLICY,
               flush_interval=60, refresh_interval=0) as g:
        for _ in range(40):
            g.record("agent", success=True, latency_s=0.1)
        g.propose("agent", {"prompt": "bad"}, mode="switch")
        calls = 0
        while g.change("agent").state in (State.CANARY, State.SWITCHED) and calls < 30:
            with g.call("agent") as call:
                answer = "no source" if call.config["prompt"] == "bad" else "[1] source"
            calls += 1
            g.feedback(call.call_id, success="[1]" in answer)
            g.drain()
        assert calls == 5 and g.change("agent").state == State.ROLLED_BACK
    assert config.read_bytes() == original


def test_the_outage_rule_holds_for_feedback(tmp_path):
    """Both arms judged bad at the same time (a provider outage): not the change."""
    with Guard(f"sqlite:///{tmp_path / 's.db'}", adapter=JsonFileConfigAdapter(tmp_path / "a.json"),
               policy=POLICY, flush_interval=60, refresh_interval=0) as g:
        change = g.propose("agent", {"prompt": "v2"})
        cand, base = candidate_keys(change.id, 0.5, 8), baseline_keys(change.id, 0.5, 8)
        for i in range(8):
            for key in (base[i], cand[i]):
                with g.call("agent", key=key) as call:
                    pass
                g.feedback(call.call_id, success=False)
            g.drain()
        assert g.change("agent").state in (State.CANARY, State.SWITCHED)


_ONE_SHOT = textwrap.dedent(
    """
    import sys
    from sil_core import Guard, JsonFileConfigAdapter, RolloutPolicy
    url, config, key, verdict = sys.argv[1:5]
    guard = Guard(url, adapter=JsonFileConfigAdapter(config),
                  policy=RolloutPolicy(min_calls=30, ramp=(0.5,), tripwire_consecutive=5))
    with guard.call("agent", key=key) as call:
        answer = "ok"
    print(call.arm)
    if verdict != "none":
        guard.feedback(call.call_id, success=verdict == "good")
    # no close(): the process ends normally, and what it queued and started is finished
    """
)


def _one_shot(tmp_path, url: str, config, key: str, verdict: str) -> str:
    script = tmp_path / "one_shot.py"
    script.write_text(_ONE_SHOT)
    out = subprocess.run([sys.executable, str(script), url, str(config), key, verdict],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_five_one_shot_processes_each_judged_bad_trip_the_wire_together(backend, tmp_path, request):
    """One process per query (a CLI agent): each serves one call and exits. The tripwire's
    count lives in the store, so the 5th candidate failure, in the 5th process, rolls back."""
    url = store_url(backend, tmp_path, request)
    config = tmp_path / "agent.json"
    config.write_bytes(b'{"prompt": "good"}\n')
    with Guard(url, adapter=JsonFileConfigAdapter(config), policy=POLICY) as g:
        change = g.propose("agent", {"prompt": "bad"})
    cand, base = candidate_keys(change.id, 0.5, 5), baseline_keys(change.id, 0.5, 5)
    states = []
    for i in range(5):
        assert _one_shot(tmp_path, url, config, base[i], "good") == "baseline"
        assert _one_shot(tmp_path, url, config, cand[i], "bad") == "candidate"
        with open_store(url) as store:
            head = store.kv_get("head", "agent")[0]
            states.append(store.kv_get("change", head["change_id"])[0]["state"])
    assert states == [State.CANARY] * 4 + [State.ROLLED_BACK]
    with open_store(url) as store:
        row = store.kv_get("change", change.id)[0]
        assert row["verdict"]["metric"] == "tripwire"
        assert len(row["verdict"]["evidence"]["tripwire"]["calls"]) == 5
        assert store.count_calls("agent") == 10


def test_feedback_sent_from_another_process_reaches_the_tripwire(tmp_path):
    """The calls are served by one process; the thumbs-downs come through another (a
    feedback endpoint on another worker), which finds the calls' arm in the store."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    with Guard(url, adapter=JsonFileConfigAdapter(tmp_path / "a.json"), policy=POLICY,
               flush_interval=60, refresh_interval=0) as g:
        change = g.propose("agent", {"prompt": "v2"})
        ids = []
        for key in candidate_keys(change.id, 0.5, 5):
            with g.call("agent", key=key) as call:
                pass
            ids.append(call.call_id)
    assert Guard(url).change("agent").state in (State.CANARY, State.SWITCHED)
    script = tmp_path / "feedback.py"
    script.write_text("import sys\nfrom sil_core import Guard\ng = Guard(sys.argv[1])\n"
                      "for cid in sys.argv[2:]:\n    g.feedback(cid, success=False)\n")
    out = subprocess.run([sys.executable, str(script), url, *ids], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with Guard(url) as g:
        done = g.change("agent")
        assert done.state == State.ROLLED_BACK and done.verdict.metric == "tripwire"
