"""The curated public surface, and the stdlib-only promise of sil_core."""

from __future__ import annotations

import subprocess
import sys

import sil_core


def test_all_is_the_sorted_public_surface():
    import types

    public = sorted(
        n for n in dir(sil_core)
        if not n.startswith("_") and n != "annotations" and not isinstance(getattr(sil_core, n), types.ModuleType)
    )
    assert sorted(sil_core.__all__) == public


def test_sil_core_imports_only_the_standard_library():
    code = (
        "import sys, sil_core, sil_core.cli, sil_core.store.sqlite, sil_core.store.jsonl;"
        "import sil_core.store.postgres;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'langgraph','langchain_core','hermes','psycopg','opentelemetry','run_agent','model_tools'});"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_sil_langgraph_surface_and_lazy_framework_import():
    code = (
        "import sys, sil_langgraph;"
        "assert sorted(sil_langgraph.__all__) == ['ConfigurableAdapter', 'GuardCallbackHandler', 'GuardMiddleware', 'GuardNode', 'StoreConfigAdapter',"
        " 'add_guarded_node', 'guarded_node', 'node_config'];"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'langgraph', 'langchain_core'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sil_hermes_surface_without_importing_hermes_itself():
    """``import sil_hermes`` checks that Hermes is installed but imports none of it (Hermes'
    ``model_tools`` takes ~0.7 s and creates ``$HERMES_HOME``); sil_core and sil_langgraph
    never import sil_hermes."""
    code = (
        "import sys, sil_core, sil_langgraph;"
        "assert 'sil_hermes' not in sys.modules;"
        "import sil_hermes;"
        "assert sorted(sil_hermes.__all__) == ['SkillConfigAdapter', 'SkillGuard', 'register'];"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'hermes_cli', 'hermes_constants', 'model_tools', 'run_agent', 'tools', 'agent'}))"
    )
    try:
        import importlib.util

        if importlib.util.find_spec("model_tools") is None:
            raise ImportError
    except ImportError:
        import pytest

        pytest.skip("hermes-agent is not installed (pip install 'sil-guard[hermes]', Python >= 3.11)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sil_hermes_without_hermes_names_the_extra():
    code = (
        "import importlib.util, sys;"
        "real = importlib.util.find_spec;"
        "importlib.util.find_spec = lambda name, *a: None if name in ('model_tools', 'hermes_constants') else real(name, *a);"
        "\ntry:\n import sil_hermes\nexcept ImportError as exc:\n print(type(exc).__name__, exc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("MissingExtra") and "sil-guard[hermes]" in out.stdout


# -- the extension surface ------------------------------------------------------------------------
EXTENSION_SURFACE = {
    "Guard": ("recorder", "view", "route", "change", "changes", "request", "adapter_for", "adapter_config", "record",
              "feedback", "versions", "rollback"),
    "Recorder": ("begin", "end", "put", "aput", "plain", "ok"),
    "TargetView": ("versioned", "serving", "pinned", "route", "active", "change_id", "state", "mode", "weight",
                   "baseline", "candidate", "baseline_config", "candidate_config", "active_config", "started"),
    "integration": ("BackgroundWorker", "Change", "Mode", "State", "Arm", "IN_FLIGHT", "SERVING", "Recorder",
                    "TargetView", "atomic_write", "bucket", "error_message", "fail_open", "is_coroutine_callable",
                    "judge_result", "new_id", "report"),
}


def test_the_extension_surface_is_there():
    from sil_core import Guard, integration
    from sil_core.recorder import Recorder
    from sil_core.routing import TargetView

    owners = {"Guard": Guard, "Recorder": Recorder, "TargetView": TargetView, "integration": integration}
    missing = [f"{owner}.{name}" for owner, names in EXTENSION_SURFACE.items() for name in names
               if not hasattr(owners[owner], name) and name not in getattr(owners[owner], "__slots__", ())]
    assert missing == []
    assert sorted(integration.__all__) == sorted(EXTENSION_SURFACE["integration"] + ("Begun",))


def _boundary_violations() -> list[str]:
    """Underscore names the integrations take from sil_core: imports of an underscore module
    or name, and underscore attributes read off a guard or a store."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "sil_langgraph").glob("*.py")) + sorted((root / "sil_hermes").glob("*.py")) \
        + [root / "sil_core" / "cli.py", root / "sil_core" / "cli_actions.py"]
    guardish = {"guard", "store", "g"}
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        in_core = path.parent.name == "sil_core"
        for node in ast.walk(tree):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                core = module.startswith("sil_core") or (in_core and node.level > 0)
                parts = module.split(".")
                if core and any(p.startswith("_") for p in parts):
                    found.append(f"{where}: from {'.' * node.level}{module} import ...")
                elif core:
                    found += [f"{where}: import {a.name} from {module}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Import):
                found += [f"{where}: import {a.name}" for a in node.names
                          if a.name.startswith("sil_core") and any(p.startswith("_") for p in a.name.split("."))]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                name = base.attr if isinstance(base, ast.Attribute) else base.id if isinstance(base, ast.Name) else ""
                if name in guardish:
                    found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_integrations_use_only_the_public_surface_of_sil_core():
    """sil_langgraph, sil_hermes and the sil CLI import no underscore name from sil_core and
    touch no underscore attribute of a guard or a store (README, "Writing an integration")."""
    assert _boundary_violations() == []


def test_the_boundary_check_catches_a_violation(tmp_path, monkeypatch):
    """The check above can fail: an underscore import and a private attribute are found."""
    import ast

    code = "from sil_core._internal.ids import new_id\nfrom sil_core.calls import _current\nx = guard._writer\n"
    tree = ast.parse(code)
    kinds = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, (ast.ImportFrom, ast.Attribute))]
    assert kinds.count("ImportFrom") == 2 and "Attribute" in kinds
    from pathlib import Path

    fake = Path(__file__).resolve().parents[1] / "sil_hermes" / "_boundary_probe.py"
    fake.write_text(code)
    try:
        found = _boundary_violations()
    finally:
        fake.unlink()
    assert len([f for f in found if "_boundary_probe" in f]) == 3
