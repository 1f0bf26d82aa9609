"""Edits that land faster than the plugin's worker handles them: every one is guarded and
none is undone (the plugin at Hermes' dispatcher, no model)."""

import threading

from .test_plugin import PATCH, attach, call

TARGET = "hermes:demo-skill"


def test_three_edits_before_the_worker_runs_keep_the_last_on_disk_and_in_the_guard(home, guard, monkeypatch):
    from sil_core import config_version
    from sil_core.integration import State
    import sil_hermes.skills as skills

    rt = attach(guard)
    writes = []  # the plugin's own writes of the skill folder: a supersede must make none
    real_replace = skills.replace_dir
    monkeypatch.setattr(skills, "replace_dir", lambda *a, **k: (writes.append(a[0]), real_replace(*a, **k))[1])
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    gate = threading.Event()
    handle = rt._handle

    def slow(item):  # the worker is busy (a slow store) while the model edits three times
        gate.wait(10)
        handle(item)

    rt._handle = slow
    rt.worker.handler = slow
    edits = [PATCH,
             {"action": "patch", "name": "demo-skill", "old_string": "three long paragraphs", "new_string": "a haiku"},
             {"action": "patch", "name": "demo-skill", "old_string": "a haiku", "new_string": "a limerick"}]
    for edit in edits:
        assert call("skill_manage", edit)["success"] is True
    gate.set()
    rt.drain()
    assert writes == []  # the disk never stepped back under the model while the guard caught up
    assert "a limerick" in skill_md.read_text()  # the model's last edit is still on disk
    changes = guard.changes(TARGET)
    assert [c.state for c in changes] == [State.ROLLED_BACK, State.ROLLED_BACK, State.SWITCHED]
    assert all(c.reason == "superseded by a newer edit" for c in changes[:2])
    on_disk = config_version(rt.adapter.get_config("demo-skill"))
    assert changes[2].candidate_version == on_disk == guard.view(TARGET, fresh=True).active
    assert changes[2].baseline_version == changes[0].baseline_version
    assert guard.rollback(TARGET) is True  # and the first version is what a rollback restores
    assert "one short sentence" in skill_md.read_text()
    assert guard.verify_trail().ok
