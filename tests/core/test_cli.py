"""The ``sil`` command."""

from __future__ import annotations

import json
import subprocess
import sys

from sil_core import Guard, __version__
from sil_core.cli import main


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
    lines = out.splitlines()
    assert lines[1].split()[:3] == ["target", "calls", "success"]
    assert lines[2].split()[:3] == ["agent-a", "10", "90.0%"] and lines[2].split()[-1] == "v1"
    assert lines[3].split()[:3] == ["agent-b", "1", "100.0%"]
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
