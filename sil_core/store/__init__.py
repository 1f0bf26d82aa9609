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

The default store (``Guard()``, every ``sil`` command, the Hermes plugin) is chosen by
:func:`default_store_source`: ``$SIL_STORE``; else, when Hermes is in use, Hermes' store
(``sil.store`` in its ``config.yaml``, else ``<Hermes home>/sil/sil.db``); else the embedded
file ``$XDG_DATA_HOME/sil-guard/sil.db``. The core knows Hermes by environment and paths only
(it imports nothing of Hermes): its home is ``$HERMES_HOME``, else ``~/.hermes``
(``%LOCALAPPDATA%\\hermes`` on Windows), and Hermes is in use when ``$HERMES_HOME`` is set,
its ``config.yaml`` has a top-level ``sil:`` section, or its ``sil/`` folder exists (the
plugin, ``SkillGuard`` and ``sil hermes`` create it).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..errors import ConfigError
from ._paths import default_data_dir
from .base import Store
from .memory import MemoryStore

__all__ = ("DEFAULT_STORE_PATH", "XDG_DEFAULT", "MemoryStore", "Store", "default_data_dir", "default_store_source",
           "default_store_url", "hermes_home", "hermes_store_setting", "open_store")

#: where the embedded default store lives unless ``SIL_STORE`` says otherwise (read at
#: import; :func:`default_store_url` reads ``XDG_DATA_HOME`` again on every call)
DEFAULT_STORE_PATH = default_data_dir() / "sil.db"


#: the reason :func:`default_store_source` gives for the embedded default store
XDG_DEFAULT = "the default: no $SIL_STORE and no Hermes in use"
_SECTION = re.compile(r"^sil:[ \t]*(?:#.*)?$")
_STORE_KEY = re.compile(r"^([ \t]+)store:[ \t]*(.*?)(?:[ \t]+#.*)?[ \t]*$")
_ENV_REF = re.compile(r"\$\{([^}]+)\}")


def hermes_home() -> Path:
    """Hermes' home as Hermes resolves it from the environment: ``$HERMES_HOME``, else
    ``~/.hermes`` (``%LOCALAPPDATA%\\hermes`` on Windows); the core never imports Hermes."""
    value = os.environ.get("HERMES_HOME", "").strip()
    if value:
        return Path(value)
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", "").strip() or Path.home() / "AppData" / "Local") / "hermes"
    return Path.home() / ".hermes"


def hermes_store_setting(config: Path) -> tuple[bool, str | None]:
    """Whether Hermes' ``config.yaml`` has a top-level ``sil:`` section, and its ``store``
    value (``${VAR}`` expanded as Hermes does); read line by line, block style only, since
    the core has no YAML parser (``sil_hermes`` checks that its YAML reading agrees)."""
    try:
        lines = config.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False, None
    section, indent = False, None
    for line in lines:
        if not section:
            section = bool(_SECTION.match(line))
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            break
        width = len(line) - len(line.lstrip())
        indent = indent or width
        match = _STORE_KEY.match(line) if width == indent else None
        if match:
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            elif value in ("", "~", "null", "Null", "NULL"):
                return True, None
            return True, _ENV_REF.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value) or None
    return section, None


def default_store_source(home: str | os.PathLike | None = None) -> tuple[str, str]:
    """The default store URL and why it is the default (``sil status`` prints both).

    ``$SIL_STORE``; else, when Hermes is in use (``home`` given, ``$HERMES_HOME`` set, a
    top-level ``sil:`` section in its ``config.yaml``, or its ``sil/`` folder exists), its
    ``sil.store`` setting or ``<home>/sil/sil.db``; else ``$XDG_DATA_HOME/sil-guard/sil.db``.
    """
    if os.environ.get("SIL_STORE"):
        return os.environ["SIL_STORE"], "$SIL_STORE"
    folder = Path(home) if home is not None else hermes_home()
    config = folder / "config.yaml"
    section, configured = hermes_store_setting(config)
    if configured:
        return configured, f"sil.store in {config}"
    url = f"sqlite:///{folder / 'sil' / 'sil.db'}"
    if home is not None and folder != hermes_home():
        return url, f"Hermes home {folder}"
    if os.environ.get("HERMES_HOME", "").strip():
        return url, "$HERMES_HOME"
    if section:
        return url, f"the sil: section of {config}"
    if (folder / "sil").is_dir():
        return url, f"Hermes home {folder} (its sil/ folder exists)"
    if home is not None:
        return url, f"Hermes home {folder}"
    return f"sqlite:///{default_data_dir() / 'sil.db'}", XDG_DEFAULT


def default_store_url() -> str:
    """The default store's URL: ``$SIL_STORE``, else Hermes' store when Hermes is in use,
    else the embedded SQLite file ``$XDG_DATA_HOME/sil-guard/sil.db`` (see :func:`default_store_source`)."""
    return default_store_source()[0]


def _path(url: str, scheme: str) -> str:
    rest = url[len(scheme) + 3 :]  # after "scheme://"
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(f"{url!r}: expected {scheme}:///relative/path or {scheme}:////absolute/path")
    return rest[1:]


def open_store(url: str | None = None, **options: Any) -> Store:
    """Open the store a URL names (the default store when ``url`` is ``None``).

    Extra keyword options go to the backend's constructor.
    """
    if url is None:
        url, source = default_store_source()
        if source not in ("$SIL_STORE", XDG_DEFAULT) and not source.startswith("sil.store"):
            Path(_path(url, "sqlite")).expanduser().parent.mkdir(parents=True, exist_ok=True)  # Hermes' sil/
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
