"""Skills in nested category folders and in ``skills.external_dirs`` are versioned like
top-level ones: target ``hermes:<folder name>``, the folder Hermes' ``skill_manage``
edits (the plugin at Hermes' dispatcher, no model)."""

import textwrap

from .conftest import CONFIG_V1
from .test_plugin import attach, call
from .test_restore import tree


def skill_md(name, line="Search arXiv first."):
    return textwrap.dedent(f"""\
        ---
        name: {name}
        description: A {name} skill.
        ---
        # {name}

        {line}
        """)


PATCH = {"old_string": "Search arXiv first.", "new_string": "Never search arXiv."}


def make_skill(folder, name):
    (folder / "references").mkdir(parents=True)
    (folder / "SKILL.md").write_text(skill_md(name))
    (folder / "references" / "notes.md").write_text("keep me\n")
    return folder


def with_external_dirs(home, *dirs):
    listed = "".join(f"\n    - {d}" for d in dirs)
    (home / "config.yaml").write_text(CONFIG_V1 + f"  external_dirs:{listed}\n")


def patch_then_roll_back(guard, name, folder):
    """skill_manage patches skill ``name``: a guarded change; a rollback restores the folder."""
    before = tree(folder)
    rt = attach(guard)
    assert call("skill_manage", {"action": "patch", "name": name, **PATCH})["success"] is True
    rt.drain()
    change = guard.change(f"hermes:{name}")
    assert change is not None and change.in_flight and change.mode == "switch"
    assert tree(folder) != before
    assert guard.rollback(f"hermes:{name}") is True
    assert tree(folder) == before
    assert guard.verify_trail().ok
    return rt


def test_a_skill_two_category_levels_deep_is_versioned_and_restored(home, guard):
    folder = make_skill(home / "skills" / "research" / "papers" / "arxiv", "arxiv")
    patch_then_roll_back(guard, "arxiv", folder)
    versions = guard.versions("hermes:arxiv")
    assert versions[0]["config"]["files"]["SKILL.md"] == skill_md("arxiv")


def test_a_skill_in_an_external_dir_is_versioned_and_restored_in_place(home, guard, tmp_path):
    team = tmp_path / "team-skills"
    folder = make_skill(team / "science" / "arxiv-ext", "arxiv-ext")
    with_external_dirs(home, team)
    patch_then_roll_back(guard, "arxiv-ext", folder)
    assert not (home / "skills" / "arxiv-ext").exists()  # restored where it lives, not copied home
    assert not [p for p in team.rglob("*") if "sil" in p.name]  # no staging left behind


def test_a_local_skill_wins_over_an_external_one_of_the_same_name(home, guard, tmp_path):
    """As in Hermes: skill_manage edits the local folder; the guard versions that one."""
    team = tmp_path / "team-skills"
    external = make_skill(team / "dup", "dup")
    local = make_skill(home / "skills" / "tools" / "cli" / "dup", "dup")
    with_external_dirs(home, team)
    untouched = tree(external)
    patch_then_roll_back(guard, "dup", local)
    assert tree(external) == untouched


def test_a_deleted_nested_skill_is_restored_where_it_was_also_by_another_process(home, guard, tmp_path):
    from sil_hermes import SkillConfigAdapter
    from sil_hermes.cli import rollback

    folder = make_skill(home / "skills" / "research" / "papers" / "arxiv", "arxiv")
    before = tree(folder)
    rt = attach(guard)
    assert call("skill_manage", {"action": "delete", "name": "arxiv"})["success"] is True
    rt.drain()
    assert not folder.exists()
    fresh = SkillConfigAdapter(home)  # knows nothing of the skill: learns its folder from the change
    assert "rolled back" in rollback(f"sqlite:///{tmp_path / 'sil.db'}", "arxiv", fresh)
    assert folder.is_dir() and tree(folder) == before
    assert not (home / "skills" / "arxiv").exists()
