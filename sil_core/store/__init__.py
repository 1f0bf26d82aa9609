"""Stores: one protocol, four backends selected by URL.

============================  ==============================================================
URL                           backend
============================  ==============================================================
``memory://``                 :class:`MemoryStore`, this process only
``jsonl:///relative/dir``     :class:`JsonlStore`, human-readable files (``jsonl:////abs``)
``sqlite:///relative.db``     :class:`SqliteStore`, the embedded default (``sqlite:////abs``)
``postgresql://user@host/db`` :class:`PostgresStore`, many workers on many hosts
============================  ==============================================================

Paths follow SQLAlchemy URLs: three slashes for a relative path, four for an absolute one.
A JSONL URL may name its file and line format: ``jsonl:///data?name=traces.jsonl`` reads a
``self-improving-loop`` trace file in place.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote

from ..errors import ConfigError
from ._paths import default_data_dir
from .base import Store
from .memory import MemoryStore

__all__ = ("DEFAULT_STORE_PATH", "MemoryStore", "Store", "default_data_dir", "default_store_url", "open_store")

#: where the embedded default store lives unless ``SIL_STORE`` says otherwise (read at
#: import; :func:`default_store_url` reads ``XDG_DATA_HOME`` again on every call)
DEFAULT_STORE_PATH = default_data_dir() / "sil.db"


def default_store_url() -> str:
    """``$SIL_STORE`` if set, else the embedded SQLite file ``$XDG_DATA_HOME/sil-guard/sil.db``."""
    return os.environ.get("SIL_STORE") or f"sqlite:///{default_data_dir() / 'sil.db'}"


def _path(url: str, scheme: str) -> str:
    rest = url[len(scheme) + 3 :]  # after "scheme://"
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(f"{url!r}: expected {scheme}:///relative/path or {scheme}:////absolute/path")
    return rest[1:]


def open_store(url: str | None = None, **options: Any) -> Store:
    """Open the store a URL names (the default store when ``url`` is ``None``).

    Extra keyword options go to the backend's constructor.
    """
    url = url or default_store_url()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme == "jsonl":
        from .jsonl import JsonlStore

        path, _, query = url.partition("?")
        for item in filter(None, query.split("&")):  # jsonl:///dir?name=traces.jsonl&dialect=seed
            key, _, value = item.partition("=")
            if key not in ("name", "dialect"):
                raise ConfigError(f"{url!r}: unknown option {key!r} (jsonl URLs take name= and dialect=)")
            options.setdefault(key, unquote(value))
        return JsonlStore(_path(path, "jsonl"), **options)
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(_path(url, "sqlite"), **options)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        from .postgres import PostgresStore

        return PostgresStore(url, **options)
    raise ConfigError(f"unknown store URL {url!r}: use memory://, jsonl:///dir, sqlite:///file or postgresql://...")
