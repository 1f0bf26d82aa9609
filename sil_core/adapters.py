"""``ConfigAdapter``: the seam between "who decides" (the guard) and "who owns the config".

The contract is the seed's, keyword arguments included (the guard always calls with
``agent_id=``, ``config_patch=``, ``backup_config=``)::

    get_config(agent_id) -> dict
    apply_config(agent_id, config_patch) -> bool     # only True is success (None is not)
    rollback_config(agent_id, backup_config) -> None # restore exactly this config

Two adapters ship here: :class:`DictConfigAdapter` (configs in memory) and
:class:`JsonFileConfigAdapter` (one JSON file per target, written atomically, restored byte
for byte). A third, :class:`~sil_core.shared_adapter.SharedConfigAdapter`, keeps configs in
the guard's store, for more than one process.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._internal.files import atomic_write
from .digest import digest

__all__ = ("ConfigAdapter", "DictConfigAdapter", "JsonFileConfigAdapter", "merge_patch")


@runtime_checkable
class ConfigAdapter(Protocol):
    """What the guard needs to read, change and restore a target's config.

    Two optional methods refine a rollback (``docs/lifecycle.md``): ``remember(spec)``
    takes the adapter's stored spec before a restore in another process, and
    ``is_restored(agent_id, backup_config) -> bool`` replaces the check that
    ``get_config`` equals the backup afterwards (for an adapter that keeps edits made
    outside the guard)."""

    def get_config(self, agent_id: str) -> dict: ...

    def apply_config(self, agent_id: str, config_patch: dict) -> bool: ...

    def rollback_config(self, agent_id: str, backup_config: dict) -> None: ...


def merge_patch(config: dict, patch: dict) -> dict:
    """The config a patch produces: a shallow update of a deep copy (seed semantics)."""
    merged = copy.deepcopy(config)
    merged.update(copy.deepcopy(patch))
    return merged


class DictConfigAdapter:
    """Configs held in a dict (``configs[agent_id]``); thread-safe."""

    def __init__(self, configs: dict[str, dict] | None = None) -> None:
        self.configs: dict[str, dict] = configs if configs is not None else {}
        self._lock = threading.Lock()

    def get_config(self, agent_id: str) -> dict:
        with self._lock:
            return copy.deepcopy(self.configs.get(agent_id, {}))

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        with self._lock:
            self.configs[agent_id] = merge_patch(self.configs.get(agent_id, {}), config_patch)
        return True

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        with self._lock:
            self.configs[agent_id] = copy.deepcopy(backup_config)


class JsonFileConfigAdapter:
    """One JSON file per target: ``path`` itself, or ``directory/<agent_id>.json``.

    Writes are atomic (temp file, fsync, ``os.replace``): a reader never sees half a file.
    The exact bytes of every config read are remembered by content, so
    ``rollback_config`` restores the original file byte for byte, formatting included, not
    just an equal dict.
    """

    def __init__(self, path: str | os.PathLike, *, per_target: bool = False, indent: int = 2) -> None:
        self.path = Path(path)
        self.per_target = per_target
        self.indent = indent
        self._raw: dict[tuple[str, str], bytes] = {}  # (file, content digest) -> exact bytes
        self._lock = threading.RLock()

    def file_for(self, agent_id: str) -> Path:
        return self.path / f"{agent_id}.json" if self.per_target else self.path

    def get_config(self, agent_id: str) -> dict:
        file = self.file_for(agent_id)
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            return {}
        config = json.loads(raw)
        with self._lock:
            self._raw[(str(file), digest(config))] = raw
        return config

    def apply_config(self, agent_id: str, config_patch: dict) -> bool:
        with self._lock:
            current = self.get_config(agent_id)
            self._write(agent_id, json.dumps(merge_patch(current, config_patch), indent=self.indent).encode() + b"\n")
        return True

    def rollback_config(self, agent_id: str, backup_config: dict) -> None:
        with self._lock:
            raw = self._raw.get((str(self.file_for(agent_id)), digest(backup_config)))
            if raw is None:
                raw = json.dumps(backup_config, indent=self.indent).encode() + b"\n"
            self._write(agent_id, raw)

    def spec(self) -> dict[str, Any]:
        """How to rebuild this adapter in another process (used by ``sil rollback``),
        with the exact bytes of the configs read most recently, so the rebuilt adapter
        restores byte for byte too."""
        with self._lock:
            recent = list(self._raw.items())[-4:]
        return {"kind": "json_file", "path": str(self.path), "per_target": self.per_target, "indent": self.indent,
                "raw": [[file, key, base64.b64encode(raw).decode("ascii")] for (file, key), raw in recent]}

    def remember(self, spec: dict[str, Any]) -> None:
        """Learn the exact bytes carried by another instance's :meth:`spec` (so a worker
        that did not read the baseline itself still restores it byte for byte)."""
        with self._lock:
            for file, key, raw in spec.get("raw") or ():
                self._raw.setdefault((file, key), base64.b64decode(raw))

    def _write(self, agent_id: str, data: bytes) -> None:
        atomic_write(self.file_for(agent_id), data)


#: adapters of other packages a spec can rebuild: kind -> "module:Class" with a
#: ``from_spec`` classmethod, imported only when such a spec is met
SPEC_KINDS = {"hermes_skill": "sil_hermes.skills:SkillConfigAdapter"}


def adapter_from_spec(spec: dict[str, Any] | None, *, store: Any = None) -> ConfigAdapter | None:
    """Rebuild an adapter from its :meth:`spec` (``None`` when it cannot be rebuilt here,
    e.g. the package that owns it is not installed). ``store`` is the store the spec was
    read from: an adapter whose configs live in that store reuses it."""
    if not spec:
        return None
    kind = spec.get("kind")
    if kind == "json_file":
        adapter = JsonFileConfigAdapter(spec["path"], per_target=spec.get("per_target", False), indent=spec.get("indent", 2))
        adapter.remember(spec)
        return adapter
    if kind == "shared":
        from .errors import SilError
        from .shared_adapter import SharedConfigAdapter  # here: it imports this module

        try:
            return SharedConfigAdapter.from_spec(spec, store=store)
        except SilError as exc:  # a store that is gone, unreachable, or only in another process
            logging.getLogger("sil_core").warning("cannot rebuild the SharedConfigAdapter: %s", exc)
            return None
    if kind in SPEC_KINDS:
        module, _, name = SPEC_KINDS[kind].partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError:  # MissingExtra is an ImportError too
            return None
        return cls.from_spec(spec)
    return None
