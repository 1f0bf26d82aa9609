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
