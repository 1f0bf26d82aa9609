"""The report as one self-contained HTML page (inline CSS and SVG; no script, no network)."""

from __future__ import annotations

import json

from .svg import line_chart
from .text import esc, pct, secs, utc

__all__ = ("render",)

BASE, CAND, BAND, TOL, DECIDE, RAMP = "#0072B2", "#D55E00", "#D55E00", "#6b7280", "#111827", "#8b5cf6"

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#111827;background:#f3f4f6}
main{max-width:1220px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:21px;margin:36px 0 10px;padding-bottom:6px;border-bottom:2px solid #d1d5db}
h3{font-size:17px;margin:0}
h4{font-size:13px;margin:14px 0 6px;text-transform:uppercase;letter-spacing:.04em;color:#374151}
.meta{color:#4b5563;font-size:13px;margin:0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:18px 20px;margin:14px 0;
 box-shadow:0 1px 2px rgba(0,0,0,.04)}
.badge{display:inline-block;min-width:96px;text-align:center;font-weight:700;font-size:12px;letter-spacing:.05em;
 padding:3px 9px;border-radius:999px;color:#fff;white-space:nowrap}
.bad{background:#b91c1c}.good{background:#15803d}.live{background:#1d4ed8}.warn{background:#b45309}
.muted{background:#4b5563}
.summary table{width:100%;border-collapse:collapse}
.summary td{padding:9px 8px;border-top:1px solid #e5e7eb;vertical-align:top}
.summary tr:first-child td{border-top:none}
.summary .why{font-size:15px}
.summary a{color:#1d4ed8;text-decoration:none}
.counts{font-size:15px;margin:0 0 10px}
.trailchip{display:inline-block;margin-top:8px;padding:4px 10px;border-radius:6px;font-weight:600;font-size:14px}
.trailchip.ok{background:#dcfce7;color:#14532d}.trailchip.failed{background:#fee2e2;color:#7f1d1d}
table.data{border-collapse:collapse;width:100%;font-size:14px;margin:4px 0}
table.data th{text-align:left;font-weight:600;color:#374151;background:#f9fafb;border-bottom:1px solid #d1d5db;
 padding:6px 8px;white-space:nowrap}
table.data td:first-child{white-space:nowrap}
table.evidence td.num{white-space:normal}
table.evidence td:last-child{white-space:nowrap}
table.data td{padding:6px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.change{border-left:6px solid #9ca3af}
.change.tone-bad{border-left-color:#b91c1c}.change.tone-good{border-left-color:#15803d}
.change.tone-live{border-left-color:#1d4ed8}.change.tone-warn{border-left-color:#b45309}
.change header{display:flex;gap:12px;align-items:center;flex-wrap:wrap}
.headline{font-size:17px;margin:10px 0 4px;font-weight:500}
.charts{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
.charts svg{background:#fff;border:1px solid #eef0f3;border-radius:6px;max-width:100%;height:auto}
.chart .ctitle{font:600 13px system-ui,sans-serif;fill:#111827}
.chart .tick{font:11px system-ui,sans-serif;fill:#4b5563}
.chart .xlabel,.chart .legend{font:11.5px system-ui,sans-serif;fill:#374151}
.chart .note{font:11px system-ui,sans-serif;fill:#6b7280}
.chart .mark{font:600 11px system-ui,sans-serif}
.chart .grid{stroke:#eef0f3}.chart .axis{stroke:#9ca3af}
.chart .empty{font:13px system-ui,sans-serif;fill:#6b7280}
.caption{font-size:13px;color:#4b5563;margin:2px 0 6px}
.cols{display:grid;grid-template-columns:minmax(0,1fr);gap:4px}
.scroll{overflow-x:auto}
ol.steps{margin:4px 0;padding-left:20px;font-size:14px}
.worse{color:#b91c1c;font-weight:600}.fine{color:#15803d;font-weight:600}.open{color:#92400e}
details{margin:8px 0}summary{cursor:pointer;color:#1d4ed8;font-size:14px}
pre{background:#f9fafb;border:1px solid #e5e7eb;border-radius:6px;padding:8px;overflow:auto;font-size:12.5px;
 white-space:pre-wrap;word-break:break-word}
.problems{color:#7f1d1d}
.empty-store{font-size:16px}
footer{margin-top:36px;color:#4b5563;font-size:13px}
"""


def render(model: dict) -> str:
    """The page for a model from :func:`sil_core.report.data.build_model`."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>sil-guard report</title>",
        f"<style>{CSS}</style></head><body><main>",
        _header(model),
        _summary(model),
    ]
    if not model["targets"]:
        parts.append('<div class="card empty-store"><p><strong>No calls or changes are recorded in this store yet.'
                     "</strong></p><p>Record calls with <code>@guard.track(...)</code> or <code>guard.call(...)</code>"
                     ", propose a change with <code>guard.propose(target, patch)</code>, then run "
                     "<code>sil report</code> again. <code>sil status</code> shows which store is in use.</p></div>")
    for target in model["targets"]:
        parts.append(_target(target))
    parts.append(_trail(model))
    parts.append(_footer(model))
    parts.append("</main></body></html>")
    return "\n".join(parts)


# -- header and summary ---------------------------------------------------------------------------
def _trail_chip(trail: dict) -> str:
    if trail["ok"]:
        return (f'<span class="trailchip ok">Trail verified: {trail["events"]} events, hash chain intact</span>')
    count = len(trail["problems"])
    return (f'<span class="trailchip failed">Trail verification FAILED: {count} problem{"s" if count != 1 else ""} '
            f'(see "The trail")</span>')


def _header(model: dict) -> str:
    since = f" &middot; calls and changes since {esc(utc(model['since']))}" if model.get("since") else ""
    return (f"<header><h1>sil-guard report</h1>"
            f'<p class="meta">store <code>{esc(model["store"])}</code> &middot; generated {esc(utc(model["generated"]))}'
            f"{since}</p>{_trail_chip(model['trail'])}</header>")


def _summary(model: dict) -> str:
    changes = model["summary"]
    if not changes:
        return ('<section class="card summary"><h3>Changes</h3><p class="counts">No config change has been proposed'
                f'{" in this window" if model.get("since") else ""}.</p></section>')
    counts: dict[str, int] = {}
    for c in changes:
        counts[c["badge"]] = counts.get(c["badge"], 0) + 1
    text = ", ".join(f"{n} {label.lower()}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    rows = []
    for c in changes:
        rows.append(
            f'<tr><td><span class="badge {c["tone"]}">{esc(c["badge"])}</span></td>'
            f'<td><strong>{esc(c["target"])}</strong><br><span class="meta mono">{esc(c["baseline"] or "-")} &rarr; '
            f'{esc(c["candidate"] or "-")}</span></td>'
            f'<td class="why">{esc(c["headline"])}<br><span class="meta">{esc(utc(c["updated"]))} &middot; '
            f'<a href="#{_anchor(c["id"])}">details</a></span></td></tr>')
    return (f'<section class="card summary"><h3>{len(changes)} change{"s" if len(changes) != 1 else ""}: '
            f"{esc(text)}</h3><table>{''.join(rows)}</table></section>")


def _anchor(change_id: str) -> str:
    return "change-" + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(change_id))


# -- per target -----------------------------------------------------------------------------------
def _target(t: dict) -> str:
    pinned = f' &middot; <strong>pinned</strong> by {esc(t["pinned_by"] or "?")}' if t["pinned"] else ""
    head = (f'<h2 id="target-{esc(_anchor(t["name"]))}">{esc(t["name"])}</h2>'
            f'<p class="meta">{t["calls"]} calls &middot; success {esc(pct(t["success_rate"]))} &middot; '
            f'p50 {esc(secs(t["p50_s"]))} &middot; p95 {esc(secs(t["p95_s"]))} &middot; active version '
            f'<code>{esc(t["active_version"] or "-")}</code>{pinned}</p>')
    names = t["metric_names"]
    header = "".join(f"<th>{esc(h)}</th>" for h in ("version", "calls", "success", "95 % interval", "p50", "p95"))
    header += "".join(f"<th>{esc(n)}</th>" for n in names)
    rows = []
    for r in t["versions"]:
        ci = r["success_ci"]
        cells = [f'<code>{esc(r["version"])}</code>{" <strong>(active)</strong>" if r["active"] else ""}',
                 f'<td class="num">{r["calls"]}</td>', f'<td class="num">{esc(pct(r["success_rate"]))}</td>',
                 f'<td class="num">{esc("-" if not ci else f"{pct(ci[0])} – {pct(ci[1])}")}</td>',
                 f'<td class="num">{esc(secs(r["p50_s"]))}</td>', f'<td class="num">{esc(secs(r["p95_s"]))}</td>']
        for n in names:
            cells.append(f'<td class="num">{_metric_cell(r["metrics"].get(n))}</td>')
        rows.append(f"<tr><td>{cells[0]}</td>{''.join(cells[1:])}</tr>")
    table = (f'<div class="card"><h4>Calls per version</h4><table class="data"><tr>{header}</tr>{"".join(rows)}'
             "</table></div>") if rows else '<div class="card"><p class="meta">No calls recorded.</p></div>'
    return f'<section class="target">{head}{"".join(_change(c) for c in t["changes"])}{table}</section>'


def _metric_cell(m: dict | None) -> str:
    if not m or m["mean"] is None:
        return "-"
    return f'{m["mean"]:.4g} <span class="meta">({m["n"]})</span>'


# -- per change -----------------------------------------------------------------------------------
def _change(c: dict) -> str:
    kind = "revert" if c["kind"] == "revert" else c["mode"]
    head = (f'<header><span class="badge {c["tone"]}">{esc(c["badge"])}</span>'
            f'<h3>{esc(c["target"])}: <span class="mono">{esc(c["baseline"] or "-")} &rarr; '
            f'{esc(c["candidate"] or "-")}</span></h3><span class="meta">{esc(kind)} &middot; change '
            f'<code>{esc(c["id"])}</code></span></header>')
    body = [head, f'<p class="headline verdict">{esc(c["headline"])}</p>']
    v = c.get("verdict")
    if v and v.get("reason") and v.get("reason") not in c["headline"]:
        body.append(f'<p class="meta">Verdict: <strong>{esc(v.get("kind"))}</strong>'
                    f'{" on " + esc(v["metric"]) if v.get("metric") else ""}: {esc(v.get("reason"))}</p>')
    elif v:
        body.append(f'<p class="meta">Verdict: <strong>{esc(v.get("kind"))}</strong>'
                    f'{" on " + esc(v["metric"]) if v.get("metric") else ""}</p>')
    if c.get("series") is not None:
        body.append(_charts(c))
    left = _evidence(c)
    right = _steps(c)
    body.append(f'<div class="cols"><div>{left}</div><div>{right}</div></div>')
    body.append(f"<details><summary>patch and policy</summary><pre>{esc(json.dumps(c['patch'], indent=1, default=str, ensure_ascii=False))}"
                f"</pre><pre>{esc(json.dumps(c['policy'], indent=1, default=str, ensure_ascii=False))}</pre></details>")
    return (f'<article class="card change tone-{c["tone"]}" id="{_anchor(c["id"])}" data-change-id="{esc(c["id"])}">'
            + "".join(body) + "</article>")


def _charts(c: dict) -> str:
    s = c["series"]
    pts = s["points"]
    xs = [p["n"] for p in pts]
    marks = [{"x": n, "label": f"ramp to {w:.0%}", "color": RAMP} for n, w in s["ramp_marks"] if xs and n <= max(xs)]
    if s["decision_n"] is not None and c["state"] not in ("canary", "switched", "paused", "proposed"):
        marks.append({"x": s["decision_n"], "label": f"{s['decision']} here (n={s['decision_n']})", "color": DECIDE,
                      "strong": True})
    if xs and s["min_calls"] <= max(xs):
        marks.append({"x": s["min_calls"], "label": "min calls", "color": TOL})
    x_label = "decided calls of the new version (candidate)"
    base_label = "old version (baseline)" + (", frozen window" if s["switch"] else "")
    rate = line_chart(
        title="Success rate", xs=xs, x_label=x_label,
        lines=[{"label": base_label, "values": [p["base_rate"] for p in pts], "color": BASE},
               {"label": "new version (candidate)", "values": [p["cand_rate"] for p in pts], "color": CAND}],
        band={"label": "anytime-valid bound", "lower": [p.get("rate_lo") for p in pts],
              "upper": [p.get("rate_hi") for p in pts], "color": BAND},
        refs=[{"label": f"tolerance (-{s['success_tolerance'] * 100:g} points)", "color": TOL,
               "values": [None if p["base_rate"] is None else p["base_rate"] - s["success_tolerance"] for p in pts]}],
        marks=marks, y_fmt=lambda v: f"{v * 100:.0f}%", y_floor=0.0, y_ceiling=1.0)
    lat = line_chart(
        title="Median latency of successful calls (geometric mean)", xs=xs, x_label=x_label,
        lines=[{"label": "old (baseline)", "values": [p["base_lat"] for p in pts], "color": BASE},
               {"label": "new (candidate)", "values": [p["cand_lat"] for p in pts], "color": CAND}],
        band={"label": "anytime-valid bound", "lower": [p.get("lat_lo") for p in pts],
              "upper": [p.get("lat_hi") for p in pts], "color": BAND},
        refs=[{"label": f"tolerance (+{s['latency_tolerance']:.0%})", "color": TOL,
               "values": [None if p["base_lat"] is None else p["base_lat"] * (1 + s["latency_tolerance"])
                          for p in pts]}],
        marks=marks, y_fmt=secs, y_floor=0.0)
    charts = [rate, lat]
    spec = s.get("metric_spec")
    if s.get("metric") and spec:
        tol = spec["tolerance"]
        higher = spec["better"] == "higher"
        if spec.get("relative"):
            f = (1 - tol) if higher else (1 + tol)
            ref = [None if p.get("m_base") is None else p["m_base"] * f for p in pts]
            tol_label = f"tolerance ({'-' if higher else '+'}{tol:.0%})"
        else:
            ref = [None if p.get("m_base") is None else p["m_base"] + (-tol if higher else tol) for p in pts]
            tol_label = f"tolerance ({'-' if higher else '+'}{tol:g})"
        charts.append(line_chart(
            title=f"{s['metric']} ({spec['better']} is better)", xs=xs, x_label=x_label,
            lines=[{"label": "old (baseline)", "values": [p.get("m_base") for p in pts], "color": BASE},
                   {"label": "new (candidate)", "values": [p.get("m_cand") for p in pts], "color": CAND}],
            band={"label": "anytime-valid bound", "lower": [p.get("m_lo") for p in pts],
                  "upper": [p.get("m_hi") for p in pts], "color": BAND},
            refs=[{"label": tol_label, "color": TOL, "values": ref}], marks=marks, y_fmt=lambda v: f"{v:.3g}"))
    notes = ["Replayed from the stored calls in the order they started; the shaded band is where the judge's "
             "anytime-valid bound puts the new version (from " + str(s["min_calls"]) + " calls per arm on). "
             "A change is rolled back when the band lies wholly on the worse side of the old version and the new "
             "version is past the dashed tolerance line."]
    if s["capped"]:
        notes.append(f"Only the first {s['cap']:,} decided calls of the new version are drawn.")
    if s["clipped"]:
        notes.append("The change has more stored calls than the report reads; the curves show its first ones.")
    if not pts:
        notes.append("No calls of this change are stored (retention may have removed them).")
    return f'<div class="charts">{"".join(charts)}</div><p class="caption">{esc(" ".join(notes))}</p>'


def _judgement(worse: bool, fine: bool) -> str:
    if worse:
        return '<span class="worse">worse</span>'
    if fine:
        return '<span class="fine">within tolerance</span>'
    return '<span class="open">not shown yet</span>'


def _evidence(c: dict) -> str:
    v = c.get("verdict")
    if not v:
        return "<h4>Evidence</h4><p class=\"meta\">No verdict recorded.</p>"
    ev = v.get("evidence") or {}
    n = ev.get("n") or {}
    rows = []
    if n:
        rows.append(("calls judged (n)", str(n.get("baseline", "-")), str(n.get("candidate", "-")), "", "", ""))
    sr = ev.get("success_rate")
    if sr:
        tol = sr["tolerance"]
        rows.append(("success rate", pct(sr["baseline"]), pct(sr["candidate"]),
                     f"{sr['diff'] * 100:+.1f} pts [{sr['lower'] * 100:+.1f}, {sr['upper'] * 100:+.1f}]",
                     f"-{tol * 100:g} pts", _judgement(sr["upper"] < 0 and sr["diff"] < -tol, sr["lower"] > -tol)))
    lat = ev.get("latency")
    if lat:
        tol = lat["tolerance"]
        rows.append(("median latency", secs(lat["baseline_median_s"]), secs(lat["candidate_median_s"]),
                     f"x{lat['ratio']:.3f} [{lat['ratio_lower']:.3f}, {lat['ratio_upper']:.3f}]", f"+{tol:.0%}",
                     _judgement(lat["ratio_lower"] > 1 and lat["ratio"] > 1 + tol and v.get("metric") == "latency",
                                lat["ratio_upper"] < 1 + tol)))
    p95 = ev.get("latency_p95")
    if p95:
        rows.append(("p95 latency", f"{secs(p95.get('baseline'))} (upper {secs(p95.get('baseline_upper'))})",
                     f"{secs(p95.get('candidate'))} (lower {secs(p95.get('candidate_lower'))})", "",
                     f"+{p95.get('tolerance', 0):.0%}",
                     _judgement(v.get("metric") == "latency_p95", False) if v.get("metric") == "latency_p95"
                     else '<span class="meta">no rise shown</span>'))
    for name, m in sorted((ev.get("metrics") or {}).items()):
        if "ratio" in m:
            diff = f"x{m['ratio']:.3f} [{m['ratio_lower']:.3f}, {m['ratio_upper']:.3f}]"
            tol = f"{'+' if m['better'] == 'lower' else '-'}{m['tolerance']:.0%}"
        else:
            diff = f"{m['diff']:+.4g} [{m['lower']:+.4g}, {m['upper']:+.4g}]"
            tol = f"{'+' if m['better'] == 'lower' else '-'}{m['tolerance']:g}"
        rows.append((f"{name} ({m['better']} is better)", f"{m['baseline']:.4g}", f"{m['candidate']:.4g}", diff, tol,
                     _judgement(v.get("metric") == name, False) if v.get("metric") == name
                     else '<span class="meta">see bound</span>'))
    trip = ev.get("tripwire")
    if trip:
        base = trip.get("baseline_since_run") or {}
        rows.append(("tripwire", f"{base.get('failures', 0)} of {base.get('calls', 0)} failed meanwhile",
                     f"{len(trip.get('calls') or [])} failed in a row", f"{trip.get('judged_failed', 0)} judged failed "
                     "after they returned", f"{c['policy'].get('tripwire_consecutive', 5)} in a row",
                     '<span class="worse">fired</span>'))
    for missing in ev.get("missing_metrics") or ():
        rows.append((missing, "reported", "not reported", "", "", '<span class="open">missing</span>'))
    head = "".join(f"<th>{h}</th>" for h in ("", "old (baseline)", "new (candidate)", "difference [bound]",
                                              "tolerance", "result"))
    body = "".join(f"<tr><td>{esc(r[0])}</td><td class=\"num\">{esc(r[1])}</td><td class=\"num\">{esc(r[2])}</td>"
                   f"<td class=\"num\">{esc(r[3])}</td><td class=\"num\">{esc(r[4])}</td><td>{r[5]}</td></tr>"
                   for r in rows)
    foot = ""
    if ev.get("alpha") is not None:
        foot = (f'<p class="meta">alpha {ev["alpha"]:g} ({ev.get("alpha_per_metric", 0):.4g} per metric, '
                f'{ev.get("metrics_judged", "?")} judged); minimum {ev.get("min_calls", "?")} calls per arm. '
                f'{esc(ev.get("test", ""))}.</p>')
    table = f'<div class="scroll"><table class="data evidence"><tr>{head}</tr>{body}</table></div>' if rows else \
        '<p class="meta">The verdict carries no numbers.</p>'
    return f"<h4>Evidence</h4>{table}{foot}"


def _steps(c: dict) -> str:
    items = [f"<li>{esc(utc(c['created']))}: proposed by <strong>{esc(c['actor'] or '-')}</strong></li>"]
    for e in c["events"]:
        if e["type"] == "change_proposed":
            continue
        ramp = next((r for r in c["ramp"] if r["ts"] == e["ts"] and r["type"] == e["type"]), None)
        what = {"change_applied": "started serving", "arm_weight_changed": "ramp step",
                "rollback_started": "rollback started", "rollback_succeeded": "rolled back (old version serves)",
                "promoted": "promoted", "change_rejected": "rejected", "paused": "paused", "resumed": "resumed",
                "restore_failed": "restore failed", "watch_regressed": "regressed after promotion",
                "reverted": "reverted"}.get(e["type"], e["type"])
        if ramp is not None and isinstance(ramp.get("weight"), (int, float)):
            what += f": the new version gets {ramp['weight']:.0%} of calls"
            if ramp.get("candidate_calls") is not None:
                what += f" (after {ramp['candidate_calls']} of its calls)"
        items.append(f"<li>{esc(e['ts'])} UTC: {esc(what)} &middot; by <strong>{esc(e['actor'] or '-')}</strong></li>")
    return f'<h4>Ramp steps and who acted</h4><ol class="steps">{"".join(items)}</ol>'


# -- the trail ------------------------------------------------------------------------------------
def _trail(model: dict) -> str:
    t = model["trail"]
    if t["ok"]:
        status = (f'<p><span class="trailchip ok">Verification OK</span> {t["events"]} events; head seq '
                  f'{t["head_seq"]}, hash <code>{esc(t["head_hash"])}</code>. Keep the head hash elsewhere to also '
                  "catch a rewrite of the whole chain.</p>")
    else:
        problems = "".join(f"<li>{esc(p)}</li>" for p in t["problems"][:50])
        more = f"<li>… {len(t['problems']) - 50} more</li>" if len(t["problems"]) > 50 else ""
        status = (f'<p><span class="trailchip failed">Verification FAILED</span> {t["events"]} events; head seq '
                  f'{t["head_seq"]}, hash <code>{esc(t["head_hash"])}</code>. The trail was edited, cut or '
                  f'reordered:</p><ul class="problems">{problems}{more}</ul>')
    rows = "".join(
        f'<tr><td class="num">{esc(e["seq"])}</td><td class="num">{esc(e["ts"])}</td><td>{esc(e["type"])}</td>'
        f'<td>{esc(e["target"])}</td><td>{esc(e["actor"])}</td><td>{esc(e["detail"])}</td></tr>' for e in t["shown"])
    shown = len(t["shown"])
    note = f" (the newest {shown} of {t['matching']})" if shown < t["matching"] else ""
    table = (f"<details open><summary>{shown} events{esc(note)}</summary><table class=\"data\"><tr><th>seq</th>"
             "<th>time (UTC)</th><th>event</th><th>target</th><th>actor</th><th>detail</th></tr>"
             f"{rows}</table></details>") if rows else '<p class="meta">No events.</p>'
    return f'<h2 id="trail">The trail</h2><div class="card trail">{status}{table}</div>'


def _footer(model: dict) -> str:
    return ("<footer>How a change is judged: <code>docs/statistics.md</code>. Curves are replayed from stored calls "
            f"(at most {model['replay_cap']:,} decided calls of the new version per change). "
            "This page is one file: no script, no network.</footer>")
