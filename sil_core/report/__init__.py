"""``sil report``: one self-contained HTML page of a store (inline CSS and SVG, no network).

* :func:`build_model` gathers a plain dict through the public API (``guard.changes``,
  ``guard.versions``, ``guard.trail``, ``guard.verify_trail``, the store's ``cells`` and
  bounded ``read_calls``), replaying each change's calls through the judge to draw its curves;
* :func:`render` turns it into the page;
* :func:`write_report` does both and writes the file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from .data import REPLAY_CAP, build_model
from .page import render

__all__ = ("REPLAY_CAP", "build_model", "render", "write_report")


def write_report(source: Any, path: str | os.PathLike, *, targets: Iterable[str] | None = None,
                 since: float | None = None, store_label: str | None = None,
                 replay_cap: int = REPLAY_CAP) -> dict:
    """Write the report of ``source`` (a ``Guard``, a ``Store`` or a store URL) to ``path``.

    Returns ``{"path", "bytes", "seconds", "changes", "targets"}``."""
    from ..guard import Guard
    from ..store import Store, open_store

    started = time.perf_counter()
    own_store = own_guard = None
    if isinstance(source, Guard):
        guard = source
        guard.flush()
    else:
        store = source if isinstance(source, Store) else open_store(str(source))
        own_store = None if isinstance(source, Store) else store
        guard = own_guard = Guard(store, worker_id="sil-report", flush_interval=60)
    try:
        if store_label is None:
            from ..cli import masked_url

            store_label = masked_url(guard.store.url)
        model = build_model(guard, targets=targets, since=since, store_label=store_label, replay_cap=replay_cap)
        page = render(model)
    finally:
        if own_guard is not None:
            own_guard.close()
        if own_store is not None:
            own_store.close()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return {"path": str(out.resolve()), "bytes": out.stat().st_size, "seconds": time.perf_counter() - started,
            "changes": len(model["summary"]), "targets": len(model["targets"])}
