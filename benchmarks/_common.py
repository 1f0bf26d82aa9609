"""Helpers shared by the benchmark scripts (not part of sil-guard).

Stdlib only; psycopg is imported lazily, and only to reach PostgreSQL (the same driver
the ``postgres`` extra installs).
"""

from __future__ import annotations

import math
import os
import platform
import secrets
import sqlite3
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Sequence

#: where the PostgreSQL variants run unless ``--pg-url`` or ``$SIL_BENCH_PG`` says otherwise
DEFAULT_PG_URL = os.environ.get("SIL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def log(*parts: Any) -> None:
    """Progress goes to stderr, so ``--json`` leaves exactly one object on stdout."""
    print(*parts, file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def median_ci95(values: Sequence[float]) -> list[float] | None:
    """A distribution-free ~95 % confidence interval of the median (order statistics of a
    Binomial(n, 1/2)); ``None`` when there are too few values for one (n < 6)."""
    ordered = sorted(values)
    n = len(ordered)
    cdf, k = 0.0, 0
    for j in range(n + 1):  # k = largest j with P(B < j) <= 2.5 %
        if cdf > 0.025:
            break
        k = j
        cdf += math.comb(n, j) / 2**n
    if k < 1:
        return None
    return [ordered[k - 1], ordered[n - k]]


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine adds noise."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "loadavg_at_start": loadavg(),
        "sqlite": sqlite3.sqlite_version,
        "sil_guard": package_version("sil-guard"),
        "self_improving_loop": package_version("self-improving-loop"),
        "psycopg": package_version("psycopg"),
    }


def pg_probe(url: str) -> tuple[bool, str]:
    """``(reachable, server version or the reason it is not)``."""
    try:
        import psycopg
    except ImportError:
        return False, "psycopg is not installed (pip install 'sil-guard[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            return True, conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # any failure means "skip the PostgreSQL variant"
        return False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def pg_bench_schema(prefix: str = "sil_bench") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def pg_schema_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def pg_drop_schema(url: str, schema: str) -> str | None:
    """Drop a benchmark schema; returns an error text instead of raising."""
    if not schema.startswith("sil_bench"):  # never drop anything this script did not create
        return f"refusing to drop {schema!r}"
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
