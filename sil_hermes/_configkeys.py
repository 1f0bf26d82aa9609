"""A skill's ``skills.config.*`` keys in Hermes' ``config.yaml``: read, and written back
byte for byte when the file is otherwise unchanged.

Values are read raw (no defaults, no ``~`` expansion): a key that is not set is absent
from the dict. A write first rewrites only the lines of the keys it changes (every other
byte kept) when they sit in block style; failing that it looks for bytes of ``config.yaml``
seen earlier that parse to exactly the wanted document and writes those (comments and
layout included); failing that it edits only the skill's keys with ruamel's round-trip mode (comments kept).
"""

import hashlib
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List

from sil_core.integration import atomic_write

__all__ = ("declared_keys", "parse_yaml", "read_keys", "write_keys")

PREFIX = ("skills", "config")


def parse_yaml(raw: bytes) -> Any:
    import yaml

    return yaml.safe_load(raw.decode("utf-8")) if raw.strip() else {}


def declared_keys(skill_md: str) -> List[str]:
    """The keys a SKILL.md declares under ``metadata.hermes.config``."""
    if not skill_md.startswith("---"):
        return []
    end = skill_md.find("\n---", 3)
    if end < 0:
        return []
    try:
        front = parse_yaml(skill_md[3:end].encode("utf-8")) or {}
    except Exception:
        return []
    config = ((front.get("metadata") or {}).get("hermes") or {}).get("config") if isinstance(front, dict) else None
    return [str(v["key"]) for v in config or () if isinstance(v, dict) and v.get("key")]


def _get(doc: Any, parts: Iterable[str]) -> Any:
    for part in parts:
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


_MISSING = object()


def read_keys(doc: Any, keys: Iterable[str]) -> Dict[str, Any]:
    """``{key: value}`` of the keys set under ``skills.config`` in a parsed config."""
    out = {}
    for key in keys:
        value = _get(doc, (*PREFIX, *key.split(".")))
        if value is not _MISSING:
            out[key] = value
    return out


def _apply(doc: Any, values: Dict[str, Any], remove: Iterable[str]) -> Any:
    """Set ``values`` and delete ``remove`` under ``skills.config`` of a (ruamel or plain) doc."""
    for key in remove:
        parts = (*PREFIX, *key.split("."))
        parent = _get(doc, parts[:-1])
        if isinstance(parent, dict) and parts[-1] in parent:
            del parent[parts[-1]]
    for key, value in values.items():
        node = doc
        parts = (*PREFIX, *key.split("."))
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return doc


def write_keys(path: Path, values: Dict[str, Any], remove: Iterable[str], seen: Dict[str, bytes]) -> bool:
    """Make ``skills.config`` hold ``values`` and not ``remove``; ``True`` if the file changed.

    ``seen`` maps SHA-256 digests to earlier bytes of the file (tried first, for a byte-exact restore)."""
    remove = [k for k in remove if k not in values]
    raw = path.read_bytes() if path.exists() else b""
    current = parse_yaml(raw) or {}
    if read_keys(current, values) == values and not read_keys(current, remove):
        return False
    import copy

    wanted = _apply(copy.deepcopy(current), values, remove)
    data = _edit_lines(raw, values, remove, wanted)
    for old in [] if data is not None else reversed(list(seen.values())):
        try:
            if parse_yaml(old) == wanted:
                data = old
                break
        except Exception:
            continue
    if data is None:
        data = _round_trip(raw, values, remove)
    atomic_write(path, data)
    return True


_KEY_LINE = re.compile(r"""^( *)("[^"]*"|'[^']*'|[^\s#'"{\[\-][^:#]*?)[ \t]*:(?=\s|$)(.*?)(\r?\n)?$""")


def _unquote(name: str) -> str:
    return name[1:-1] if name[:1] in "'\"" and name[-1:] == name[:1] else name


def _find(lines: List[str], parts: tuple) -> Any:
    """``(first, end, match)`` of a key's line and its value's continuation lines, or ``None``."""
    stack: List[tuple] = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _KEY_LINE.match(line)
        indent = len(line) - len(line.lstrip(" "))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m is None:
            continue
        stack.append((indent, _unquote(m.group(2).strip())))
        if tuple(n for _, n in stack) == parts:
            end = i + 1
            while end < len(lines):
                nxt = lines[end]
                if nxt.strip() and not nxt.lstrip().startswith("#") and len(nxt) - len(nxt.lstrip(" ")) <= indent:
                    break
                end += 1
            while end > i + 1 and not lines[end - 1].strip():  # trailing blank lines stay
                end -= 1
            return i, end, m
    return None


def _inline(value: Any) -> str:
    import yaml

    text = yaml.safe_dump([value], default_flow_style=True, width=10 ** 9, allow_unicode=True).strip()
    return text[1:-1]


def _edit_lines(raw: bytes, values: Dict[str, Any], remove: Iterable[str], wanted: Any) -> Any:
    """``raw`` with only the lines of the changed keys rewritten, if that yields ``wanted``."""
    try:
        lines = raw.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None
    current = parse_yaml(raw) or {}
    for key in remove:
        found = _find(lines, (*PREFIX, *key.split(".")))
        if found is None:
            return None
        del lines[found[0]:found[1]]
    for key, value in values.items():
        if read_keys(current, [key]) == {key: value}:
            continue
        found = _find(lines, (*PREFIX, *key.split(".")))
        if found is None:
            return None
        i, end, m = found
        line = lines[i]
        head = line[: m.start(3)]
        rest, newline = m.group(3), m.group(4) or ""
        lead = rest[: len(rest) - len(rest.lstrip(" \t"))] or " "
        candidates = [head + lead + _inline(value) + newline]
        if end == i + 1 and " #" in rest:  # keep a trailing comment, and its spacing
            before = rest[: rest.index(" #")]
            if before.strip():
                tail = before[len(before.rstrip()):] + rest[rest.index(" #"):]
                candidates.insert(0, head + lead + _inline(value) + tail + newline)
        for candidate in candidates:
            trial = lines[:i] + [candidate] + lines[end:]
            try:
                if read_keys(parse_yaml("".join(trial).encode("utf-8")) or {}, [key]) == {key: value}:
                    lines = trial
                    break
            except Exception:
                continue
        else:
            return None
    data = "".join(lines).encode("utf-8")
    try:
        return data if parse_yaml(data) == wanted else None
    except Exception:
        return None


def _round_trip(raw: bytes, values: Dict[str, Any], remove: Iterable[str]) -> bytes:
    import io

    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments and key order survive
    doc = yaml.load(raw.decode("utf-8")) if raw.strip() else None
    if doc is None:
        doc = {}
    _apply(doc, values, remove)
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue().encode("utf-8")


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()
