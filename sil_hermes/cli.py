"""``sil hermes history SKILL`` and ``sil hermes rollback SKILL [--to VERSION]``.

The store is the plugin's: ``$SIL_STORE``, else ``sil.store`` in Hermes' ``config.yaml``,
else ``<Hermes home>/sil/sil.db`` (``sil_core.store.default_store_source``). A bad ``sil:``
section in ``config.yaml`` stops the command with a message naming the key (exit 1).
"""

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence

from sil_core.cli_actions import actor

from . import _compat
from .skills import SkillConfigAdapter, target_for

__all__ = ("main",)


def _default_store(home: Path) -> str:
    """The plugin's store for this Hermes home (its ``sil:`` section checked first)."""
    from . import _settings

    _settings.load(home)
    url = _settings.store_source(home)[0]
    if url == f"sqlite:///{home / 'sil' / 'sil.db'}":
        (home / "sil").mkdir(parents=True, exist_ok=True)
    return url


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _guard(store, adapter: Optional[SkillConfigAdapter] = None):
    from sil_core import Guard

    return Guard(store, adapter=adapter, worker_id="cli:hermes", flush_interval=60, handle_sigterm=False)


def history(store, skill: str) -> List[tuple]:
    """``(version, created, writer, status)`` rows of a skill, oldest first."""
    from sil_core.integration import State

    target = target_for(skill)
    writers = {}
    for _, edit, _ in store.kv_list("hermes_edit"):
        if edit.get("skill") == skill:
            writers[edit["after"]] = edit.get("writer")
    guard = _guard(store)
    try:
        view = guard.view(target, fresh=True)
        active, pinned = view.active, view.pinned
        quarantined = {c.candidate_version for c in guard.changes(target) if c.state == State.ROLLED_BACK}
        versions = guard.versions(target)
    finally:
        guard.close()
    rows = []
    for v in versions:
        status = "active" if v["version"] == active else "quarantined" if v["version"] in quarantined else ""
        if status == "active" and pinned:
            status = "active, pinned (sil unpin " + target + ")"
        rows.append((v["version"], _when(v["created"]), writers.get(v["version"], "-"), status))
    return rows


def rollback(store, skill: str, adapter: SkillConfigAdapter, to: Optional[str] = None) -> str:
    """Roll the skill's change in flight back, or restore version ``to`` (default: the
    version before the latest change); returns what was done."""
    target = target_for(skill)
    guard = _guard(store, adapter)
    try:
        latest = guard.change(target, flush=False)
        if latest is not None and latest.adapter_spec:
            adapter.remember(latest.adapter_spec)
        done = []
        if latest is not None and latest.in_flight:
            if isinstance(latest.patch.get("config"), dict):  # restore only the keys it changed
                adapter.note_candidate(target, {"config": latest.patch["config"]})
            if not guard.rollback(target, actor=actor()):
                return f"{skill}: rollback of change {latest.id} not done (another worker holds it)"
            done.append(f"rolled back change {latest.id} to {latest.baseline_version}")
            if to is None or to == latest.baseline_version:
                return f"{skill}: " + "; ".join(done)
        version = to or (latest.baseline_version if latest else None)
        if not version:
            return f"{skill}: nothing to roll back (no recorded change)"
        guard.pin(target, version, adapter=adapter, actor=actor())
        done.append(f"restored {version} and pinned it: the agent's edits of this skill are refused until "
                    f"`sil unpin {target}`")
        return f"{skill}: " + "; ".join(done)
    finally:
        guard.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``sil hermes ...``."""
    parser = argparse.ArgumentParser(prog="sil hermes", description="Hermes skills under guard")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("history", "every version of a skill"), ("rollback", "restore a skill version"),
                           ("gc", "delete stored skill files no recorded version needs (older than a day)")):
        p = sub.add_parser(name, help=helptext)
        if name != "gc":
            p.add_argument("skill")
        p.add_argument("--store", default=None, help="store URL (default: $SIL_STORE, else sil.store in Hermes' "
                       "config.yaml, else <Hermes home>/sil/sil.db)")
        p.add_argument("--hermes-home", default=None, help="Hermes' home (default: $HERMES_HOME or ~/.hermes)")
        if name == "rollback":
            p.add_argument("--to", default=None, metavar="VERSION", help="the version to restore")
    args = parser.parse_args(argv)
    _compat.require()
    from sil_core import SilError
    from sil_core.store import open_store

    adapter = SkillConfigAdapter(args.hermes_home)
    try:
        store = open_store(args.store or _default_store(adapter.home))
    except SilError as exc:  # a bad sil: setting, a store that cannot be opened
        print(f"sil hermes: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "gc":
            guard = _guard(store, adapter)
            try:
                files, size = adapter.sweep_blobs(guard)
            finally:
                guard.close()
            print(f"removed {files} stored files ({size / 1e6:.1f} MB) that no recorded version needs")
            return 0
        if args.command == "history":
            rows = history(store, args.skill)
            if not rows:
                print(f"{args.skill}: no versions recorded")
                return 0
            table = [("version", "created (UTC)", "writer", "status")] + rows
            widths = [max(len(str(r[i])) for r in table) for i in range(4)]
            for r in table:
                print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
            return 0
        try:
            print(rollback(store, args.skill, adapter, args.to))
        except Exception as exc:  # a bad --to, a change that cannot be restored: say so, exit 1
            print(f"{args.skill}: rollback failed: {exc}")
            return 1
        return 0
    finally:
        store.close()
