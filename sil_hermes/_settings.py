"""The ``sil:`` section of Hermes' ``config.yaml``: the store, rollout policy, change mode
and notifiers of the guard the plugin and ``SkillGuard`` share.

.. code-block:: yaml

    sil:
      store: sqlite:////home/me/.hermes/sil/sil.db  # default: $SIL_STORE, else <Hermes home>/sil/sil.db
      mode: canary                 # or switch: changes proposed without a mode (the agent's edits: switch)
      min_calls: 30                # calls per arm before a verdict other than the tripwire
      tripwire_consecutive: 5      # consecutive failing turns that roll an edit back at once
      success_tolerance: 0.02      # an acceptable drop in success rate (absolute)
      latency_tolerance: 0.2       # an acceptable slowdown (0.2 = +20 %)
      notifiers: [log, {webhook: "${SIL_WEBHOOK}"}]
      prices: {gpt-4o-mini: [0.15, 0.60]}  # USD per million tokens in, out: a turn's cost_usd

String values expand ``${VAR}`` as Hermes does. A bad section raises :class:`ConfigError`
naming the key and what it accepts: ``SkillGuard()`` and ``sil hermes`` stop with it; the
plugin logs it once (a WARNING on ``sil_hermes``) and runs with the default settings, so a
typo never stops Hermes. The store follows the one rule of
:func:`sil_core.store.default_store_source`, which reads ``sil.store`` without YAML: the
section must be in block style for that key (checked here).
"""

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sil_core import ConfigError, LoggingNotifier, PriceTable, RolloutPolicy, WebhookNotifier
from sil_core.store import default_store_source, hermes_store_setting

__all__ = ("KEYS", "Settings", "guard_for", "load", "price_table", "store_source")

_log = logging.getLogger("sil_hermes")
_ENV_REF = re.compile(r"\$\{([^}]+)\}")
_SCHEMES = ("memory://", "jsonl:///", "sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")
_MODES = ("canary", "switch")
#: every key of the ``sil:`` section, with what it accepts (said in an error)
KEYS: Dict[str, str] = {
    "store": "a store URL (memory://, jsonl:///dir, sqlite:///file or postgresql://...)",
    "mode": "'canary' or 'switch'",
    "min_calls": "an integer >= 1",
    "tripwire_consecutive": "an integer >= 1",
    "success_tolerance": "a number from 0 to 1",
    "latency_tolerance": "a number >= 0",
    "notifiers": "a list of 'log' and {webhook: URL} entries",
    "prices": "a mapping of model name to [input, output] US dollars per million tokens",
}


@dataclass(frozen=True)
class Settings:
    """The parsed ``sil:`` section (defaults: sil_core's own)."""

    store: Optional[str] = None
    mode: str = "canary"
    policy: Dict[str, Any] = field(default_factory=dict)
    notifiers: Tuple[Any, ...] = ()
    prices: Dict[str, Any] = field(default_factory=dict)


def _expand(value: Any) -> Any:
    """``${VAR}`` references expanded as Hermes expands its config (unset ones kept)."""
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value) if isinstance(value, str) else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(key: str, value: Any) -> Any:
    """``value`` if it is what ``key`` accepts, else ``None``."""
    if key == "store":
        ok = isinstance(value, str) and value.startswith(_SCHEMES)
    elif key == "mode":
        ok = value in _MODES
    elif key in ("min_calls", "tripwire_consecutive"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    elif key == "success_tolerance":
        ok = _number(value) and 0 <= value <= 1
    elif key == "latency_tolerance":
        ok = _number(value) and value >= 0
    elif key == "prices":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2 and all(_number(x) and x >= 0 for x in v)
            for k, v in value.items())
    else:
        ok = isinstance(value, list) and all(
            item == "log" or (isinstance(item, dict) and list(item) == ["webhook"] and isinstance(item["webhook"], str)
                              and item["webhook"].startswith(("http://", "https://"))) for item in value)
    return value if ok else None


def load(home: Path) -> Settings:
    """The ``sil:`` section of ``<home>/config.yaml`` (defaults when there is none); raises
    :class:`ConfigError` naming the file, the key and what it accepts."""
    import yaml

    path = Path(home) / "config.yaml"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    try:
        section = (yaml.safe_load(raw) or {}).get("sil") if raw.strip() else None
    except (yaml.YAMLError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a YAML mapping ({exc})".replace("\n", " ")) from exc
    if section is None:
        return Settings()
    if not isinstance(section, dict):
        raise ConfigError(f"sil in {path}: expected a mapping of settings ({', '.join(KEYS)}), got {section!r}")
    values: Dict[str, Any] = {}
    for key, value in section.items():
        if key not in KEYS:
            raise ConfigError(f"sil.{key} in {path}: unknown key; the keys are {', '.join(KEYS)}")
        value = _expand(value)
        if _check(key, value) is None:
            raise ConfigError(f"sil.{key} in {path}: expected {KEYS[key]}, got {value!r}")
        values[key] = value
    if "store" in values and hermes_store_setting(path)[1] != values["store"]:
        raise ConfigError(f"sil.store in {path}: write it in block style, on its own line under 'sil:' "
                          f"(store: URL), so that every sil command reads the same store")
    policy = {k: values[k] for k in ("min_calls", "tripwire_consecutive", "success_tolerance", "latency_tolerance")
              if k in values}
    try:
        RolloutPolicy(**policy)
    except ConfigError as exc:
        raise ConfigError(f"sil in {path}: {exc}") from exc
    notifiers = tuple("log" if item == "log" else item["webhook"] for item in values.get("notifiers", ()))
    return Settings(store=values.get("store"), mode=values.get("mode", "canary"), policy=policy, notifiers=notifiers,
                    prices=dict(values.get("prices") or {}))


def price_table(home: Path) -> Optional[PriceTable]:
    """The ``sil.prices`` of this Hermes home as a :class:`PriceTable` (``None`` without
    prices, or when the section is bad: ``guard_for`` says so)."""
    try:
        prices = load(home).prices
    except ConfigError:
        return None
    return PriceTable(prices) if prices else None


def store_source(home: Path) -> Tuple[str, str]:
    """The store every process and command of this Hermes home uses, and why (the core's rule)."""
    return default_store_source(home)


def _notifiers(settings: Settings) -> List[Any]:
    return [LoggingNotifier() if spec == "log" else WebhookNotifier(spec) for spec in settings.notifiers]


def guard_for(home: Path, *, strict: bool, worker_id: str) -> Any:
    """The guard of this Hermes home: its store, with the ``sil:`` settings. ``strict``
    raises a bad setting; otherwise it is logged once and the defaults are used."""
    from sil_core import Guard

    try:
        settings = load(home)
    except ConfigError as exc:
        if strict:
            raise
        _log.warning("sil-guard: %s. The sil plugin runs with the default settings.", exc)
        settings = Settings()
    url, _ = store_source(home)
    own = f"sqlite:///{Path(home) / 'sil' / 'sil.db'}"
    if url == own:
        (Path(home) / "sil").mkdir(parents=True, exist_ok=True)
    kwargs = {"policy": RolloutPolicy(**settings.policy), "mode": settings.mode, "notifiers": _notifiers(settings),
              "worker_id": worker_id}
    try:
        return Guard(url, **kwargs)
    except ConfigError as exc:  # a store URL that cannot be opened
        if strict or url == own:
            raise
        _log.warning("sil-guard: store %s: %s. The sil plugin records in %s instead.", url, exc, own)
        (Path(home) / "sil").mkdir(parents=True, exist_ok=True)
        return Guard(own, **kwargs)
