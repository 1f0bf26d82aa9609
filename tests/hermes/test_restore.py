"""Exact restores: file modes, symlinks, empty folders, and only the config keys a change
changed (the plugin at Hermes' dispatcher, no model)."""

import os
import stat

from .conftest import CONFIG_V1, SKILL_V1
from .test_plugin import PATCH, attach, call

TARGET = "hermes:demo-skill"
RUN_SH = b"#!/bin/sh\necho run\n"


def tree(folder):
    """Every entry under ``folder``: kind, mode, link target or bytes."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(stat.S_IMODE(st.st_mode)))
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", oct(stat.S_IMODE(st.st_mode)), f.read())
    return out


def add_script_link_and_empty_folder(home):
    skill = home / "skills" / "demo-skill"
    (skill / "scripts").mkdir()
    (skill / "scripts" / "run.sh").write_bytes(RUN_SH)
    (skill / "scripts" / "run.sh").chmod(0o755)
    (skill / "references" / "latest.md").symlink_to("faq.md")  # a relative link, kept verbatim
    (skill / "bin").symlink_to("scripts", target_is_directory=True)  # a link to a folder
    (skill / "assets" / "cache").mkdir(parents=True)  # empty folders
    return skill


def test_a_rollback_restores_modes_links_and_empty_folders(home, guard):
    skill = add_script_link_and_empty_folder(home)
    before = tree(skill)
    rt = attach(guard)
    call("skill_manage", PATCH)
    assert call("skill_manage", {"action": "write_file", "name": "demo-skill", "file_path": "scripts/run.sh",
                                 "file_content": "#!/bin/sh\necho broken\n"})["success"] is True
    rt.drain()
    assert tree(skill) != before
    assert guard.rollback(TARGET) is True
    after = tree(skill)
    assert after == before
    assert after["scripts/run.sh"] == ("file", "0o755", RUN_SH)
    assert after["references/latest.md"] == ("link", "faq.md")
    assert after["bin"] == ("link", "scripts")
    assert after["assets/cache"][0] == "dir"
    assert guard.verify_trail().ok


def test_a_non_executable_file_has_one_version_whatever_its_mode(home):
    """skill_manage writes 0600, a checkout 0644: the same content is the same version."""
    from sil_core import config_version
    from sil_hermes import SkillConfigAdapter

    adapter = SkillConfigAdapter(home)
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    v1 = config_version(adapter.get_config("demo-skill"))
    skill_md.chmod(0o600)
    assert config_version(adapter.get_config("demo-skill")) == v1
    skill_md.chmod(0o755)
    assert config_version(adapter.get_config("demo-skill")) != v1


def two_keys(home):
    """demo-skill declares demo.style and demo.tone."""
    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    skill_md.write_text(SKILL_V1.replace("        default: terse\n",
                                         "        default: terse\n      - key: demo.tone\n"
                                         "        description: Tone\n        default: calm\n"))
    config = home / "config.yaml"
    config.write_text(CONFIG_V1 + "      tone: calm    # set by hand\n")
    return config


def test_a_rollback_restores_only_the_keys_the_change_changed(home, guard):
    from sil_hermes import SkillConfigAdapter

    config = two_keys(home)
    adapter = SkillConfigAdapter(home)
    assert adapter.get_config("demo-skill")["config"] == {"demo.style": "terse", "demo.tone": "calm"}
    guard.propose(TARGET, {"config": {"demo.style": "verbose", "demo.tone": "calm"}}, adapter=adapter,
                  mode="switch")
    text = config.read_text()
    assert "style:   verbose" in text  # the spacing of the line is kept
    config.write_text(text.replace("tone: calm    # set by hand", "tone: warm    # set by hand"))  # a person, later
    assert guard.rollback(TARGET) is True
    assert adapter.get_config("demo-skill")["config"] == {"demo.style": "terse", "demo.tone": "warm"}
    assert config.read_text() == CONFIG_V1 + "      tone: warm    # set by hand\n"


def test_a_key_set_by_hand_after_the_change_is_not_reverted(home, guard):
    from sil_hermes import SkillConfigAdapter

    config = two_keys(home)
    adapter = SkillConfigAdapter(home)
    guard.propose(TARGET, {"config": {"demo.style": "verbose", "demo.tone": "calm"}}, adapter=adapter,
                  mode="switch")
    config.write_text(config.read_text().replace("style:   verbose", "style:   formal"))
    assert guard.rollback(TARGET) is True
    assert adapter.get_config("demo-skill")["config"] == {"demo.style": "formal", "demo.tone": "calm"}


def test_spacing_and_comments_survive_a_restore_after_other_edits(home):
    from sil_hermes import SkillConfigAdapter

    adapter = SkillConfigAdapter(home)
    v1 = adapter.get_config("demo-skill")
    adapter.apply_config("demo-skill", {"config": {"demo.style": "verbose"}})
    path = home / "config.yaml"
    path.write_text(path.read_text() + "display:\n  skin:    dark   # aligned by hand\n")
    adapter.rollback_config("demo-skill", v1)
    assert path.read_text() == CONFIG_V1 + "display:\n  skin:    dark   # aligned by hand\n"
