"""One canonical JSON form and its SHA-256 digest, for everything sil-guard hashes.

Config version ids (``v`` + 12 hex digits), patch hashes (16 hex digits, the key of a
rolled-back patch's cooldown) and trail event hashes (64 hex digits, the chain) are all
prefixes of :func:`digest` of the value's :func:`canonical_json`: keys sorted, no spaces,
non-ASCII text kept as UTF-8, and a value JSON cannot encode written as its ``repr``.

Stores written before this module keep verifying: version ids and trail hashes were
already computed with this form for JSON values; only patch hashes of patches with
non-ASCII text were computed with ``\\u`` escapes, and :func:`legacy_patch_hash` still
recognises those (see ``docs/architecture.md``, "Identifiers and digests").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ("canonical_json", "digest", "legacy_patch_hash", "patch_hash", "version_id")


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (sorted keys, compact, UTF-8, ``repr`` fallback)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def digest(value: Any) -> str:
    """The SHA-256 (64 hex digits) of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def version_id(config: Any) -> str:
    """A config's version id: ``v`` + the first 12 hex digits of its digest."""
    return "v" + digest(config)[:12]


def patch_hash(patch: Any) -> str:
    """A patch's hash (16 hex digits): what a rolled-back patch's cooldown is keyed by."""
    return digest(patch)[:16]


def legacy_patch_hash(patch: Any) -> str:
    """The hash a patch was given before this module (``\\u`` escapes for non-ASCII text):
    equal to :func:`patch_hash` for ASCII patches; still matched against stored cooldowns."""
    text = json.dumps(patch, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
