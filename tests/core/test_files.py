"""``atomic_write`` keeps the mode of the file it replaces and makes the rename durable."""

from __future__ import annotations

import json
import os
import stat

import pytest

from sil_core import AdaptiveThreshold, JsonFileConfigAdapter
from sil_core._internal import files
from sil_core._internal.files import atomic_write

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("perm", [0o644, 0o640, 0o660, 0o664])
def test_json_file_adapter_keeps_the_mode_through_apply_and_rollback(tmp_path, umask, perm):
    umask(0o077)  # a umask that would change the mode if it were applied to an existing file
    path = tmp_path / "agent.json"
    path.write_bytes(b'{"prompt": "v1"}\n')
    os.chmod(path, perm)
    adapter = JsonFileConfigAdapter(path)
    baseline = adapter.get_config("agent")
    assert adapter.apply_config("agent", {"prompt": "v2"}) is True
    assert json.loads(path.read_bytes()) == {"prompt": "v2"}
    assert mode(path) == perm
    adapter.rollback_config("agent", baseline)
    assert path.read_bytes() == b'{"prompt": "v1"}\n'
    assert mode(path) == perm


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_open_would_give(tmp_path, umask, mask, expected):
    umask(mask)
    adapter = JsonFileConfigAdapter(tmp_path / "configs", per_target=True)
    assert adapter.apply_config("writer", {"prompt": "hi"}) is True
    assert mode(tmp_path / "configs" / "writer.json") == expected
    with open(tmp_path / "plain.txt", "wb"):  # what a normal open() gives, for comparison
        pass
    assert mode(tmp_path / "plain.txt") == expected


def test_every_caller_keeps_the_mode_thresholds_file_too(tmp_path, umask):
    umask(0o022)
    thresholds = AdaptiveThreshold(data_dir=tmp_path)
    thresholds.set_manual_threshold("a", failure_threshold=3, cooldown_hours=1)
    path = tmp_path / "adaptive_thresholds.json"
    assert mode(path) == 0o644
    os.chmod(path, 0o640)
    thresholds.set_manual_threshold("b", failure_threshold=4, cooldown_hours=1)
    assert mode(path) == 0o640 and "b" in json.loads(path.read_text())


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced: list[tuple[bool, bool]] = []  # (is a folder, the new name already in place)
    real_fsync = os.fsync
    target = tmp_path / "c.json"

    def spy(fd):
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), target.exists()))
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", spy)
    atomic_write(target, b"{}\n")
    assert synced == [(False, False), (True, True)]  # the data first, then the folder after the rename


def test_no_temp_file_is_left_and_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    atomic_write(path, b"old")
    os.chmod(path, 0o640)

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and mode(path) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
