"""The on-disk format of the JSONL store, and the low-level file helpers it needs.

``calls.jsonl`` (UTF-8, one JSON object per line, ``ensure_ascii=False``; a lone
surrogate is written as a ``\\udXXX`` escape) holds two kinds of line:

* a **record line** is :meth:`CallRecord.to_dict`, so its first key is ``"id"``::

      {"id": "c1", "target": "agent", "ts": ..., ...}

  plus ``"feedback_success_ts"``/``"feedback_score_ts"`` (epoch seconds: when the
  feedback in ``feedback_success``/``feedback_score`` was given) when the record carries
  feedback that came before it (see ``pending.json``) or was folded in by a compaction,
  and ``"metrics"`` (``{"<name>": <float>}``) and ``"feedback_metrics"`` (late values,
  ``{"<name>": [<float>, <ts given>]}``) when it has any. A value that is not a finite
  number reads as absent.

* a **feedback line** is appended when late feedback arrives for a call already on disk::

      {"feedback": "<call id>", "success": true|false|null, "score": <float>|null, "ts": <float>,
       "metrics": {"<name>": <float>}}

  (``metrics`` only when the feedback has late metric values: per name, the latest given wins.)

  Readers fold it into the newest earlier record line with that id (``null`` leaves a
  field unchanged), so nothing is ever rewritten in place. ``ts`` is when the feedback was
  given: per field, a feedback line older than the field's current time is passed over (a
  writer appends only lines that change something, so folding in file order gives what the
  writer saw). Lines written before feedback had a time have no ``ts`` and fold in file
  order, over any time the field had.

* a **seed line** is a trace of ``self-improving-loop`` 0.1.x, the seed: an object with
  ``agent_id`` and no ``target`` (``{"agent_id", "task", "success", "duration_sec",
  "error", "context", "timestamp", ...}``, whatever keys its writer gave). It reads as a
  record (:func:`seed_record`): target = ``agent_id``, ts from ``timestamp`` (or the
  legacy ``start_time``; naive means local time, as the seed wrote it), duration from
  ``duration_sec``, outcome ``ok``/``error`` from ``success``, error message from
  ``error``, and the context is the whole trace, so :func:`seed_view` gives it back
  unchanged. Its id is ``seed:line:`` plus a hash of the line's bytes (the N-th identical
  line gets ``~N`` appended), stable across reads. A store of the **seed dialect**
  (``JsonlStore(dialect="seed")``) writes every record as a seed line: a seed trace as it
  came, any other call as a seed trace plus a ``"_sil"`` object with the fields the seed
  has no key for (``id``, ``ts``, ``outcome``, ``version``, ...), which reading restores.

Blank lines are ignored. Any other line that does not parse (a crash's torn tail, a bad
hand edit) is corrupt: skipped and counted, never raised. A last line without its final
newline is a torn write and counts as corrupt.

``aggregates.json`` is one compact JSON object::

    {"format": 2, "epoch": N, "calls": [st_ino, size] | null, "cells": [row, ...]}

where each row is ``[target, version, arm, hour, values, hist]`` (:meth:`CellTable.to_rows`:
``hour`` is ``ts // 3600`` or ``-1`` for the all-time cell, ``values`` the numeric fields of
a :class:`~sil_core.aggregates.Cell` in storage order, ``hist`` the latency histogram as
``{"<bin>": count}``), followed, in a cell whose calls carry metrics, by ``metrics``:
``{"<name>": [n, sum, sumsq, log_n, log_sum, log_sumsq]}`` (format 2; a format-1 file has
no metrics and reads as before). ``epoch`` goes up whenever ``calls.jsonl`` is replaced; ``calls``
is the ``(st_ino, size)`` of ``calls.jsonl`` whose every line the cells include. Hourly
rows older than the store's ``cell_retention_hours`` are pruned on write; all-time rows
are never removed.

Rotated files are ``archives/calls-<UTC %Y%m%dT%H%M%S%fZ>[-N].jsonl``, renamed from
``calls.jsonl`` as they are and then replaced by a ``.jsonl.gz`` of the same name. A store
whose active file has another name (``JsonlStore(name="traces.jsonl")``) names its
archives ``<stem>-<UTC time>[-N]<suffix>.gz`` after it, as the seed did.

``pending.json`` holds feedback for calls that are not in ``calls.jsonl`` yet, replaced
whole (temp file, fsync, rename) when it changes, absent while there is none::

    {"format": 2, "pending": {"<call id>": {"success": b|null, "success_ts": t|null,
                                            "score": f|null, "score_ts": t|null, "received": t,
                                            "metrics": {"<name>": [f, t]}}}}

(``metrics``, late metric values with when each was given, only where there are some.)

Per field it keeps the value given last and when (``*_ts``), and ``received`` is when the
store last got feedback for that call. A writer storing the call folds the entry into the
record line and drops it; entries received more than the store's ``pending_max_age_s`` ago
are never applied and, like the oldest beyond ``pending_max`` entries, are dropped the next
time the file is written. A seed-dialect line keeps no feedback times.

``state.json`` holds the state rows (versions, changes, target heads, the trail head), one
indented JSON object with sorted keys, replaced whole (temp file, fsync, rename) on every
write::

    {"<kind>": {"<key>": {"rev": n, "value": {...}}}}

``trail.jsonl`` is the trail, one event per line (UTF-8, sorted keys, ``ensure_ascii=False``
as in ``calls.jsonl``), in append order, which is ``seq`` order. A line that does not parse
as an event (a crash's torn tail, an edit) is read as ``{"seq": None, "corrupt": "<the
line>"}`` so that trail verification reports it; it is never skipped silently. A torn last
line is terminated before the next append, as in ``calls.jsonl``.

Rotation, compaction and retention touch ``calls.jsonl`` and the archives only, never
``state.json`` or ``trail.jsonl``.
"""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from ..aggregates import Cell, CellKey, cells_for, feedback_delta
from ..records import CallRecord, Feedback, Outcome
from ._table import CellTable
from ._common import Pending, apply_feedback, load_late_metrics, load_metrics, load_moments, merge_cells

#: 2: metrics in cells rows and pending entries (files of format 1 read the same)
FORMAT = 2
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
datasync = getattr(os, "fdatasync", os.fsync)

#: the ids of seed traces (seed lines, and the seed stores' own records) start with this
SEED_ID = "seed:"
#: the ids of seed lines that carry no id of their own: a hash of the line's bytes
SEED_LINE_ID = "seed:line:"
#: the key of a seed-dialect line that holds the fields the seed has no key for
SIL_KEY = "_sil"


@functools.lru_cache(maxsize=None)
def archive_re(stem: str = "calls", suffix: str = ".jsonl") -> re.Pattern:
    """Archive names of an active file ``<stem><suffix>``:
    ``<stem>-<UTC %Y%m%dT%H%M%S%fZ>[-N]<suffix>``, then ``.gz`` once compressed."""
    return re.compile(rf"^{re.escape(stem)}-(\d{{8}}T\d{{12}}Z)(?:-(\d+))?{re.escape(suffix)}(\.gz)?$")


_ARCHIVE_RE = archive_re()
_ID_RE = re.compile(rb'^\{"id": ("(?:[^"\\]|\\.)*")')
_FEEDBACK_PREFIX = b'{"feedback": '


# -- calls.jsonl lines -------------------------------------------------------------------------
def _encode_line(obj: dict) -> bytes:
    # backslashreplace turns a lone surrogate into a \\udXXX escape that JSON reads back
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def encode_record(r: CallRecord) -> bytes:
    obj = r.to_dict()
    if r.feedback_success_ts is not None:
        obj["feedback_success_ts"] = r.feedback_success_ts
    if r.feedback_score_ts is not None:
        obj["feedback_score_ts"] = r.feedback_score_ts
    return _encode_line(obj)


def encode_feedback(fb: Feedback) -> bytes:
    obj = {"feedback": fb.call_id, "success": fb.success, "score": fb.score}
    if fb.ts is not None:
        obj["ts"] = fb.ts
    if fb.metrics:
        obj["metrics"] = fb.metrics
    return _encode_line(obj)


def _time(value: Any) -> float | None:
    """A feedback time read from a line: a finite number, else ``None`` (unknown)."""
    return float(value) if _is_number(value) else None


def record_from_dict(obj: dict) -> CallRecord:
    """A record line's record, with its feedback times (raises like :meth:`CallRecord.from_dict`)."""
    record = CallRecord.from_dict(obj)
    record.feedback_success_ts = _time(obj.get("feedback_success_ts"))
    record.feedback_score_ts = _time(obj.get("feedback_score_ts"))
    if record.metrics is not None:
        record.metrics = load_metrics(record.metrics)
    if record.feedback_metrics is not None:
        record.feedback_metrics = load_late_metrics(record.feedback_metrics)
    return record


def _json_object(line: bytes) -> dict | None:
    """The JSON object on a line, or ``None`` when the line is not one."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_line(line: bytes) -> CallRecord | Feedback | None:
    """A record (a seed line too) or a feedback line, or ``None`` for a corrupt line."""
    obj = _json_object(line)
    if obj is None:
        return None
    if "agent_id" in obj and "target" not in obj:
        try:
            return seed_record(obj, line=line)
        except (ValueError, TypeError, OverflowError, RecursionError):
            return None
    if "feedback" in obj and "target" not in obj:
        cid, success, score = obj["feedback"], obj.get("success"), obj.get("score")
        if not isinstance(cid, str) or not (success is None or isinstance(success, bool)):
            return None
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            return None
        return Feedback(cid, success, score, _time(obj.get("ts")), load_metrics(obj.get("metrics")))
    try:
        return record_from_dict(obj)
    except (KeyError, ValueError, TypeError, OverflowError):
        return None


def fold(data: bytes, records: dict[str, CallRecord] | None = None) -> tuple[dict[str, CallRecord], int]:
    """Every record of a file's bytes with its feedback folded in, and the corrupt count."""
    records = {} if records is None else records
    lines = data.split(b"\n")
    corrupt = 1 if lines.pop().strip() else 0  # a torn last line
    for line in lines:
        if not line.strip():
            continue
        item = parse_line(line)
        if item is None:
            corrupt += 1
        elif isinstance(item, Feedback):
            before = records.get(item.call_id)
            if before is not None:
                records[item.call_id] = apply_feedback(before, item)
        else:
            if item.id in records and item.id.startswith(SEED_LINE_ID):
                # an identical seed line is another trace, not a retried write
                n = 2
                while f"{item.id}~{n}" in records:
                    n += 1
                item.id = f"{item.id}~{n}"
            records[item.id] = item
    return records, corrupt


def lookup(data: bytes, ids: set[str]) -> dict[str, CallRecord]:
    """The current state of some calls, parsing only the lines that mention them."""
    found: dict[str, CallRecord] = {}
    slow = set()
    for cid in ids:
        needle = json.dumps(cid, ensure_ascii=False).encode("utf-8", "backslashreplace")
        if not needle.isascii() or b"\\" in needle or cid.startswith(SEED_LINE_ID):
            slow.add(cid)  # may be spelt with other escapes, or not at all: parse everything
            continue
        record = None
        pos = data.find(needle)
        while pos != -1:
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            if end == -1:
                break  # a torn last line
            item = parse_line(data[start:end])
            if isinstance(item, CallRecord) and item.id == cid:
                record = item
            elif isinstance(item, Feedback) and item.call_id == cid and record is not None:
                record = apply_feedback(record, item)
            pos = data.find(needle, end)
        if record is not None:
            found[cid] = record
    if slow:
        records, _ = fold(data)
        found.update((cid, records[cid]) for cid in slow if cid in records)
    return found


def fold_tail(tail: bytes, cache: OrderedDict[str, CallRecord]) -> None:
    """Fold lines other processes appended into the cached states they touch."""
    lines = tail.split(b"\n")
    lines.pop()  # incomplete: a torn line the next write terminates
    for line in lines:
        if not line.startswith(_FEEDBACK_PREFIX):
            m = _ID_RE.match(line)
            if m is not None:
                try:
                    if json.loads(m.group(1)) not in cache:
                        continue
                except ValueError:
                    continue
        item = parse_line(line)
        if isinstance(item, Feedback):
            before = cache.get(item.call_id)
            if before is not None:
                cache[item.call_id] = apply_feedback(before, item)
        elif isinstance(item, CallRecord) and item.id in cache:
            cache[item.id] = item


def recover(fd: int, st: os.stat_result, covered: tuple[int, int] | None, table: CellTable) -> bool:
    """Apply the cells of complete lines past ``covered`` in the open active file.

    Normally there are none: only a writer killed between its append and its aggregates
    update leaves some. A file of another inode (replaced, or restored from a copy) is
    taken as covered.
    """
    if covered is None or covered[0] != st.st_ino or covered[1] >= st.st_size:
        return False
    data = pread_all(fd, st.st_size)
    start = covered[1]
    deltas: dict[CellKey, Cell] = {}
    states: dict[str, CallRecord] = {}
    for line in data[start:].split(b"\n")[:-1]:
        item = parse_line(line) if line.strip() else None
        if isinstance(item, CallRecord):
            states[item.id] = item
            merge_cells(deltas, cells_for([item]))
        elif isinstance(item, Feedback):
            before = states.get(item.call_id)
            if before is None:
                before = lookup(data[:start], {item.call_id}).get(item.call_id)
            if before is not None:
                states[item.call_id] = after = apply_feedback(before, item)
                merge_cells(deltas, feedback_delta(before, after))
    table.apply(deltas)
    return True


def iter_lines(fd: int, size: int, *, reverse: bool = False, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The complete lines of the first ``size`` bytes of an open file (a torn last line is
    left out), first to last or, with ``reverse``, last to first; read ``chunk`` bytes at a
    time, so a consumer that stops early reads only what it used."""
    if not reverse:
        pos, carry = 0, b""
        while pos < size:
            n = min(chunk, size - pos)
            *lines, carry = (carry + pread_all(fd, n, pos)).split(b"\n")
            pos += n
            yield from lines
        return  # what is left in carry follows the last newline: a torn line, or nothing
    pos, carry, end_dropped = size, b"", False
    while pos > 0:
        n = min(chunk, pos)
        pos -= n
        pieces = (pread_all(fd, n, pos) + carry).split(b"\n")
        if not end_dropped:
            if len(pieces) == 1 and pos > 0:
                carry = pieces[0]  # no newline yet: all of it belongs to a torn last line
                continue
            pieces.pop()  # after the last newline: a torn line, or nothing
            end_dropped = True
        carry = pieces.pop(0) if pos > 0 and pieces else b""
        yield from reversed(pieces)


# -- the seed dialect ----------------------------------------------------------------------------
def seed_record(trace: dict, call_id: str | None = None, *, line: bytes | None = None) -> CallRecord:
    """A seed trace (or a seed-dialect line) as a record; raises ValueError or TypeError on
    a trace JSON cannot hold.

    ``call_id`` names a new trace; a line read back gets ``_sil.id`` if it has one, else
    ``seed:line:`` plus a hash of ``line``.
    """
    sil = trace.get(SIL_KEY)
    if isinstance(sil, dict) and isinstance(sil.get("id"), str):
        trace = {k: v for k, v in trace.items() if k != SIL_KEY}
    else:
        sil = {}
    call = isinstance(sil.get("outcome"), str)  # a call written by sil, not a seed trace
    if call:
        context = trace.get("context")
        text = None if context is None else json.dumps(context, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(trace, ensure_ascii=False)  # the whole trace: seed_view gives it back
    if sil.get("id"):
        cid = sil["id"]
    elif call_id is not None:
        cid = call_id
    else:
        digest = hashlib.sha256(line if line is not None else text.encode("utf-8", "backslashreplace"))
        cid = SEED_LINE_ID + digest.hexdigest()[:32]
    agent = trace.get("agent_id")
    error = trace.get("error")
    ts = sil.get("ts")
    score = sil.get("score")
    return CallRecord(
        id=cid,
        target=agent if isinstance(agent, str) else "" if agent is None else json.dumps(agent),
        ts=float(ts) if _is_number(ts) else _seed_ts(trace),
        duration_s=float(trace["duration_sec"]) if _is_number(trace.get("duration_sec")) else 0.0,
        outcome=sil["outcome"] if call else (Outcome.OK if trace.get("success") else Outcome.ERROR),
        error_type=sil.get("error_type"),
        error_message=None if error is None else error if isinstance(error, str) else json.dumps(error, ensure_ascii=False),
        version=sil.get("version"),
        arm=sil.get("arm"),
        attempt=int(sil.get("attempt") or 1),
        score=float(score) if _is_number(score) else None,
        context=text,
        feedback_success=sil.get("feedback_success") if isinstance(sil.get("feedback_success"), bool) else None,
        feedback_score=float(sil["feedback_score"]) if _is_number(sil.get("feedback_score")) else None,
        metrics=load_metrics(sil.get("metrics")),
        feedback_metrics=load_late_metrics(sil.get("feedback_metrics")),
    )


def seed_view(r: CallRecord) -> dict[str, Any]:
    """A record as the seed's trace dict: a seed trace exactly as it was written, any other
    call as ``{"agent_id", "task", "success", "duration_sec", "error", "context",
    "timestamp"}`` (``task`` when its context has one; ``timestamp`` in local time)."""
    if r.id.startswith(SEED_ID):
        trace = r.context_value()
        if isinstance(trace, dict):
            return trace
    context = r.context_value()
    view: dict[str, Any] = {"agent_id": r.target}
    if isinstance(context, dict) and "task" in context:
        view["task"] = context["task"]
    view.update(success=r.success, duration_sec=r.duration_s, error=r.error_message, context=context,
                timestamp=datetime.fromtimestamp(r.ts).isoformat())
    return view


def encode_seed_record(r: CallRecord) -> bytes:
    """A record as a seed-dialect line: :func:`seed_view`, plus a ``"_sil"`` object for
    what the seed has no key for (a seed trace has none, unless feedback was folded in)."""
    view = seed_view(r)
    if r.id.startswith(SEED_ID) and isinstance(r.context_value(), dict):
        if r.feedback_success is None and r.feedback_score is None and not r.metrics and not r.feedback_metrics:
            return _encode_line(view)
        sil: dict[str, Any] = {"id": r.id}  # pinned: the line's hash changes with the feedback
    else:
        sil = {"id": r.id, "ts": r.ts, "outcome": r.outcome}
        for key in ("error_type", "version", "arm", "score"):
            if getattr(r, key) is not None:
                sil[key] = getattr(r, key)
        if r.attempt != 1:
            sil["attempt"] = r.attempt
    for key in ("feedback_success", "feedback_score", "metrics", "feedback_metrics"):
        if getattr(r, key) is not None:
            sil[key] = getattr(r, key)
    return _encode_line({**view, SIL_KEY: sil})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _seed_ts(trace: dict) -> float:
    """Epoch seconds of a seed trace's ``timestamp`` (or legacy ``start_time``): ISO 8601,
    naive meaning local time as the seed wrote it, or epoch seconds; 0.0 when absent or bad."""
    for key in ("timestamp", "start_time"):
        value = trace.get(key)
        if _is_number(value):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value).timestamp()
            except (ValueError, OverflowError, OSError):
                continue
    return 0.0


# -- pending.json ------------------------------------------------------------------------------
def encode_pending(pending: dict[str, Pending]) -> bytes:
    """The pending feedback as ``pending.json`` (see the module docstring)."""
    rows = {cid: {"success": p.success, "success_ts": p.success_ts, "score": p.score, "score_ts": p.score_ts,
                  "received": p.received, **({"metrics": p.metrics} if p.metrics else {})}
            for cid, p in pending.items()}
    return (json.dumps({"format": FORMAT, "pending": rows}, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
        "utf-8", "backslashreplace")


def decode_pending(data: bytes) -> dict[str, Pending]:
    """The entries of ``pending.json``; an entry that does not parse is dropped (it is
    only feedback that waits), a file that is not a JSON object raises ValueError."""
    obj = json.loads(data) if data.strip() else {}
    if not isinstance(obj, dict) or not isinstance(obj.get("pending", {}), dict):
        raise ValueError("not a pending-feedback object")
    out: dict[str, Pending] = {}
    for cid, row in obj.get("pending", {}).items():
        if not isinstance(row, dict) or not _is_number(row.get("received")):
            continue
        success, score = row.get("success"), row.get("score")
        if not (success is None or isinstance(success, bool)) or not (score is None or _is_number(score)):
            continue
        out[cid] = Pending(cid, success, _time(row.get("success_ts")), None if score is None else float(score),
                           _time(row.get("score_ts")), float(row["received"]), load_late_metrics(row.get("metrics")))
    return out


# -- state.json --------------------------------------------------------------------------------
def encode_state(state: dict) -> bytes:
    """``{kind: {key: {"value": ..., "rev": n}}}`` as indented, sorted JSON (raises
    TypeError or ValueError on a value JSON cannot hold)."""
    return (json.dumps(state, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def decode_state(data: bytes) -> dict[str, dict[str, dict]]:
    """The state rows of ``state.json``; raises ValueError on a malformed file."""
    obj = json.loads(data) if data.strip() else {}
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    for kind, rows in obj.items():
        if not isinstance(rows, dict):
            raise ValueError(f"kind {kind!r}: not an object")
        for key, row in rows.items():
            if not (isinstance(row, dict) and isinstance(row.get("value"), dict)
                    and isinstance(row.get("rev"), int) and not isinstance(row["rev"], bool)):
                raise ValueError(f"row {kind!r}/{key!r}: not {{\"value\": {{...}}, \"rev\": <int>}}")
    return obj


# -- trail.jsonl -------------------------------------------------------------------------------
#: how many bytes a backward search for the last event reads at a time
_TAIL_CHUNK = 1 << 16


def encode_event(event: dict) -> bytes:
    """One trail line (raises TypeError or ValueError on a value JSON cannot hold)."""
    return (json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")


def parse_event(line: bytes) -> dict | None:
    """A trail event (a JSON object with an integer ``seq``), or ``None``."""
    obj = _json_object(line)
    if obj is None:
        return None
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return obj


def corrupt_event(line: bytes) -> dict:
    """What a trail line that is not an event reads as: trail verification reports it."""
    return {"seq": None, "corrupt": line.decode("utf-8", "backslashreplace")}


def last_event(fd: int, size: int) -> dict | None:
    """The last event among the complete lines of the first ``size`` bytes of an open
    trail file, read backwards from the end; a torn last line and corrupt lines are
    passed over. ``None`` when there is none."""
    pos, carry, end_dropped = size, b"", False
    while pos > 0:
        n = min(_TAIL_CHUNK, pos)
        pos -= n
        buf = pread_all(fd, n, pos) + carry
        pieces = buf.split(b"\n")
        if not end_dropped:
            if len(pieces) == 1 and pos > 0:
                carry = buf  # no newline yet: all of it belongs to a torn last line
                continue
            pieces.pop()  # after the last newline: a torn line, or nothing
            end_dropped = True
        carry = pieces.pop(0) if pos > 0 and pieces else b""
        for line in reversed(pieces):
            event = parse_event(line) if line.strip() else None
            if event is not None:
                return event
    return None


def read_events(data: bytes, target: str | None, after_seq: int, limit: int | None) -> list[dict]:
    """The events of a trail file's bytes, in file order, filtered.

    Corrupt lines (a torn last line included) are returned as :func:`corrupt_event` when
    no ``target`` is asked for and they lie after the last event with ``seq <=
    after_seq``; blank lines are ignored.
    """
    if limit is not None and limit <= 0:
        return []
    out: list[dict] = []
    last_seq = 0  # the seq of the last event before the current line
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    for line in lines:
        if not line.strip():
            continue
        event = parse_event(line)
        if event is None:
            if target is None and (after_seq <= 0 or last_seq >= after_seq):
                out.append(corrupt_event(line))
        else:
            last_seq = event["seq"]
            if event["seq"] > after_seq and (target is None or event.get("target") == target):
                out.append(event)
        if limit is not None and len(out) >= limit:
            break
    return out


# -- aggregates.json ---------------------------------------------------------------------------
def encode_aggregates(table: CellTable, epoch: int, covered: tuple[int, int] | None) -> bytes:
    rows = table.to_rows()  # in the order of table.cells
    for row, cell in zip(rows, table.cells.values()):
        if cell.metrics:
            row.append(cell.metrics)
    obj = {"format": FORMAT, "epoch": epoch, "calls": covered, "cells": rows}
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_aggregates(data: bytes) -> tuple[CellTable, int, tuple[int, int] | None]:
    """``(table, epoch, covered)``; raises ValueError, KeyError, TypeError, AttributeError
    or IndexError on a malformed file (a row's bad metric is dropped, not raised)."""
    obj = json.loads(data)
    table, epoch = CellTable(), int(obj["epoch"])
    for row in obj["cells"]:
        target, version, arm, hour, values, hist = row[:6]
        cell = Cell.from_values(values, {int(b): n for b, n in hist.items()},
                                load_moments(row[6]) if len(row) > 6 else None)
        table.apply({(target, version, arm, int(hour)): cell})
    covered = obj.get("calls")
    return table, epoch, None if covered is None else (int(covered[0]), int(covered[1]))


# -- archives ----------------------------------------------------------------------------------
def archive_file(source: Path, archive_dir: Path, stamp: str, *, fsync: bool) -> tuple[Path, int]:
    """Move ``source`` into ``archive_dir`` under an unused ``<stem>-<stamp>[-N]<suffix>``
    name (``calls-<stamp>[-N].jsonl`` for ``calls.jsonl``) and create an empty ``source``
    in its place (a torn last line is terminated first).

    Returns the archive, the uncompressed file to gzip later (:func:`compress_archives`)
    or the final ``.gz`` when ``archive_dir`` is on another file system, and the inode of
    the new, empty ``source``.
    """
    fd = os.open(source, os.O_RDWR | os.O_APPEND | O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            write_all(fd, b"\n")
    finally:
        os.close(fd)
    archive_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        base = f"{source.stem}-{stamp}-{n}" if n else f"{source.stem}-{stamp}"
        pending, final = archive_dir / f"{base}{source.suffix}", archive_dir / f"{base}{source.suffix}.gz"
        if not pending.exists() and not final.exists():
            break
        n += 1
    try:
        os.rename(source, pending)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        pending = gzip_file(source, final, fsync=fsync)
        os.unlink(source)
    else:
        if fsync:
            fsync_dir(archive_dir)
            fsync_dir(source.parent)
    fd = os.open(source, os.O_WRONLY | os.O_CREAT | O_CLOEXEC, 0o644)
    try:
        return pending, os.fstat(fd).st_ino
    finally:
        os.close(fd)


def compress_archives(path: Path, *, fsync: bool, pattern: re.Pattern = _ARCHIVE_RE) -> Path:
    """Gzip the archive ``path`` (not compressed yet), and any other uncompressed archive
    of the same ``pattern`` beside it (left by a crash); returns ``path``'s ``.gz``."""
    final = gzip_file(path, path.with_name(path.name + ".gz"), fsync=fsync)
    for name in os.listdir(path.parent):
        m = pattern.match(name)
        if m and not m.group(3) and name != path.name:
            gzip_file(path.parent / name, path.parent / (name + ".gz"), fsync=fsync)
    return final


def list_archives(archive_dir: Path, pending: bool = False, pattern: re.Pattern = _ARCHIVE_RE) -> list[Path]:
    """The gzip archives named by ``pattern``, oldest first (with ``pending``, also rotated
    files not compressed yet, where no ``.gz`` of the same name exists)."""
    try:
        names = set(os.listdir(archive_dir))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = pattern.match(name)
        if m and (m.group(3) or (pending and name + ".gz" not in names)):
            found.append((m.group(1), int(m.group(2) or 0), archive_dir / name))
    return [p for *_, p in sorted(found)]


def gzip_file(source: Path, final: Path, *, fsync: bool) -> Path:
    """Compress ``source`` into ``final`` (via a temp file); ``source`` is removed when
    both are in the same directory. A missing ``source`` was compressed by another process."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        src = open(source, "rb")
    except FileNotFoundError:
        return final
    with src, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename=source.name, mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
        raw.flush()
        if fsync:
            os.fsync(raw.fileno())
    os.replace(tmp, final)
    if source.parent == final.parent:
        try:
            os.unlink(source)
        except FileNotFoundError:
            pass
    if fsync:
        fsync_dir(final.parent)
    return final


# -- small file helpers ------------------------------------------------------------------------
def replace_file(path: Path, data: bytes, *, fsync: bool, mtime_ns: int | None = None) -> os.stat_result:
    """Write ``data`` to ``.<name>.tmp`` beside ``path`` and rename it over ``path``.

    Returns the new file's stat (its mtime set to ``mtime_ns`` first, when given).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        if fsync:
            os.fsync(fd)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return st


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def pread_all(fd: int, size: int, offset: int = 0) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
