"""One default store for ``Guard()`` and every ``sil`` command: ``$SIL_STORE``, else Hermes'
store when Hermes is in use, else the XDG file; ``sil status`` says which and why. The core
knows Hermes by environment and paths only."""

from __future__ import annotations

import pytest

from sil_core import Guard
from sil_core.cli import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No $SIL_STORE, no $HERMES_HOME, a fresh $HOME (so ~/.hermes is ours) and XDG folder."""
    for var in ("SIL_STORE", "HERMES_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "user").mkdir()
    return tmp_path


def _record_then_status(capsys, target: str) -> str:
    with Guard() as g:
        g.record(target, success=True, latency_s=0.1)
    capsys.readouterr()
    assert main(["status"]) == 0
    return capsys.readouterr().out


def test_HERMES_HOME_makes_Guard_and_sil_status_use_hermes_store(env, monkeypatch, capsys):
    home = env / "hermes-home"
    monkeypatch.setenv("HERMES_HOME", str(home))
    out = _record_then_status(capsys, "from-guard")
    assert (home / "sil" / "sil.db").is_file()  # created on first use, like the XDG default
    assert not (env / "xdg" / "sil-guard" / "sil.db").exists()
    assert out.splitlines()[0] == f"store: sqlite:///{home / 'sil' / 'sil.db'} (from $HERMES_HOME)"
    assert "from-guard" in out


def test_SIL_STORE_wins_over_hermes(env, monkeypatch, capsys):
    monkeypatch.setenv("HERMES_HOME", str(env / "hermes-home"))
    monkeypatch.setenv("SIL_STORE", f"sqlite:///{env / 'env.db'}")
    out = _record_then_status(capsys, "from-env")
    assert out.splitlines()[0] == f"store: sqlite:///{env / 'env.db'} (from $SIL_STORE)"
    assert not (env / "hermes-home").exists()


def test_without_hermes_the_xdg_default_and_the_reason(env, capsys):
    out = _record_then_status(capsys, "plain")
    assert (env / "xdg" / "sil-guard" / "sil.db").is_file()
    first = out.splitlines()[0]
    assert first.startswith(f"store: sqlite:///{env / 'xdg' / 'sil-guard' / 'sil.db'} (from the default")


def test_the_default_hermes_home_is_in_use_once_its_sil_folder_exists(env, capsys):
    (env / "user" / ".hermes" / "sil").mkdir(parents=True)
    out = _record_then_status(capsys, "home-default")
    db = env / "user" / ".hermes" / "sil" / "sil.db"
    assert db.is_file() and "home-default" in out
    assert out.splitlines()[0] == f"store: sqlite:///{db} (from Hermes home {env / 'user' / '.hermes'} " \
                                  "(its sil/ folder exists))"


def test_a_sil_store_setting_in_hermes_config_is_read_without_yaml(env, monkeypatch, capsys):
    hermes = env / "user" / ".hermes"
    hermes.mkdir(parents=True)
    monkeypatch.setenv("SIL_DIR", str(env))
    (hermes / "config.yaml").write_text(
        "plugins:\n  enabled: [sil]\n"
        "sil:   # sil-guard\n"
        "  min_calls: 10\n"
        "  store: \"sqlite:///${SIL_DIR}/shared.db\"   # one store for every process\n"
        "  notifiers:\n    - webhook: https://example.invalid/store\n"
        "skills:\n  store: sqlite:///not-this.db\n")
    out = _record_then_status(capsys, "configured")
    assert (env / "shared.db").is_file() and "configured" in out
    assert out.splitlines()[0] == f"store: sqlite:///{env / 'shared.db'} (from sil.store in {hermes / 'config.yaml'})"


def test_a_sil_section_without_a_store_means_the_hermes_home_store(env, capsys):
    hermes = env / "user" / ".hermes"
    hermes.mkdir(parents=True)
    (hermes / "config.yaml").write_text("sil:\n  tripwire_consecutive: 3\n")
    out = _record_then_status(capsys, "sectioned")
    assert (hermes / "sil" / "sil.db").is_file() and "sectioned" in out


def test_status_json_names_the_source(env, monkeypatch, capsys):
    import json

    monkeypatch.setenv("HERMES_HOME", str(env / "h"))
    assert main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["store"] == f"sqlite:///{env / 'h' / 'sil' / 'sil.db'}" and data["store_source"] == "$HERMES_HOME"


def test_an_explicit_store_that_is_missing_is_still_refused(env, capsys):
    assert main(["status", "--store", f"sqlite:///{env / 'typo.db'}"]) == 1
    err = capsys.readouterr().err
    assert "there is no store" in err and "(from --store;" in err
    assert not (env / "typo.db").exists()
