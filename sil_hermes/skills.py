"""``SkillConfigAdapter``: one Hermes skill as a guarded config, versioned and restorable.

A skill's config is ``{"files": {path: text}, "config": {key: value}}``: every file of
its folder (SKILL.md and supporting files) plus the ``skills.config.*`` keys its
SKILL.md declares, as set in ``config.yaml``. Its version is the content hash of that
dict (:func:`sil_core.config_version`); versions live in the guard's store, outside the
skills folder, and big or binary files are named there by digest, their bytes stored
once in ``$HERMES_HOME/sil/blobs`` (see ``_blobs``).

A skill is named by its folder's name, wherever the folder is: ``skills/<name>``,
``skills/<category>/.../<name>`` or a ``skills.external_dirs`` folder; its target is
``hermes:<name>``. Hermes' ``skill_manage`` identifies a skill the same way (and refuses
to create a second skill of a name), and a name resolves to the folder ``skill_manage``
edits (:func:`~._skillfiles.find_skill_dir`: local before external, first found). A restore swaps the folder in atomically, writes the config keys back
(byte for byte when the rest of ``config.yaml`` did not change) and clears Hermes' skill
prompt caches.
"""

import base64
import copy
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from sil_core.adapters import merge_patch

from . import _compat
from ._blobs import GRACE_S, BlobStore
from ._configkeys import declared_keys, digest, parse_yaml, read_keys, write_keys
from ._skillfiles import canonical, external_dirs, find_skill_dir, read_files, replace_dir, text_of

__all__ = ("SkillConfigAdapter", "skill_of", "target_for")

_TARGET_PREFIX = "hermes:"
_KEEP_RAW = 8
_KEEP_DIRS = 256


def target_for(skill: str) -> str:
    """The guard target of a skill: ``hermes:<name>``."""
    return skill if skill.startswith(_TARGET_PREFIX) else _TARGET_PREFIX + skill


def skill_of(target: str) -> str:
    """The skill name of a target (or of a tool argument like ``category/name``)."""
    name = target[len(_TARGET_PREFIX):] if target.startswith(_TARGET_PREFIX) else target
    return name.rstrip("/").rsplit("/", 1)[-1]


class SkillConfigAdapter:
    """The ``ConfigAdapter`` contract for Hermes skills (``agent_id`` is a skill name or
    its ``hermes:<name>`` target).

    Args:
        hermes_home: Hermes' home folder; by default the one Hermes resolves at each call
            (``$HERMES_HOME`` or ``~/.hermes``).
    """

    def __init__(self, hermes_home: Optional[Union[str, os.PathLike]] = None) -> None:
        self._home = Path(hermes_home) if hermes_home is not None else None
        self._raw: Dict[str, bytes] = {}  # digest -> bytes of config.yaml seen, oldest first
        self._lock = threading.RLock()
        self._candidates: Dict[str, Dict[str, Any]] = {}  # skill -> config keys of its last change
        self._kept: Dict[str, set] = {}  # skill -> keys its last restore left as set by hand
        self._dirs: Dict[str, str] = {}  # skill -> its folder when not skills/<name> (last seen)
        self._roots: Tuple[str, List[Path]] = ("", [])  # (home, config.yaml digest) -> external dirs

    @property
    def home(self) -> Path:
        """The Hermes home this adapter works in."""
        return self._home if self._home is not None else _compat.hermes_home()

    @property
    def blobs(self) -> BlobStore:
        """Where the bytes of big and binary skill files are stored, once each."""
        return BlobStore(self.home / "sil" / "blobs")

    def skill_dir(self, agent_id: str) -> Path:
        """Where the skill's folder is, or was last seen (a deleted skill), or would be created."""
        return self._locate(skill_of(agent_id), self._read_yaml())[1]

    def get_config(self, agent_id: str) -> dict:
        """The skill's files and config keys as they are on disk now."""
        raw = self._read_yaml()
        folder = self._locate(skill_of(agent_id), raw)[0]
        files = read_files(folder, self.blobs)
        skill_md = text_of(files.get("SKILL.md"))
        keys = declared_keys(skill_md) if skill_md else []
        return {"files": files, "config": read_keys(parse_yaml(raw) or {}, keys) if keys else {}}

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        """Write the skill patched with ``config_patch`` (a shallow update of its dict)."""
        with self._lock:
            config = merge_patch(self.get_config(agent_id), config_patch)
            self._write(agent_id, config)
            self.note_candidate(agent_id, config)
        return True

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        """Restore ``backup_config``: the folder exactly, Hermes' caches, and the config keys
        the last change wrote. A key whose value is no longer the one that change gave it
        (set by hand since) is left as it is; without a known change, every key is restored."""
        with self._lock:
            self._write(agent_id, backup_config, self._candidates.get(skill_of(agent_id)))

    def is_restored(self, agent_id: str, backup_config: dict) -> bool:
        """Whether the skill is back at ``backup_config``: the same files, and every config
        key at its backup value or kept by the last restore (set by hand since the change)."""
        with self._lock:
            kept = self._kept.get(skill_of(agent_id), set())
        now = self.get_config(agent_id)
        backup = dict(backup_config.get("config") or {})
        have = dict(now["config"])
        return now["files"] == canonical(backup_config.get("files") or {}) and all(
            have.get(k) == backup.get(k) for k in set(have) | set(backup) if k not in kept)

    def note_candidate(self, agent_id: str, config: dict) -> None:
        """Record the config a change wrote (what a rollback of it restores from)."""
        with self._lock:
            self._candidates[skill_of(agent_id)] = copy.deepcopy(dict(config.get("config") or {}))

    def spec(self) -> Dict[str, Any]:
        """How to rebuild this adapter in another process (``sil hermes rollback``),
        with the latest bytes of ``config.yaml`` it saw, for byte-exact restores."""
        with self._lock:
            recent = list(self._raw.values())[-4:]
            dirs = dict(self._dirs)
        return {"kind": "hermes_skill", "hermes_home": str(self.home),
                "raw": [base64.b64encode(r).decode("ascii") for r in recent], "dirs": dirs}

    def remember(self, spec: Dict[str, Any]) -> None:
        """Learn the ``config.yaml`` bytes and skill folders another instance's :meth:`spec` carries."""
        with self._lock:
            for item in spec.get("raw") or ():
                raw = base64.b64decode(item)
                self._raw.setdefault(digest(raw), raw)
            for name, folder in (spec.get("dirs") or {}).items():
                self._dirs.setdefault(str(name), str(folder))

    def sweep_blobs(self, guard: Any, grace_s: float = GRACE_S) -> Tuple[int, int]:
        """Delete the stored blobs no version of a ``hermes:`` target in ``guard``'s store
        names, older than ``grace_s`` (a snapshot awaiting its write names blobs no version
        holds yet); returns ``(files, bytes)`` removed. Run it with the store this home's
        skills are guarded in."""
        keep = set()
        for _, row, _ in guard.store.kv_list("version"):
            if str(row.get("target", "")).startswith(_TARGET_PREFIX):
                files = (row.get("config") or {}).get("files") or {}
                keep.update(e["sha256"] for e in files.values() if isinstance(e, dict) and "sha256" in e)
        return self.blobs.sweep(keep, grace_s)

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "SkillConfigAdapter":
        """Rebuild an adapter from :meth:`spec`."""
        adapter = cls(spec.get("hermes_home"))
        adapter.remember(spec)
        return adapter

    # -- internals -------------------------------------------------------------------------
    def _locate(self, name: str, raw: bytes) -> Tuple[Optional[Path], Path]:
        """``(the skill's folder or None, where to write it)``, as Hermes resolves the name."""
        home = self.home
        skills = home / "skills"
        key = f"{home}\0{digest(raw)}"
        with self._lock:
            cached_key, roots = self._roots
        if cached_key != key:
            roots = []
            if b"external_dirs" in raw:
                try:
                    roots = external_dirs(home, parse_yaml(raw))
                except Exception:  # an unreadable config.yaml: Hermes sees no external dirs either
                    roots = []
            with self._lock:
                self._roots = (key, roots)
        folder = find_skill_dir([skills, *roots], name)
        with self._lock:
            if folder is not None and folder != skills / name:
                self._dirs.pop(name, None)
                self._dirs[name] = str(folder)
                while len(self._dirs) > _KEEP_DIRS:
                    self._dirs.pop(next(iter(self._dirs)))
            elif folder is not None:
                self._dirs.pop(name, None)
            last = self._dirs.get(name)
        return folder, folder or (Path(last) if last else skills / name)

    def _read_yaml(self) -> bytes:
        path = self.home / "config.yaml"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return b""
        with self._lock:
            key = digest(raw)
            self._raw.pop(key, None)
            self._raw[key] = raw  # most recent last
            while len(self._raw) > _KEEP_RAW:
                self._raw.pop(next(iter(self._raw)))
        return raw

    def _write(self, agent_id: str, config: dict, candidate: Optional[Dict[str, Any]] = None) -> None:
        current = self.get_config(agent_id)
        files = config.get("files") or {}
        if canonical(files) != current["files"]:
            replace_dir(self.skill_dir(agent_id), copy.deepcopy(files), self.home / "sil" / "staging", self.blobs)
        wanted = dict(config.get("config") or {})
        have = dict(current["config"])
        kept = set()
        if candidate is not None:  # only the keys still as the change left them
            missing = object()
            for key in set(wanted) | set(have):
                if have.get(key, missing) != candidate.get(key, missing):
                    kept.add(key)
                    if key in have:
                        wanted[key] = have[key]
                    else:
                        wanted.pop(key, None)
        with self._lock:
            self._kept[skill_of(agent_id)] = kept
        stale = set(have) - set(wanted)
        if wanted != have:
            with self._lock:
                seen = dict(self._raw)
            write_keys(self.home / "config.yaml", wanted, stale, seen)
        _compat.clear_skill_caches(self.home)


class EditedSkill:
    """The adapter of a change Hermes already made: its first ``get_config`` returns the
    snapshot taken before the write (the baseline), later calls read the disk; its first
    ``apply_config`` writes nothing (Hermes wrote the edit: writing it again from a queued
    event could undo whatever happened on disk since)."""

    def __init__(self, adapter: SkillConfigAdapter, before: dict) -> None:
        self.adapter = adapter
        self._before: Optional[dict] = before
        self._baseline = copy.deepcopy(before)
        self._applied = False

    def get_config(self, agent_id: str) -> dict:
        before, self._before = self._before, None
        return copy.deepcopy(before) if before is not None else self.adapter.get_config(agent_id)

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        self._before = None  # after a write through the adapter, the disk is the truth
        if not self._applied:
            self._applied = True
            self.adapter.note_candidate(agent_id, merge_patch(self._baseline, config_patch))
            return True
        return self.adapter.apply_config(agent_id, config_patch)

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        self._before = None
        self.adapter.rollback_config(agent_id, backup_config)

    def spec(self) -> Dict[str, Any]:
        return self.adapter.spec()

    def remember(self, spec: Dict[str, Any]) -> None:
        self.adapter.remember(spec)
