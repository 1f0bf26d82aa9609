"""Quarantine by content version, refreshed from the store; the notice to the model after
a rollback (the plugin at Hermes' dispatcher, no model)."""

import contextlib
import time

import pytest

from .conftest import SKILL_V1
from .test_plugin import PATCH, attach, call

TARGET = "hermes:demo-skill"


@pytest.fixture
def fast_refresh(monkeypatch):
    import sil_hermes._runtime as rt

    monkeypatch.setattr(rt, "QUARANTINE_REFRESH_S", 0.2)
    return 0.2


@contextlib.contextmanager
def another_process(tmp_path, monkeypatch):
    """The plugin as a new process on the same store sees it: a fresh runtime, no guard yet."""
    import sil_hermes._runtime as rt_mod

    fresh = rt_mod.Runtime()
    monkeypatch.setattr(rt_mod, "_runtime", fresh)
    monkeypatch.setenv("SIL_STORE", f"sqlite:///{tmp_path / 'sil.db'}")
    try:
        yield fresh
    finally:
        fresh.drain(10)
        if fresh.guard is not None:
            fresh.guard.close()


def bad_edit_rolled_back(home, guard, reason="3 failing turns in a row"):
    """v1 -> v2 (the patch), then v2 rolled back: v1 on disk again, v2 quarantined."""
    from sil_core import config_version

    rt = attach(guard)
    call("skill_view", {"name": "demo-skill"})
    call("skill_manage", PATCH)
    rt.drain()
    rt.bad = (home / "skills" / "demo-skill" / "SKILL.md").read_bytes()
    change = guard.change(TARGET)
    v2 = change.candidate_version
    assert config_version(rt.adapter.get_config("demo-skill")) == v2
    assert guard.rollback(TARGET, reason=reason) is True
    return rt, change.baseline_version, v2


def test_the_restored_version_is_served_after_a_rollback(home, guard, fast_refresh):
    rt, v1, v2 = bad_edit_rolled_back(home, guard)
    rt.refresh_quarantine(force=True)  # the rollback is known before v1 is seen on disk again
    for _ in range(2):  # the next turns load v1: it is not quarantined
        got = call("skill_view", {"name": "demo-skill"})
        assert got["success"] is True and "one short sentence" in got["content"]
        rt.drain()
    assert rt.blocked["demo-skill"] == {v2: "3 failing turns in a row"}
    assert rt.block_reason("demo-skill") is None


def test_a_rollback_to_from_another_guard_unblocks_within_the_refresh_interval(home, guard, tmp_path,
                                                                             fast_refresh):
    from sil_core.store import open_store
    from sil_hermes import SkillConfigAdapter
    from sil_hermes.cli import rollback

    rt, v1, v2 = bad_edit_rolled_back(home, guard)
    time.sleep(fast_refresh * 1.5)
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    skill_md.write_bytes(rt.bad)  # v2 comes back outside skill_manage (a restore from git, say)
    assert "quarantined" in call("skill_view", {"name": "demo-skill"})["error"]
    rt.drain()
    store = open_store(f"sqlite:///{tmp_path / 'sil.db'}")  # another process: a person restores v2 on purpose
    try:
        assert "restored" in rollback(store, "demo-skill", SkillConfigAdapter(home), to=v2)
    finally:
        store.close()
    time.sleep(fast_refresh * 1.5)
    got = call("skill_view", {"name": "demo-skill"})
    assert got["success"] is True and "three long paragraphs" in got["content"]
    assert rt.block_reason("demo-skill") is None


def test_a_new_process_blocks_a_quarantined_version_on_its_first_view(home, guard, tmp_path, monkeypatch):
    rt, v1, v2 = bad_edit_rolled_back(home, guard)
    rt.drain()
    guard.flush()
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    skill_md.write_bytes(rt.bad)  # v2 comes back outside skill_manage (a restore from git, say)
    with another_process(tmp_path, monkeypatch):  # no guard yet, nothing seen on disk
        blocked = call("skill_view", {"name": "demo-skill"})
        assert "quarantined" in blocked["error"] and v2 in blocked["error"]


def test_the_next_load_after_a_rollback_tells_the_model_once(home, guard, fast_refresh):
    rt, v1, v2 = bad_edit_rolled_back(home, guard, reason="tool errors in 3 turns")
    time.sleep(fast_refresh * 1.5)
    got = call("skill_view", {"name": "demo-skill"})
    assert got["content"].strip() == SKILL_V1.strip()
    note = got["sil_guard"]
    assert "rolled back" in note and v1 in note and "tool errors in 3 turns" in note and len(note) < 300
    again = call("skill_view", {"name": "demo-skill"})
    assert again["success"] is True and "sil_guard" not in again


def test_the_notice_is_given_once_across_processes(home, guard, tmp_path, monkeypatch, fast_refresh):
    """One process per turn (hermes chat -q, -z): the next process must not tell it again."""
    rt, v1, v2 = bad_edit_rolled_back(home, guard)
    time.sleep(fast_refresh * 1.5)
    assert "sil_guard" in call("skill_view", {"name": "demo-skill"})
    rt.drain()
    guard.flush()
    with another_process(tmp_path, monkeypatch):  # the next one-shot process, on the same store
        again = call("skill_view", {"name": "demo-skill"})
        assert again["success"] is True and "sil_guard" not in again


def test_a_manual_rollback_is_not_called_a_regression(home, guard, fast_refresh):
    rt, v1, v2 = bad_edit_rolled_back(home, guard, reason="the tone was wrong")
    time.sleep(fast_refresh * 1.5)
    note = call("skill_view", {"name": "demo-skill"})["sil_guard"]
    assert "by a person (the tone was wrong)" in note and "regressed" not in note
