"""The plugin at Hermes' dispatcher (``model_tools.handle_function_call``, no model)."""

import json
import subprocess
import sys

import pytest

from .conftest import CONFIG_V1, SKILL_V1

PATCH = {"action": "patch", "name": "demo-skill", "old_string": "Answer in one short sentence.",
         "new_string": "Answer in three long paragraphs."}


def call(tool, args, **kw):
    from model_tools import handle_function_call

    return json.loads(handle_function_call(tool, args, **kw))


def runtime():
    import sil_hermes._runtime as rt

    return rt._runtime


def attach(guard):
    from sil_hermes import SkillConfigAdapter, SkillGuard

    SkillGuard(guard, adapter=SkillConfigAdapter())
    return runtime()


def test_the_entry_point_plugin_is_loaded_with_its_hooks(plugin_manager):
    plugin = plugin_manager._plugins["sil"]
    assert plugin.enabled and plugin.error is None
    assert set(plugin.hooks_registered) == {"pre_tool_call", "post_tool_call", "transform_tool_result", "pre_llm_call",
                                         "pre_api_request", "post_api_request", "on_session_end"}
    assert "guarded change" in plugin.manifest.description


def test_a_skill_manage_write_becomes_a_guarded_change_by_the_foreground(home, guard):
    from sil_core import config_version

    rt = attach(guard)
    v1 = config_version(rt.adapter.get_config("demo-skill"))
    assert call("skill_manage", PATCH)["success"] is True
    rt.drain()
    change = guard.change("hermes:demo-skill")
    assert change.state in ("canary", "switched") and change.mode == "switch"
    assert change.baseline_version == v1
    assert change.candidate_version == config_version(rt.adapter.get_config("demo-skill")) != v1
    proposed = [e for e in guard.trail("hermes:demo-skill") if e["type"] == "change_proposed"]
    assert proposed[-1]["actor"] == "hermes:foreground"
    assert guard.versions("hermes:demo-skill")[0]["config"]["files"]["SKILL.md"] == SKILL_V1


def test_the_background_review_is_recorded_as_the_writer(home, guard):
    from tools.skill_provenance import reset_current_write_origin, set_current_write_origin
    from tools.skill_usage import mark_agent_created

    rt = attach(guard)
    mark_agent_created("demo-skill")  # the review fork may only edit skills an agent created
    token = set_current_write_origin("background_review")
    try:
        call("skill_view", {"name": "demo-skill"})  # the review fork must read before it writes
        assert call("skill_manage", PATCH)["success"] is True
    finally:
        reset_current_write_origin(token)
    rt.drain()
    edits = [row for _, row, _ in guard.store.kv_list("hermes_edit")]
    assert [e["writer"] for e in edits] == ["background_review"]
    assert [e["actor"] for e in guard.trail("hermes:demo-skill") if e["type"] == "change_proposed"] == \
        ["hermes:background_review"]


def test_rollback_restores_files_and_config_bytes_and_clears_the_prompt_cache(home, guard):
    rt = attach(guard)
    faq = home / "skills" / "demo-skill" / "references" / "faq.md"
    call("skill_manage", PATCH)
    call("skill_manage", {"action": "write_file", "name": "demo-skill", "file_path": "references/new.md",
                          "file_content": "added by v2\n"})
    rt.drain()
    snapshot = home / ".skills_prompt_snapshot.json"
    snapshot.write_text("{}")
    assert guard.rollback("hermes:demo-skill") is True
    skill = home / "skills" / "demo-skill"
    assert (skill / "SKILL.md").read_bytes() == SKILL_V1.encode()
    assert sorted(p.relative_to(skill).as_posix() for p in skill.rglob("*") if p.is_file()) == \
        ["SKILL.md", "references/faq.md"]
    assert faq.read_bytes() == b"Q: what? A: that.\n"
    assert (home / "config.yaml").read_bytes() == CONFIG_V1.encode()
    assert not snapshot.exists()
    assert call("skill_view", {"name": "demo-skill"})["content"].strip() == SKILL_V1.strip()
    assert not list((home / "sil" / "staging").iterdir())
    assert guard.verify_trail().ok


def test_config_keys_are_versioned_and_restored_byte_for_byte(home, guard):
    from sil_hermes import SkillConfigAdapter

    adapter = SkillConfigAdapter(home)
    assert adapter.get_config("demo-skill")["config"] == {"demo.style": "terse"}
    change = guard.propose("hermes:demo-skill", {"config": {"demo.style": "verbose"}}, adapter=adapter, mode="switch")
    assert change.state in ("canary", "switched")
    text = (home / "config.yaml").read_text()
    assert "verbose" in text and "this comment must survive" in text
    assert guard.rollback("hermes:demo-skill") is True
    assert (home / "config.yaml").read_bytes() == CONFIG_V1.encode()


def test_config_keys_restore_keeps_other_edits_and_comments(home):
    from sil_hermes import SkillConfigAdapter

    adapter = SkillConfigAdapter(home)
    v1 = adapter.get_config("demo-skill")
    adapter.apply_config("demo-skill", {"config": {"demo.style": "verbose"}})
    path = home / "config.yaml"
    path.write_text(path.read_text() + "display:\n  skin: dark\n")  # someone else edits config.yaml
    adapter.rollback_config("demo-skill", v1)
    text = path.read_text()
    assert adapter.get_config("demo-skill") == v1
    assert "skin: dark" in text and "this comment must survive" in text


def test_the_same_bad_edit_during_its_cooldown_is_undone_on_disk(home, guard, tmp_path):
    from sil_core import Guard
    from sil_core.integration import State
    from sil_hermes import SkillConfigAdapter

    rt = attach(guard)
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    call("skill_manage", PATCH)
    rt.drain()
    guard.flush()
    other = Guard(f"sqlite:///{tmp_path / 'sil.db'}", adapter=SkillConfigAdapter(home))  # another process decides
    try:
        assert other.rollback("hermes:demo-skill") is True
    finally:
        other.close()
    assert call("skill_view", {"name": "demo-skill"})["success"] is True  # v1 is served again
    # this process does not know of the rollback yet (it re-reads others' rollbacks at most
    # every 2 s): the same bad edit lands again (a background review, say), is refused, and is undone
    assert call("skill_manage", PATCH)["success"] is True
    rt.drain()
    assert skill_md.read_bytes() == SKILL_V1.encode()  # not left on disk behind a quarantine
    assert (home / "config.yaml").read_bytes() == CONFIG_V1.encode()
    changes = guard.changes("hermes:demo-skill")
    assert [c.state for c in changes] == [State.ROLLED_BACK, State.REJECTED]
    assert guard.view("hermes:demo-skill", fresh=True).active == changes[0].baseline_version
    assert "one short sentence" in call("skill_view", {"name": "demo-skill"})["content"]
    # now they know: the same edit is refused before it lands, with a message to the model
    refused = call("skill_manage", PATCH)
    assert "rolled back because it regressed" in refused["error"]
    rt.drain()
    assert skill_md.read_bytes() == SKILL_V1.encode()
    assert len(guard.changes("hermes:demo-skill")) == 2


def test_an_edit_of_a_pinned_skill_is_refused_before_it_lands(home, guard):
    rt = attach(guard)
    call("skill_view", {"name": "demo-skill"})
    rt.drain()
    call("skill_manage", PATCH)
    rt.drain()
    change = guard.change("hermes:demo-skill")
    assert guard.rollback("hermes:demo-skill") is True
    guard.pin("hermes:demo-skill", change.baseline_version)
    refused = call("skill_manage", {**PATCH, "new_string": "Answer in a sonnet."})
    assert "pinned" in refused["error"]
    assert (home / "skills" / "demo-skill" / "SKILL.md").read_bytes() == SKILL_V1.encode()
    assert guard.unpin("hermes:demo-skill") is True
    assert call("skill_manage", {**PATCH, "new_string": "Answer in a sonnet."})["success"] is True


def test_a_quarantined_version_is_blocked_with_a_message_to_the_model(home, guard):
    rt = attach(guard)
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    call("skill_manage", PATCH)
    rt.drain()
    bad = skill_md.read_bytes()
    assert guard.rollback("hermes:demo-skill") is True
    assert call("skill_view", {"name": "demo-skill"})["success"] is True  # v1 is served again
    skill_md.write_bytes(bad)  # the bad version comes back outside skill_manage (a restore from git, say)
    blocked = call("skill_view", {"name": "demo-skill"})  # this process's rollback is known at once
    assert "quarantined" in blocked["error"] and "demo-skill" in blocked["error"]
    assert "Do not load or follow it" in blocked["error"]
    rt.drain()
    guard.flush()
    assert [r.outcome for r in guard.store.read_calls("hermes:demo-skill", limit=10)] == ["blocked"]


def test_an_edit_while_a_change_is_in_flight_supersedes_it(home, guard, tmp_path, capsys):
    from sil_core import config_version
    from sil_core.cli import main
    from sil_core.integration import State

    rt = attach(guard)
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    v1 = config_version(rt.adapter.get_config("demo-skill"))
    call("skill_manage", PATCH)
    rt.drain()
    first = guard.change("hermes:demo-skill")
    assert first.state == State.SWITCHED
    second = {"action": "patch", "name": "demo-skill", "old_string": "three long paragraphs",
              "new_string": "a haiku"}
    assert call("skill_manage", second)["success"] is True
    rt.drain()
    v3 = config_version(rt.adapter.get_config("demo-skill"))
    assert "a haiku" in skill_md.read_text()  # the newer edit is on disk...
    changes = guard.changes("hermes:demo-skill")
    assert [c.state for c in changes] == [State.ROLLED_BACK, State.SWITCHED]  # ...and in flight
    assert changes[0].reason == "superseded by a newer edit"
    assert changes[1].baseline_version == v1 and changes[1].candidate_version == v3
    assert guard.view("hermes:demo-skill", fresh=True).active == v3
    assert rt.block_reason("demo-skill") is None  # superseded is not quarantined
    guard.flush()
    url = f"sqlite:///{tmp_path / 'sil.db'}"
    assert main(["hermes", "history", "demo-skill", "--store", url]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[v3].rstrip().endswith("active")
    assert guard.rollback("hermes:demo-skill") is True  # rolling the newer edit back restores v1
    assert skill_md.read_bytes() == SKILL_V1.encode()
    assert guard.verify_trail().ok


def test_hooks_survive_injected_faults(home, guard, monkeypatch):
    from sil_core._internal.failopen import error_counts
    from sil_hermes import plugin

    rt = attach(guard)

    def broken(*a, **k):
        raise OSError("disk on fire")

    monkeypatch.setattr(rt.adapter, "get_config", broken)
    monkeypatch.setattr(rt, "turn", broken)
    before = error_counts["hermes.pre_tool_call"]
    result = call("skill_manage", PATCH)
    assert result["success"] is True
    assert "three long paragraphs" in (home / "skills" / "demo-skill" / "SKILL.md").read_text()
    assert error_counts["hermes.pre_tool_call"] == before + 1
    assert call("skill_view", {"name": "demo-skill"})["success"] is True
    # odd arguments, unknown keyword arguments, wrong types: nothing raises
    assert plugin.pre_tool_call(tool_name="skill_view", args=None, surprise=1) is None
    assert plugin.pre_tool_call(tool_name="skill_manage", args="not a dict") is None
    assert plugin.post_tool_call(tool_name="skill_view", args={"name": 3}, status="ok", duration_ms="x") is None
    assert plugin.pre_llm_call(user_message=object(), telemetry_schema_version="hermes.observer.v1") is None
    assert plugin.on_session_end(session_id=None, completed=True, interrupted=False, extra=[1]) is None


def test_a_turn_outcome_goes_to_the_loaded_skill_version(home, guard):
    from sil_core import config_version
    from sil_hermes import plugin

    rt = attach(guard)
    v1 = config_version(rt.adapter.get_config("demo-skill"))
    call("skill_view", {"name": "demo-skill"}, session_id="s1")
    call("skill_view", {"name": "missing-reference"}, session_id="s1")  # a tool error the skill does not cause
    plugin.on_session_end(session_id="s1", completed=True, interrupted=False)
    call("skill_view", {"name": "demo-skill"}, session_id="s2")
    plugin.on_session_end(session_id="s2", completed=False, interrupted=True)
    rt.drain()
    guard.flush()
    calls = guard.store.read_calls("hermes:demo-skill", limit=10)
    outcomes = sorted((c.outcome, json.loads(c.context)["content_version"]) for c in calls)
    assert outcomes == [("interrupted", v1), ("ok", v1)]


def test_a_slash_command_invocation_counts_as_a_load(home, guard):
    from agent.skill_commands import build_skill_invocation_message
    from sil_hermes import plugin

    rt = attach(guard)
    message = build_skill_invocation_message("/demo-skill", "what is it?")
    plugin.pre_llm_call(user_message=message, session_id="s3", turn_id="t1")
    plugin.on_session_end(session_id="s3", completed=True, interrupted=False)
    rt.drain()
    guard.flush()
    [record] = guard.store.read_calls("hermes:demo-skill", limit=10)
    assert record.outcome == "ok" and json.loads(record.context)["source"] == "slash"


def test_cli_history_and_rollback_to_a_version(home, guard, tmp_path, capsys):
    from sil_core.cli import main

    rt = attach(guard)
    call("skill_manage", PATCH)
    rt.drain()
    guard.flush()
    change = guard.change("hermes:demo-skill")
    url = f"sqlite:///{tmp_path / 'sil.db'}"
    assert main(["hermes", "history", "demo-skill", "--store", url]) == 0
    out = capsys.readouterr().out
    assert change.baseline_version in out and change.candidate_version in out and "foreground" in out
    assert main(["hermes", "rollback", "demo-skill", "--store", url, "--to", change.baseline_version]) == 0
    assert "rolled back change" in capsys.readouterr().out
    assert (home / "skills" / "demo-skill" / "SKILL.md").read_bytes() == SKILL_V1.encode()
    assert (home / "config.yaml").read_bytes() == CONFIG_V1.encode()
    assert main(["hermes", "rollback", "demo-skill", "--store", url, "--to", "vnope"]) == 1


def test_without_hermes_the_import_names_the_extra():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('hermes_constants', 'tools', 'model_tools', 'run_agent'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import sil_hermes\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("MissingExtra") and "sil-guard[hermes]" in out.stdout


def test_importing_sil_hermes_does_not_import_hermes_modules():
    code = ("import sys, sil_hermes, sil_hermes.cli;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'model_tools','run_agent','tools','agent','hermes_cli','hermes_constants'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_deleted_skill_comes_back_and_a_created_one_stays(home, guard):
    from sil_core import config_version

    rt = attach(guard)
    skill = home / "skills" / "demo-skill"
    assert call("skill_manage", {"action": "delete", "name": "demo-skill"})["success"] is True
    rt.drain()
    assert not skill.exists()
    assert guard.rollback("hermes:demo-skill") is True
    assert (skill / "SKILL.md").read_bytes() == SKILL_V1.encode()
    assert (skill / "references" / "faq.md").read_bytes() == b"Q: what? A: that.\n"

    new_md = "---\nname: fresh-skill\ndescription: New.\n---\nDo the new thing.\n"
    assert call("skill_manage", {"action": "create", "name": "fresh-skill", "content": new_md})["success"] is True
    rt.drain()
    # a created skill is its first version, not a change: nothing to roll back
    assert guard.change("hermes:fresh-skill") is None
    assert guard.view("hermes:fresh-skill", fresh=True).active == \
        config_version(rt.adapter.get_config("fresh-skill"))
    assert guard.rollback("hermes:fresh-skill") is False
    assert (home / "skills" / "fresh-skill" / "SKILL.md").read_text() == new_md


def test_a_queued_edit_never_rewrites_the_disk(home, guard):
    """The plugin proposes an edit Hermes already wrote: proposing it writes nothing, so an
    edit event handled late cannot undo what happened on disk since."""
    from sil_hermes.skills import EditedSkill, SkillConfigAdapter

    adapter = SkillConfigAdapter(home)
    v1 = adapter.get_config("demo-skill")
    v2_files = {**v1["files"], "SKILL.md": SKILL_V1.replace("one short sentence", "a limerick")}
    change = guard.propose("hermes:demo-skill", {"files": v2_files}, adapter=EditedSkill(adapter, v1), mode="switch")
    assert change.state in ("canary", "switched") and change.baseline_version != change.candidate_version
    assert (home / "skills" / "demo-skill" / "SKILL.md").read_bytes() == SKILL_V1.encode()


def test_a_rollback_decided_in_this_process_refuses_the_same_edit_at_once(home, guard):
    rt = attach(guard)
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    call("skill_manage", PATCH)
    rt.drain()
    assert guard.rollback("hermes:demo-skill") is True
    refused = call("skill_manage", PATCH)  # no 2 s wait: this process's own decision is known at once
    assert "would bring back version" in refused["error"]
    rt.drain()
    assert skill_md.read_bytes() == SKILL_V1.encode()
