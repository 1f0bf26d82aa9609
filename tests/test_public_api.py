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
        "assert sorted(sil_langgraph.__all__) == ['ConfigurableAdapter', 'GuardCallbackHandler', 'GuardNode', 'StoreConfigAdapter',"
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
