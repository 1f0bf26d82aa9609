"""Big and binary skill files are stored once, by content, and restored exactly (the
plugin at Hermes' dispatcher, no model)."""

import hashlib
import os

from .test_plugin import PATCH, attach, call

TARGET = "hermes:demo-skill"
MB = 1 << 20


def add_asset(home, size=20 * MB, name="model.bin"):
    asset = home / "skills" / "demo-skill" / "assets" / name
    asset.parent.mkdir(parents=True, exist_ok=True)
    asset.write_bytes(os.urandom(size))
    return asset


def blob_of(home, data):
    sha = hashlib.sha256(data).hexdigest()
    return home / "sil" / "blobs" / sha[:2] / sha[2:]


def store_bytes(tmp_path):
    return sum(p.stat().st_size for p in tmp_path.glob("sil.db*"))


def patches(rt, n):
    """``n`` successive skill_manage patches of SKILL.md (each judged before the next)."""
    old = PATCH["old_string"]
    for i in range(n):
        new = f"Answer in {i + 2} long paragraphs."
        got = call("skill_manage", {"action": "patch", "name": "demo-skill", "old_string": old, "new_string": new})
        assert got["success"] is True, got
        rt.drain()
        old = new


def test_a_20_mb_asset_and_three_patches_grow_the_store_by_less_than_1_mb(home, guard, tmp_path):
    asset = add_asset(home)
    data = asset.read_bytes()
    rt = attach(guard)
    call("skill_view", {"name": "demo-skill"})
    rt.drain()
    guard.flush()
    start = store_bytes(tmp_path)
    patches(rt, 3)
    rt.drain()
    guard.flush()
    assert store_bytes(tmp_path) - start < MB
    blobs = [p for p in (home / "sil" / "blobs").rglob("*") if p.is_file()]
    assert [b.read_bytes() == data for b in blobs] == [True]  # one copy, whatever the versions
    asset.write_bytes(b"broken")  # damaged outside the guard, too
    assert guard.rollback(TARGET) is True
    assert asset.read_bytes() == data
    assert "Answer in one short sentence." in (home / "skills" / "demo-skill" / "SKILL.md").read_text()


def test_a_missing_blob_fails_the_restore_and_leaves_the_skill_untouched(home, guard):
    asset = add_asset(home, size=2 * MB)
    first = asset.read_bytes()
    rt = attach(guard)
    assert call("skill_manage", PATCH)["success"] is True
    rt.drain()
    second = os.urandom(2 * MB)
    asset.write_bytes(second)  # the asset changes outside the guard
    skill = (home / "skills" / "demo-skill" / "SKILL.md").read_bytes()
    blob_of(home, first).unlink()
    assert guard.rollback(TARGET) is False
    change = guard.change(TARGET)
    assert change.state == "restore_failed" and "missing" in change.restore_error
    assert asset.read_bytes() == second  # never a truncated file
    assert (home / "skills" / "demo-skill" / "SKILL.md").read_bytes() == skill


def test_an_unchanged_big_file_is_hashed_once_and_small_text_stays_inline(home, monkeypatch):
    import builtins

    from sil_core import config_version
    from sil_hermes import SkillConfigAdapter
    import sil_hermes._blobs as blobs

    adapter = SkillConfigAdapter(home)
    assert config_version(adapter.get_config("demo-skill")) == "v6490b92d9be4"  # the version before blobs
    asset = add_asset(home, size=1 * MB)
    opened = []
    real_open = builtins.open

    def counting_open(path, *a, **kw):
        opened.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(blobs, "open", counting_open, raising=False)
    first = adapter.get_config("demo-skill")
    assert first["files"]["assets/model.bin"] == {"sha256": hashlib.sha256(asset.read_bytes()).hexdigest(),
                                                  "size": MB}
    assert isinstance(first["files"]["SKILL.md"], str)
    assert opened.count(str(asset)) == 1
    assert adapter.get_config("demo-skill") == first
    assert opened.count(str(asset)) == 1  # a stat, not a read
    asset.write_bytes(os.urandom(MB))
    assert adapter.get_config("demo-skill") != first
    assert opened.count(str(asset)) == 2


def test_old_inline_versions_restore_and_unreferenced_blobs_are_swept(home, guard):
    import base64
    import time

    from sil_hermes import SkillConfigAdapter

    adapter = SkillConfigAdapter(home)
    asset = add_asset(home, size=MB)
    data = asset.read_bytes()
    legacy = adapter.get_config("demo-skill")
    legacy["files"]["assets/model.bin"] = {"base64": base64.b64encode(data).decode("ascii")}  # as stored before
    guard.adopt(TARGET, adapter.get_config("demo-skill"))
    other = b"\xffother"  # not UTF-8: a blob however small
    asset.write_bytes(other)
    adapter.get_config("demo-skill")  # stores the blob of ``other``, which no version names
    adapter.rollback_config(TARGET, legacy)
    assert asset.read_bytes() == data and adapter.is_restored(TARGET, legacy)
    old = time.time() - 3 * 86400
    for blob in (home / "sil" / "blobs").rglob("*"):
        os.utime(blob, (old, old))
    assert adapter.sweep_blobs(guard) == (1, len(other))
    assert blob_of(home, data).is_file() and not blob_of(home, other).exists()


def test_sil_hermes_gc_sweeps_from_the_command_line(home, guard, tmp_path, capsys):
    import time

    from sil_core.cli import main
    from sil_hermes import SkillConfigAdapter

    adapter = SkillConfigAdapter(home)
    asset = add_asset(home, size=MB)
    guard.adopt(TARGET, adapter.get_config("demo-skill"))
    kept = asset.read_bytes()
    asset.write_bytes(b"\xffunreferenced")
    adapter.get_config("demo-skill")  # its blob is stored; no version names it
    guard.flush()
    old = time.time() - 3 * 86400
    for blob in (home / "sil" / "blobs").rglob("*"):
        os.utime(blob, (old, old))
    assert main(["hermes", "gc", "--store", f"sqlite:///{tmp_path / 'sil.db'}", "--hermes-home", str(home)]) == 0
    assert "removed 1 stored files" in capsys.readouterr().out
    assert blob_of(home, kept).is_file() and not blob_of(home, b"\xffunreferenced").exists()
