"""The report's model: a plain dict gathered through the public API only.

``guard.changes``, ``guard.versions``, ``guard.view``, ``guard.trail`` and
``guard.verify_trail``; the store's ``cells`` (per version, as ``sil status``) and
``read_calls`` (a change's own calls, bounded). A change's curves are *replayed*: its calls,
in the order they started, are added to two cells (baseline and candidate) and the judge
(:func:`sil_core.detect.judge`) reads them at about 60 points, so the bounds drawn are the
very bounds the guard computes.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable

from ..aggregates import Cell, Stats, add_record, merge
from ..detect import judge
from ..policy import RolloutPolicy
from .text import secs

__all__ = ("READ_MAX", "REPLAY_CAP", "SAMPLES", "TRAIL_MAX", "build_model", "headline", "replay")

#: decided candidate calls replayed per change at most (the page says when a change had more)
REPLAY_CAP = 5000
#: raw records read per change at most (both arms)
READ_MAX = 20_000
#: points per curve
SAMPLES = 60
#: trail events listed at most (the newest); verification always covers the whole chain
TRAIL_MAX = 500



# -- the whole model ------------------------------------------------------------------------------
def build_model(guard: Any, *, targets: Iterable[str] | None = None, since: float | None = None,
                store_label: str | None = None, replay_cap: int = REPLAY_CAP, now: float | None = None) -> dict:
    """Everything the page shows, as plain data (see ``sil_core.report``)."""
    now = time.time() if now is None else now
    store = guard.store
    changes = guard.changes()
    known = sorted(set(store.targets()) | {c.target for c in changes})
    wanted = list(targets) if targets else known
    trail_all = guard.trail()
    report = guard.verify_trail()
    by_change: dict[str, list[dict]] = {}
    for event in trail_all:
        if event.get("change_id"):
            by_change.setdefault(event["change_id"], []).append(event)
    out_targets = []
    summary = []
    for target in wanted:
        mine = [c for c in changes if c.target == target and (since is None or c.updated >= since)]
        entry = _target(guard, target, since)
        entry["changes"] = [_change(guard, c, by_change.get(c.id, []), replay_cap, now) for c in mine]
        summary += entry["changes"]
        out_targets.append(entry)
    shown = [e for e in trail_all if since is None or _event_ts(e) >= since]
    if targets:
        shown = [e for e in shown if e.get("target") in set(wanted) or e.get("target") is None]
    summary.sort(key=lambda c: c["updated"], reverse=True)
    return {
        "generated": now,
        "store": store_label if store_label is not None else getattr(store, "url", ""),
        "since": since,
        "targets": out_targets,
        "summary": summary,
        "trail": {"ok": report.ok, "events": report.events, "head_seq": report.head_seq,
                  "head_hash": report.head_hash, "problems": list(report.problems),
                  "shown": [_event_row(e) for e in shown[-TRAIL_MAX:]], "matching": len(shown)},
        "replay_cap": replay_cap,
    }


def _event_ts(event: dict) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(event.get("ts"))).timestamp()
    except ValueError:
        return 0.0


def _event_row(event: dict) -> dict:
    if event.get("corrupt") is not None:
        return {"seq": "?", "ts": "", "type": "CORRUPT LINE", "target": "", "actor": "", "change_id": "",
                "detail": str(event["corrupt"])[:200]}
    return {"seq": event.get("seq"), "ts": str(event.get("ts") or "")[:19].replace("T", " "),
            "type": event.get("type") or "", "target": event.get("target") or "", "actor": event.get("actor") or "",
            "change_id": event.get("change_id") or "", "detail": event_detail(event)}


def event_detail(event: dict) -> str:
    """One line saying what an event holds."""
    data = event.get("data") or {}
    if not isinstance(data, dict):
        return str(data)[:200]
    verdict = data.get("verdict") if isinstance(data.get("verdict"), dict) else None
    kind = event.get("type")
    if kind == "change_proposed":
        return f"{data.get('candidate_version')} over {data.get('baseline_version')} ({data.get('mode')}): " \
               f"{_short(data.get('patch'))}"
    if kind in ("change_applied", "arm_weight_changed"):
        w = data.get("weight")
        extra = f" after {data['candidate_calls']} candidate calls" if data.get("candidate_calls") is not None else ""
        return (f"candidate weight {w:.0%}" if isinstance(w, (int, float)) else "candidate serving") + extra
    if kind == "rollback_succeeded":
        return f"restored {data.get('restored_version')}"
    if kind == "promoted":
        return f"{data.get('version') or ''}: {verdict['reason'] if verdict else ''}".strip(": ")
    if verdict:
        return str(verdict.get("reason") or "")
    for key in ("reason", "error", "version", "action"):
        if data.get(key):
            return str(data[key])
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(data.items()))[:200]


def _short(value: Any, width: int = 120) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- per target -----------------------------------------------------------------------------------
def _stats_dict(stats: Stats) -> dict:
    return {"calls": stats.n, "successes": stats.successes, "failures": stats.failures,
            "success_rate": stats.success_rate, "success_ci": stats.success_ci, "p50_s": stats.p50_s,
            "p95_s": stats.p95_s,
            "metrics": {name: {"n": m.n, "mean": m.mean, "ci": m.ci} for name, m in stats.metrics.items()}}


def _target(guard: Any, target: str, since: float | None) -> dict:
    store = guard.store
    cells = store.cells(target, since_hour=None if since is None else int(since // 3600))
    view = guard.view(target, fresh=True)
    by_version: dict[str, list[Cell]] = {}
    for (version, _arm), cell in cells.items():
        by_version.setdefault(version, []).append(cell)
    order = [v["version"] for v in guard.versions(target)]
    rows = []
    for version in sorted(by_version, key=lambda v: order.index(v) if v in order else -1):
        row = _stats_dict(Stats.from_cell(target, merge(by_version[version])))
        row["version"] = version or "(none)"
        row["active"] = bool(view.active) and version == view.active
        rows.append(row)
    total = _stats_dict(Stats.from_cell(target, merge(cells.values())))
    pin = getattr(view, "pin", None) or {}
    return {"name": target, **total, "active_version": view.active, "pinned": bool(view.pinned),
            "pinned_by": pin.get("actor") if isinstance(pin, dict) else None,
            "versions": rows, "metric_names": sorted({n for r in rows for n in r["metrics"]})}


# -- per change -----------------------------------------------------------------------------------
BADGES = {
    "rolled_back": ("ROLLED BACK", "bad"),
    "restore_failed": ("RESTORE FAILED", "bad"),
    "promoted": ("PROMOTED", "good"),
    "canary": ("IN FLIGHT", "live"),
    "switched": ("IN FLIGHT", "live"),
    "paused": ("PAUSED", "warn"),
    "proposed": ("AWAITING APPROVAL", "warn"),
    "rejected": ("REJECTED", "muted"),
}


def _change(guard: Any, change: Any, events: list[dict], replay_cap: int, now: float) -> dict:
    verdict = change.verdict.as_dict() if change.verdict is not None else None
    label, tone = BADGES.get(change.state, (change.state.upper().replace("_", " "), "muted"))
    if change.kind == "revert":
        label = "REVERT" if change.state == "promoted" else label
    watch = next((e for e in events if e.get("type") == "watch_regressed"), None)
    if watch is not None:
        label, tone = "PROMOTED, THEN REGRESSED", "bad"
    ramp = [{"weight": (e.get("data") or {}).get("weight"), "ts": str(e.get("ts"))[:19].replace("T", " "),
             "candidate_calls": (e.get("data") or {}).get("candidate_calls"), "actor": e.get("actor"),
             "type": e.get("type")}
            for e in events if e.get("type") in ("change_applied", "arm_weight_changed")]
    acted = [{"type": e.get("type"), "actor": e.get("actor"), "ts": str(e.get("ts"))[:19].replace("T", " ")}
             for e in events]
    try:
        policy = RolloutPolicy.from_dict(change.policy or {})
    except Exception:  # a policy of a newer release, or hand-edited: the defaults
        policy = RolloutPolicy()
    model = {
        "id": change.id, "target": change.target, "state": change.state, "mode": change.mode, "kind": change.kind,
        "baseline": change.baseline_version, "candidate": change.candidate_version, "weight": change.weight,
        "created": change.created, "started": change.started, "updated": change.updated, "actor": change.actor,
        "reason": change.reason or (verdict or {}).get("reason") or "", "verdict": verdict,
        "patch": change.patch, "policy": policy.as_dict(), "badge": label, "tone": tone, "ramp": ramp,
        "events": acted, "watch": (watch.get("data") or {}).get("verdict") if watch else None,
        "restore_error": change.restore_error,
    }
    model["headline"] = headline(model)
    model["series"] = None
    if change.started and change.state != "rejected" and change.kind == "change":
        model["series"] = replay(guard.store, change, policy, ramp, replay_cap, now)
    return model


def headline(c: dict) -> str:
    """The verdict in plain words, one or two sentences."""
    v = c.get("verdict") or {}
    ev = v.get("evidence") or {}
    n = ev.get("n") or {}
    metric = v.get("metric")
    nb = n.get("candidate")
    after = f" after {nb} calls of the new version" if nb else ""
    state = c["state"]
    if state == "rejected":
        return f"Never served: the proposal was refused ({c['reason'] or 'no reason recorded'})."
    if state == "proposed":
        return "Waiting for a person to approve it (sil approve); it serves no calls yet."
    if state == "restore_failed":
        return f"The rollback could not restore the old config ({c.get('restore_error') or 'error'}); it is retried."
    why = _why(v, ev)
    if state == "rolled_back":
        if metric == "manual":
            return f"Rolled back by hand ({v.get('reason')})."
        if metric == "tripwire":
            return (f"Rolled back{after}: the new version failed {c['policy'].get('tripwire_consecutive', 5)} "
                    "calls in a row before there was enough data for statistics (tripwire).")
        return f"Rolled back{after}: {why or v.get('reason') or c['reason']}."
    if state == "promoted":
        base = f"Promoted{after}: "
        if metric == "manual":
            base = f"Promoted by hand ({v.get('reason')})"
            return base + "."
        if metric == "horizon":
            text = base + f"no harm found in {c['policy'].get('horizon')} calls of the new version (horizon)."
        else:
            text = base + (why or "shown no worse than the old version") + "."
        if c.get("watch"):
            text += f" After its promotion it regressed: {c['watch'].get('reason')}."
        return text
    if state == "paused":
        return f"Paused, waiting for a person: {v.get('reason') or c['reason'] or 'paused by hand'}."
    reading = v.get("reason") or "collecting calls"
    return f"In flight, the new version serves {c['weight']:.0%} of calls; current reading: {reading}."


def _why(v: dict, ev: dict) -> str:
    metric = v.get("metric")
    sr, lat = ev.get("success_rate"), ev.get("latency")
    if v.get("kind") == "regressed":
        if metric == "success_rate" and sr:
            return (f"its success rate fell from {sr['baseline']:.1%} to {sr['candidate']:.1%}, a drop that is "
                    f"statistically certain and larger than the {sr['tolerance'] * 100:.0f}-point tolerance")
        if metric == "latency" and lat:
            return (f"it was {lat['ratio'] - 1:+.0%} slower (median {secs(lat['baseline_median_s'])} -> "
                    f"{secs(lat['candidate_median_s'])}), beyond the {lat['tolerance']:.0%} tolerance")
        if metric == "latency_p95":
            p = ev.get("latency_p95") or {}
            return f"its p95 latency rose from {secs(p.get('baseline'))} to {secs(p.get('candidate'))}"
        m = (ev.get("metrics") or {}).get(metric or "")
        if m:
            return f"{metric} got worse ({_num(m['baseline'])} -> {_num(m['candidate'])}; {m['better']} is better)"
        return v.get("reason", "")
    if v.get("kind") == "healthy" and sr and lat:
        return (f"success {sr['candidate']:.1%} vs {sr['baseline']:.1%}, latency x{lat['ratio']:.2f}, "
                "both shown within tolerance")
    return ""


def _num(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)


# -- the replay -----------------------------------------------------------------------------------
def _read_window(store: Any, target: str, since: float, until: float | None) -> tuple[list, bool]:
    """The change's records from ``since``: all of them when fewer than ``READ_MAX``, else
    the records of the longest window from ``since`` that holds fewer (bisected)."""
    records = store.read_calls(target, since=since, until=until, limit=READ_MAX)
    if len(records) < READ_MAX:
        return records, False
    lo, hi = since, until if until is not None else time.time() + 1
    best: list = []
    for _ in range(10):
        mid = (lo + hi) / 2
        got = store.read_calls(target, since=since, until=mid, limit=READ_MAX)
        if len(got) >= READ_MAX:
            hi = mid
        else:
            lo, best = mid, got
    return best, True


def replay(store: Any, change: Any, policy: RolloutPolicy, ramp: list[dict], cap: int, now: float) -> dict:
    """Both arms' curves over the candidate's decided calls, with the judge's bounds."""
    until = None if change.in_flight else change.updated + 1e-3
    records, clipped = _read_window(store, change.target, change.started, until)
    base_v, cand_v = change.baseline_version, change.candidate_version
    base, cand = Cell(), Cell()
    switch = change.mode == "switch"
    if switch:  # the frozen baseline: the baseline version's calls before the change
        window = policy.baseline_window_hours * 3600
        for r in store.read_calls(change.target, since=change.started - window, until=change.started,
                                  version=base_v, limit=READ_MAX):
            add_record(base, r)
    mine = []
    for r in records:
        if switch:
            if r.version == cand_v and r.arm != "baseline":
                mine.append((r.ts, 1, r))
        elif r.arm == "baseline" and r.version == base_v:
            mine.append((r.ts, 0, r))
        elif r.arm == "candidate" and r.version == cand_v:
            mine.append((r.ts, 1, r))
    mine.sort(key=lambda t: t[0])
    total = sum(1 for _, arm, r in mine if arm and r.success is not None)
    capped = total > cap
    total = min(total, cap)
    ev = (change.verdict.evidence if change.verdict is not None else {}) or {}
    decision_n = (ev.get("n") or {}).get("candidate") if not change.in_flight else None
    marks = sorted({(int(m["candidate_calls"]), float(m["weight"])) for m in ramp
                    if isinstance(m.get("candidate_calls"), int) and isinstance(m.get("weight"), (int, float))})
    wanted = _sample_points(total, [policy.min_calls, decision_n or 0, *(n for n, _ in marks)])
    metric = change.verdict.metric if change.verdict is not None else None
    rail = metric if metric and metric in (ev.get("metrics") or {}) else None
    points: list[dict] = []
    n_b = 0
    for _, arm, r in mine:
        add_record(cand if arm else base, r)
        if arm and r.success is not None:
            n_b += 1
            if n_b in wanted:
                points.append(_point(base, cand, policy, n_b, rail))
            if n_b >= total:
                break
    if not points and (base.n or cand.n):
        points.append(_point(base, cand, policy, n_b, rail))
    return {
        "points": points, "decision_n": decision_n, "ramp_marks": [list(m) for m in marks],
        "decision": {"promoted": "promoted", "rolled_back": "rolled back", "restore_failed": "rolled back"}
        .get(change.state, "decided"),
        "metric": rail, "metric_spec": (ev.get("metrics") or {}).get(rail) if rail else None,
        "success_tolerance": policy.success_tolerance, "latency_tolerance": policy.latency_tolerance,
        "min_calls": policy.min_calls, "candidate_calls": n_b, "capped": capped, "clipped": clipped,
        "cap": cap, "switch": switch,
    }


def _sample_points(total: int, extra: Iterable[int]) -> set[int]:
    if total <= 0:
        return set()
    if total <= SAMPLES:
        points = set(range(1, total + 1))
    else:
        points = {max(1, round(1 + i * (total - 1) / (SAMPLES - 1))) for i in range(SAMPLES)}
    points |= {e for e in extra if 0 < e <= total}
    return points


def _point(base: Cell, cand: Cell, policy: RolloutPolicy, n_b: int, rail: str | None) -> dict:
    verdict = judge(base, cand, policy)
    ev = verdict.evidence
    n_a = base.successes + base.failures
    p = {"n": n_b, "n_baseline": n_a, "kind": verdict.kind,
         "base_rate": base.successes / n_a if n_a else None,
         "cand_rate": cand.successes / n_b if n_b else None,
         "base_lat": math.exp(base.lat_sum / base.lat_n) if base.lat_n else None,
         "cand_lat": math.exp(cand.lat_sum / cand.lat_n) if cand.lat_n else None}
    sr = ev.get("success_rate")
    if sr and p["base_rate"] is not None:
        p["rate_lo"], p["rate_hi"] = sr["baseline"] + sr["lower"], sr["baseline"] + sr["upper"]
    lat = ev.get("latency")
    if lat and p["base_lat"] is not None:
        p["lat_lo"], p["lat_hi"] = lat["baseline_median_s"] * lat["ratio_lower"], \
            lat["baseline_median_s"] * lat["ratio_upper"]
    m = (ev.get("metrics") or {}).get(rail or "")
    if m:
        p["m_base"], p["m_cand"] = m["baseline"], m["candidate"]
        if "ratio_lower" in m:
            p["m_lo"], p["m_hi"] = m["baseline"] * m["ratio_lower"], m["baseline"] * m["ratio_upper"]
        else:
            p["m_lo"], p["m_hi"] = m["baseline"] + m["lower"], m["baseline"] + m["upper"]
    return p
