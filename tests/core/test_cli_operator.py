"""What an operator does with ``sil``: per-version and per-arm status, revert, pin, whole
reasons, JSON everywhere, and exit codes that say done (0), refused (1) or usage (2)."""

from __future__ import annotations

import json
import time

import pytest

from sil_core import DictConfigAdapter, Guard, JsonFileConfigAdapter, RolloutPolicy, State
from sil_core.changes import bucket
from sil_core.cli import actor, main

from ..conftest import PG_BASE

FAST = RolloutPolicy(min_calls=20, ramp=(0.5,), step_calls=20, horizon=400)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "writer.json"
    path.write_bytes(b'{\n  "prompt": "Cite your sources."\n}\n')
    return path


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'ops.db'}"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def canary(url, config, *, bad: bool, calls: int = 120) -> str:
    """A canary of the writer; the candidate fails a third of its calls when ``bad``."""
    with Guard(url, adapter=JsonFileConfigAdapter(config), policy=FAST, flush_interval=60) as g:
        for _ in range(40):
            with g.call("writer"):
                pass
        change = g.propose("writer", {"prompt": "Answer briefly."})
        for i in range(calls):
            with g.call("writer", key=f"u{i}") as call:
                if bad and call.arm == "candidate" and i % 3 == 0:
                    call.success = False
        return change.id


def test_status_shows_each_version_and_each_arm_of_the_change_in_flight(url, config, capsys):
    change_id = canary(url, config, bad=False, calls=60)
    code, out, _ = run(capsys, "status", "--store", url)
    assert code == 0
    assert f"change {change_id} canary at 50%" in out
    lines = [line.split() for line in out.splitlines()]
    arms = {row[1]: row for row in lines if len(row) > 3 and row[2] == "(this" and row[3] == "change)"}
    cand = sum(1 for i in range(60) if bucket(change_id, f"u{i}") < 0.5)
    assert set(arms) == {"baseline", "candidate"}
    assert int(arms["candidate"][4]) == cand and int(arms["baseline"][4]) == 60 - cand
    code, out, _ = run(capsys, "status", "--store", url, "--json")
    entry = json.loads(out)["targets"][0]
    assert {a["arm"]: a["calls"] for a in entry["arms"]} == {"baseline": 60 - cand, "candidate": cand}
    assert entry["change"]["id"] == change_id and entry["change_state"] in ("canary", "switched")
    assert sum(v["calls"] for v in entry["versions"]) == entry["calls"] == 100


def test_a_rolled_back_candidate_is_not_mixed_into_the_current_version(url, config, capsys):
    change_id = canary(url, config, bad=True, calls=300)
    with Guard(url, adapter=JsonFileConfigAdapter(config)) as g:
        g.drain()
        if g.change("writer").state in (State.CANARY, State.SWITCHED):
            g.rollback("writer")
        change = g.change("writer")
    code, out, _ = run(capsys, "status", "--store", url, "--json")
    rows = {r["version"]: r for r in json.loads(out)["targets"][0]["versions"]}
    assert rows[change.baseline_version]["active"] and rows[change.baseline_version]["failures"] == 0
    assert rows[change.candidate_version]["failures"] > 0 and not rows[change.candidate_version]["active"]
    assert change.id == change_id


def test_since_and_all_versions(url, capsys):
    adapter = DictConfigAdapter({"t": {"v": 1}})
    with Guard(url, adapter=adapter, flush_interval=60) as g:
        g.record("t", success=False, latency_s=0.1, ts=time.time() - 3 * 86400)  # three days ago
        for v in (2, 3):
            g.propose("t", {"v": v})
            g.promote("t")
        g.record("t", success=True, latency_s=0.1, version=g.change("t").candidate_version)
    code, out, _ = run(capsys, "status", "--store", url, "--json", "--since", "24h")
    entry = json.loads(out)["targets"][0]
    assert (entry["calls"], entry["failures"]) == (1, 0)
    code, out, _ = run(capsys, "status", "--store", url, "--json")
    assert len(json.loads(out)["targets"][0]["versions"]) == 2  # the active one, and the unversioned past
    code, out, _ = run(capsys, "status", "--store", url, "--json", "--all-versions")
    assert {r["calls"] for r in json.loads(out)["targets"][0]["versions"]} == {1}
    assert run(capsys, "status", "--store", url, "--since", "yesterday")[0] == 2  # usage


def test_rollback_of_a_promoted_change_says_to_revert_and_revert_restores_the_bytes(url, config, capsys):
    original = config.read_bytes()
    with Guard(url, adapter=JsonFileConfigAdapter(config)) as g:
        g.propose("writer", {"prompt": "Answer briefly."}, mode="switch")
        g.promote("writer")
        promoted = g.change("writer")
    assert config.read_bytes() != original
    code, out, err = run(capsys, "rollback", "writer", "--store", url)
    assert code == 1 and out == "" and "no change in flight" in err and "sil revert writer" in err
    code, out, err = run(capsys, "revert", "writer", "--store", url)
    assert code == 0 and "reverted" in out
    assert config.read_bytes() == original  # byte for byte, formatting included
    with Guard(url, adapter=JsonFileConfigAdapter(config)) as g:
        revert = g.change("writer")
        assert (revert.kind, revert.state, revert.candidate_version) == ("revert", "promoted",
                                                                          promoted.baseline_version)
        events = g.trail("writer")
        assert events[-1]["type"] == "reverted" and events[-1]["actor"] == actor()
        again = g.propose("writer", {"prompt": "Answer briefly."})  # the undone patch is in cooldown
        assert again.state == State.REJECTED and "cooldown" in again.reason
        assert g.verify_trail().ok
    code, out, _ = run(capsys, "revert", "writer", "--store", url, "--to", promoted.candidate_version, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    assert json.loads(config.read_text()) == {"prompt": "Answer briefly."}


def test_revert_and_pin_are_refused_when_the_adapter_cannot_be_rebuilt_here(url, capsys):
    adapter = DictConfigAdapter({"t": {"v": 1}})
    with Guard(url, adapter=adapter) as g:
        g.propose("t", {"v": 2})
        g.promote("t")
        first = g.versions("t")[0]["version"]
    code, out, err = run(capsys, "revert", "t", "--store", url)
    assert code == 1 and "cannot be rebuilt" in err
    code, out, err = run(capsys, "pin", "t", first, "--store", url, "--json")
    assert code == 1 and json.loads(out)["ok"] is False and "cannot be rebuilt" in err
    assert adapter.configs["t"] == {"v": 2}  # nothing changed behind the adapter's back


def test_pin_holds_a_version_until_unpin(url, config, capsys):
    with Guard(url, adapter=JsonFileConfigAdapter(config)) as g:
        g.propose("writer", {"prompt": "v2"}, mode="switch")
        g.promote("writer")
        v1 = g.change("writer").baseline_version
    code, out, _ = run(capsys, "pin", "writer", v1, "--store", url)
    assert code == 0 and "pinned" in out
    assert json.loads(config.read_text()) == {"prompt": "Cite your sources."}
    with Guard(url, adapter=JsonFileConfigAdapter(config)) as g:
        refused = g.propose("writer", {"prompt": "v3"})
        assert refused.state == State.REJECTED and "pinned" in refused.reason
    code, out, _ = run(capsys, "status", "--store", url)
    assert f"version {v1} (pinned by {actor()})" in out
    assert run(capsys, "unpin", "writer", "--store", url)[0] == 0
    assert run(capsys, "unpin", "writer", "--store", url)[0] == 1  # not pinned any more
    with Guard(url, adapter=JsonFileConfigAdapter(config)) as g:
        assert g.propose("writer", {"prompt": "v3"}).state in (State.CANARY, State.SWITCHED)
        assert [e["type"] for e in g.trail("writer")].count("unpinned") == 1


def test_changes_prints_whole_reasons_and_rejected_proposals(url, capsys):
    adapter = DictConfigAdapter({"t": {"v": 1}})
    with Guard(url, adapter=adapter) as g:
        g.propose("t", {"v": 2})
        g.propose("t", {"v": 3})  # refused: one change in flight
        g.propose("u", {"w": 1}, adapter=DictConfigAdapter({"u": {"w": 1}}))  # refused: changes nothing
    code, out, _ = run(capsys, "changes", "--store", url)
    assert code == 0
    text = " ".join(out.split())
    assert "rejected" in out and "one change in flight per target" in text and "the patch changes nothing" in text
    code, out, _ = run(capsys, "changes", "t", "--store", url, "--json")
    listed = json.loads(out)
    assert [c["state"] for c in listed] == ["canary", "rejected"]
    assert all(c["target"] == "t" for c in listed)


def test_a_long_reason_is_wrapped_not_cut(url, capsys):
    with Guard(url, adapter=DictConfigAdapter({"t": {"v": 1}})) as g:
        g.propose("t", {"v": 2})
        g.rollback("t", actor="a person with a rather long name who explains " * 3)
    code, out, _ = run(capsys, "changes", "--store", url)
    assert "rolled back by " + " ".join(("a person with a rather long name who explains " * 3).split()) \
        in " ".join(out.split())
    assert max(len(line) for line in out.splitlines()[1:]) <= 104


def test_promote_and_rollback_act_now_and_name_the_person(url, config, capsys):
    canary(url, config, bad=False, calls=10)
    code, out, _ = run(capsys, "rollback", "writer", "--store", url, "--json")
    assert code == 0 and json.loads(out)["state"] == "rolled_back"
    with Guard(url) as g:
        assert g.change("writer").state == State.ROLLED_BACK  # not a request: done
        assert g.trail("writer")[-1]["actor"] == actor()


@pytest.mark.parametrize("argv", [["status"], ["changes"], ["trail", "show"], ["trail", "verify"]])
def test_every_read_command_prints_json(url, capsys, argv):
    with Guard(url, adapter=DictConfigAdapter({"t": {"v": 1}})) as g:
        g.record("t", success=True, latency_s=0.1)
        g.propose("t", {"v": 2})
    code, out, _ = run(capsys, *argv, "--store", url, "--json")
    assert code == 0 and json.loads(out) is not None


@pytest.mark.parametrize("argv", [[], ["pin", "t"], ["bogus"], ["status", "--nope"], ["revert"]])
def test_usage_errors_exit_2(capsys, argv):
    assert run(capsys, *argv)[0] == 2


def test_a_trail_that_fails_verification_exits_1(url, capsys):
    with Guard(url, adapter=DictConfigAdapter({"t": {"v": 1}})) as g:
        g.propose("t", {"v": 2})
        g.rollback("t")
    import sqlite3

    with sqlite3.connect(url[len("sqlite:///"):]) as conn:
        conn.execute("UPDATE sil_trail SET event = replace(event, 'rollback', 'rollbakk') WHERE seq = 3")
    code, out, _ = run(capsys, "trail", "verify", "--store", url, "--json")
    assert code == 1 and json.loads(out)["ok"] is False


def test_the_store_password_is_masked(pg_schema, capsys):
    user = PG_BASE.split("://", 1)[1].split("@", 1)[0]
    url = PG_BASE.replace(f"{user}@", f"{user}:s3cret-pw@") + f"?schema={pg_schema}"
    with Guard(url) as g:
        g.record("t", success=True, latency_s=0.1)
    for argv in (["status"], ["status", "--json"]):
        code, out, err = run(capsys, *argv, "--store", url)
        assert code == 0 and "s3cret-pw" not in out + err and ":***@" in out


def test_a_store_url_with_a_typo_is_refused_not_created(tmp_path, capsys):
    for url in (f"sqlite:///{tmp_path / 'typo.db'}", f"jsonl:///{tmp_path / 'typo-dir'}"):
        for argv in (["status"], ["trail", "verify"], ["changes"]):
            code, out, err = run(capsys, *argv, "--store", url)
            assert code == 1 and "there is no store" in err
    assert list(tmp_path.iterdir()) == []


def test_status_of_an_unknown_target_is_refused(url, capsys):
    with Guard(url) as g:
        g.record("known", success=True, latency_s=0.1)
    code, out, err = run(capsys, "status", "known", "--store", url)
    assert code == 0 and "known: 1 calls" in out
    code, out, err = run(capsys, "status", "unknown", "--store", url)
    assert code == 1 and "no calls or changes recorded for unknown" in err


def test_status_into_a_closed_pipe_is_quiet(url):
    import subprocess
    import sys

    with Guard(url) as g:
        for i in range(300):
            g.record(f"t{i}", success=True, latency_s=0.1)
    out = subprocess.run(f"{sys.executable} -m sil_core.cli status --store {url} | head -1", shell=True,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("store:") and "BrokenPipe" not in out.stderr and "Traceback" not in out.stderr
