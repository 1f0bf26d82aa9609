"""The ``sil`` command."""

from __future__ import annotations

import json
import subprocess
import sys

from sil_core import Guard, __version__
from sil_core.cli import actor, main


def test_version():
    out = subprocess.run([sys.executable, "-m", "sil_core.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"sil {__version__}"


def test_status_table_and_json(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with Guard(url) as g:
        for i in range(10):
            g.record("agent-a", success=i != 0, latency_s=0.2, version="v1")
        g.record("agent-b", success=True, latency_s=0.002)
    assert main(["status", "--store", url]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[1] == "agent-a: 10 calls, version -"
    assert lines[2].split()[:4] == ["version", "arm", "calls", "success"]
    assert lines[3].split()[:4] == ["v1", "all", "10", "90.0%"]
    assert lines[4] == "agent-b: 1 calls, version -"
    assert lines[6].split()[:4] == ["(none)", "all", "1", "100.0%"]
    assert main(["status", "--store", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["target"] for t in data["targets"]] == ["agent-a", "agent-b"]
    assert data["targets"][0]["failures"] == 1


def test_status_uses_SIL_STORE(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("SIL_STORE", url)
    with Guard() as g:  # the default store honours SIL_STORE too
        g.record("from-env", success=True, latency_s=0.1)
    assert main(["status"]) == 0
    assert "from-env" in capsys.readouterr().out


def test_changes_trail_rollback_and_promote_commands(tmp_path, capsys):
    from sil_core import JsonFileConfigAdapter

    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = tmp_path / "cfg.json"
    path.write_text('{"prompt": "good"}\n')
    original = path.read_bytes()
    with Guard(url, adapter=JsonFileConfigAdapter(path)) as g:
        g.propose("agent", {"prompt": "bad"}, mode="switch")
        g.propose("other", {"prompt": "v2"})  # canary: needs no adapter to roll back
    assert path.read_text() != original.decode()
    assert main(["changes", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "agent" in out and "switch" in out and "canary" in out
    # the CLI rebuilds the JSON-file adapter from the change and restores the file itself
    assert main(["rollback", "agent", "--store", url]) == 0
    assert path.read_bytes() == original
    assert main(["rollback", "other", "--store", url]) == 0
    assert main(["rollback", "agent", "--store", url]) == 1  # nothing in flight any more
    capsys.readouterr()
    assert main(["trail", "show", "agent", "--store", url]) == 0
    shown = capsys.readouterr().out
    assert "rollback_succeeded" in shown and "cli" in shown
    assert main(["trail", "verify", "--store", url]) == 0
    assert "trail OK" in capsys.readouterr().out


def test_cli_promote_without_an_adapter_is_a_request(tmp_path, capsys):
    from sil_core import DictConfigAdapter

    url = f"sqlite:///{tmp_path / 'p.db'}"
    adapter = DictConfigAdapter({"agent": {"prompt": "good"}})
    g = Guard(url, adapter=adapter, flush_interval=60)
    g.propose("agent", {"prompt": "v2"})
    assert main(["promote", "agent", "--store", url]) == 0
    assert "requested" in capsys.readouterr().out
    g.evaluate("agent")  # the worker holding the adapter serves the request
    assert g.change("agent").state == "promoted" and adapter.configs["agent"] == {"prompt": "v2"}
    assert any(e["type"] == "promoted" and e["actor"] == actor() for e in g.trail("agent"))
    g.close()


def test_cli_approve_starts_a_change_waiting_for_approval(tmp_path, capsys):
    from sil_core import DictConfigAdapter, JsonFileConfigAdapter

    url = f"sqlite:///{tmp_path / 'a.db'}"
    path = tmp_path / "cfg.json"
    path.write_text('{"prompt": "good"}\n')
    with Guard(url, adapter=DictConfigAdapter({"canary-agent": {"prompt": "v1"}})) as g:
        g.propose("canary-agent", {"prompt": "v2"}, approve=False)
        g.propose("file-agent", {"prompt": "v2"}, adapter=JsonFileConfigAdapter(path), mode="switch", approve=False)
        g.propose("dict-agent", {"prompt": "v2"}, mode="switch", approve=False)
    assert main(["approve", "canary-agent", "--store", url]) == 0
    assert "now canary" in capsys.readouterr().out
    assert main(["approve", "file-agent", "--store", url]) == 0  # the JSON-file adapter is rebuilt here
    assert '"v2"' in path.read_text()
    assert main(["approve", "dict-agent", "--store", url]) == 1  # its adapter lives in a worker only
    assert "guard.approve" in capsys.readouterr().err
    assert main(["approve", "canary-agent", "--store", url]) == 1  # nothing waits any more
    with Guard(url) as g:
        assert [g.change(t).state for t in ("canary-agent", "file-agent", "dict-agent")] == \
            ["canary", "switched", "proposed"]
        assert any(e["type"] == "change_applied" and e["actor"] == actor() for e in g.trail("canary-agent"))


def test_a_rejected_proposal_keeps_the_adapter_of_the_change_in_flight():
    from sil_core import DictConfigAdapter

    first, second = DictConfigAdapter({"agent": {"prompt": "v1"}}), DictConfigAdapter({"agent": {"prompt": "x"}})
    with Guard("memory://", flush_interval=60) as g:
        g.propose("agent", {"prompt": "v2"}, adapter=first, mode="switch")
        assert g.propose("agent", {"prompt": "v3"}, adapter=second).state == "rejected"
        assert g.rollback("agent")
    assert first.configs["agent"] == {"prompt": "v1"}  # restored through the change's own adapter
    assert second.configs["agent"] == {"prompt": "x"}


def test_sil_hermes_fails_cleanly_when_sil_hermes_cannot_be_imported(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sil_hermes.cli", None)  # as if it could not be imported
    assert main(["hermes", "history", "some-skill"]) == 2
    assert "sil hermes" in capsys.readouterr().err
