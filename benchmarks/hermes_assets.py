#!/usr/bin/env python3
"""What a skill with a big asset costs the Hermes plugin: store growth, ``skill_manage``
time and peak memory.

A Hermes home holds ``demo-skill`` (a SKILL.md, a small reference and a ``--asset-mb``
MB binary asset). The plugin is loaded through its entry point and attached to a guard
on ``<home>/sil/sil.db``; the skill is viewed once (the first read of the asset), then
patched ``--patches`` times with ``skill_manage`` at Hermes' dispatcher
(``model_tools.handle_function_call``), the plugin's worker drained after each patch
(its work is off the calling thread, timed apart as ``worker_ms``). Reported:

* ``store_growth_mb``: growth of the guard's store (``sil.db`` and its WAL) over the
  patches, plus ``blobs_growth_mb`` (the blob folder, absent before blobs);
* ``skill_manage_ms``: the median wall time of one ``skill_manage`` call (its hooks
  included), and every call;
* ``peak_rss_mb``: the process's peak RSS at the end (``ru_maxrss``), and at start.

Run against any tree: ``python benchmarks/hermes_assets.py [--json]`` uses the
``sil_hermes`` of the repository the script sits in.

Run: ``python benchmarks/hermes_assets.py [--json] [--asset-mb 20] [--patches 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import log, machine_info, median, package_version  # noqa: E402

SKILL = """---
name: demo-skill
description: A demo skill.
---
# Demo
Answer in one short sentence.
"""
CONFIG = "plugins:\n  enabled: [sil]\nskills:\n  creation_nudge_interval: 0\n"
MB = 1 << 20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _size(paths: Any) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def run(asset_mb: int, patches: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="sil-bench-assets-"))
    try:
        skill = home / "skills" / "demo-skill"
        (skill / "assets").mkdir(parents=True)
        (skill / "references").mkdir()
        (skill / "SKILL.md").write_text(SKILL)
        (skill / "references" / "faq.md").write_text("Q: what? A: that.\n")
        with open(skill / "assets" / "model.bin", "wb") as f:
            for _ in range(asset_mb):
                f.write(os.urandom(MB))
        (home / "config.yaml").write_text(CONFIG)
        os.environ["HERMES_HOME"] = str(home)
        for var in [v for v in os.environ if v.endswith("_API_KEY") or v == "OPENAI_BASE_URL"]:
            os.environ.pop(var)
        rss_start = _rss_mb()
        import model_tools  # noqa: F401
        from hermes_cli.plugins import discover_plugins
        from model_tools import handle_function_call
        from sil_core import Guard
        from sil_hermes import SkillConfigAdapter, SkillGuard
        import sil_hermes._runtime as rt_mod

        discover_plugins(force=True)
        (home / "sil").mkdir(exist_ok=True)
        guard = Guard(f"sqlite:///{home / 'sil' / 'sil.db'}", flush_interval=0.05)
        SkillGuard(guard, adapter=SkillConfigAdapter())
        rt = rt_mod.runtime()
        rss_imported = _rss_mb()
        t0 = time.perf_counter()
        handle_function_call("skill_view", {"name": "demo-skill"})
        rt.drain(60)
        first_view_ms = (time.perf_counter() - t0) * 1000
        guard.flush()
        db = lambda: _size((home / "sil").glob("sil.db*"))  # noqa: E731
        blobs = lambda: _size((home / "sil" / "blobs").rglob("*"))  # noqa: E731
        db0, blobs0 = db(), blobs()
        manage_ms, worker_ms = [], []
        old = "Answer in one short sentence."
        for i in range(patches):
            new = f"Answer in {i + 2} long paragraphs."
            t0 = time.perf_counter()
            out = json.loads(handle_function_call("skill_manage", {"action": "patch", "name": "demo-skill",
                                                                   "old_string": old, "new_string": new}))
            t1 = time.perf_counter()
            rt.drain(120)
            t2 = time.perf_counter()
            if not out.get("success"):
                raise RuntimeError(f"skill_manage failed: {out}")
            manage_ms.append((t1 - t0) * 1000)
            worker_ms.append((t2 - t1) * 1000)
            old = new
        guard.flush()
        result = {
            "asset_mb": asset_mb, "patches": patches,
            "store_growth_mb": round((db() - db0) / MB, 3),
            "blobs_growth_mb": round((blobs() - blobs0) / MB, 3),
            "store_total_mb": round((db() + blobs()) / MB, 3),
            "skill_manage_ms": round(median(manage_ms), 2),
            "skill_manage_ms_each": [round(v, 2) for v in manage_ms],
            "worker_ms_each": [round(v, 1) for v in worker_ms],
            "first_view_ms": round(first_view_ms, 1),
            "peak_rss_mb": round(_rss_mb(), 1),
            "rss_after_import_mb": round(rss_imported, 1), "rss_at_start_mb": round(rss_start, 1),
        }
        guard.close()
        return result
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--asset-mb", type=int, default=20)
    parser.add_argument("--patches", type=int, default=3)
    args = parser.parse_args()
    log(f"sil_hermes from {ROOT}: {args.asset_mb} MB asset, {args.patches} patches")
    out = run(args.asset_mb, args.patches)
    out.update({"tree": str(ROOT), "hermes_agent": package_version("hermes-agent"), "machine": machine_info()})
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key in ("store_growth_mb", "blobs_growth_mb", "store_total_mb", "skill_manage_ms", "skill_manage_ms_each",
                    "worker_ms_each", "first_view_ms", "peak_rss_mb", "rss_after_import_mb"):
            print(f"{key:22} {out[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
