"""Small inline SVG charts: lines, a shaded band, reference lines, vertical markers."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from .text import esc

__all__ = ("line_chart", "nice_ticks")

Number = float | None


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]`` (whole numbers with ``integer``)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    if integer:
        raw = max(raw, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw and not (integer and m * mag % 1))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _path(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(points))


def _runs(xs: Sequence[float], ys: Sequence[Number]) -> list[list[tuple[float, float]]]:
    """Unbroken runs of defined points."""
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for x, y in zip(xs, ys):
        if y is None or not math.isfinite(y):
            if current:
                runs.append(current)
            current = []
        else:
            current.append((x, y))
    if current:
        runs.append(current)
    return runs


def line_chart(
    *, title: str, xs: Sequence[float], lines: Sequence[dict], band: dict | None = None,
    refs: Sequence[dict] = (), marks: Sequence[dict] = (), y_fmt: Callable[[float], str] = lambda v: f"{v:g}",
    x_label: str = "", width: int = 540, height: int = 262, y_floor: float | None = None,
    y_ceiling: float | None = None, note: str = "",
) -> str:
    """An SVG line chart.

    ``lines``: ``{"label", "values", "color", "dash"?}``; ``band``: ``{"label", "lower",
    "upper", "color"}`` (shaded where both are defined); ``refs``: dashed reference lines
    ``{"label", "values", "color"}`` (a value per x); ``marks``: vertical markers ``{"x",
    "label", "color", "strong"?}``.
    """
    left, right, top, bottom = 62, 16, 30, 76
    pw, ph = width - left - right, height - top - bottom
    ys = [v for line in lines for v in line["values"] if v is not None and math.isfinite(v)]
    if band:
        ys += [v for v in (*band["lower"], *band["upper"]) if v is not None and math.isfinite(v)]
    ys += [v for r in refs for v in r["values"] if v is not None and math.isfinite(v)]
    label = esc(title)
    if not xs or not ys:
        return (f'<svg class="chart" role="img" aria-label="{label}: no data yet" viewBox="0 0 {width} {height}" '
                f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{label}</title>'
                f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">{label}: no calls '
                f'to draw yet</text></svg>')
    y_lo, y_hi = min(ys), max(ys)
    if y_floor is not None:
        y_lo = max(y_lo, y_floor)
    if y_ceiling is not None:
        y_hi = min(y_hi, y_ceiling)
    if y_hi - y_lo < 1e-12:
        pad = abs(y_hi) * 0.1 or 0.1
        y_lo, y_hi = y_lo - pad, y_hi + pad
    pad = (y_hi - y_lo) * 0.06
    y_lo, y_hi = y_lo - pad, y_hi + pad
    if y_floor is not None:
        y_lo = max(y_lo, y_floor)
    if y_ceiling is not None:
        y_hi = min(y_hi, y_ceiling)
    x_lo, x_hi = min(xs), max(xs)
    for m in marks:
        x_hi = max(x_hi, m["x"])
    if x_hi - x_lo < 1e-9:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        y = min(max(y, y_lo), y_hi)
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * ph

    out = [f'<svg class="chart" role="img" aria-label="{label}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{label}</title>',
           f'<text x="{left}" y="18" class="ctitle">{label}</text>']
    # grid and axes
    for t in nice_ticks(y_lo, y_hi, 4):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{esc(y_fmt(t))}</text>')
    for t in nice_ticks(x_lo, x_hi, 7, integer=True):
        if t < x_lo - 1e-9:
            continue
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" class="axis"/>'
                   f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{t:g}</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>')
    if x_label:
        out.append(f'<text x="{left + pw / 2}" y="{top + ph + 31}" text-anchor="middle" class="xlabel">'
                   f'{esc(x_label)}</text>')
    # the band
    if band:
        pairs = [(x, lo, hi) for x, lo, hi in zip(xs, band["lower"], band["upper"]) if lo is not None and hi is not None]
        runs: list[list[tuple[float, float, float]]] = []
        prev = None
        for x, lo, hi in pairs:
            idx = xs.index(x)
            if prev is None or idx != prev + 1:
                runs.append([])
            runs[-1].append((x, lo, hi))
            prev = idx
        for run in runs:
            if len(run) == 1:
                x, lo, hi = run[0]
                out.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}" '
                           f'stroke="{band["color"]}" stroke-width="4" opacity="0.3"/>')
                continue
            upper = [(sx(x), sy(hi)) for x, _, hi in run]
            lower = [(sx(x), sy(lo)) for x, lo, _ in reversed(run)]
            out.append(f'<path d="{_path(upper + lower)} Z" fill="{band["color"]}" fill-opacity="0.18" '
                       f'stroke="none"/>')
    for ref in refs:
        for run in _runs(xs, ref["values"]):
            out.append(f'<path d="{_path([(sx(x), sy(y)) for x, y in run])}" fill="none" stroke="{ref["color"]}" '
                       f'stroke-width="1.5" stroke-dasharray="6 4"/>')
    for line in lines:
        for run in _runs(xs, line["values"]):
            pts = [(sx(x), sy(y)) for x, y in run]
            if len(pts) == 1:
                out.append(f'<circle cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="3" fill="{line["color"]}"/>')
            else:
                dash = f' stroke-dasharray="{line["dash"]}"' if line.get("dash") else ""
                out.append(f'<path d="{_path(pts)}" fill="none" stroke="{line["color"]}" stroke-width="2.2"'
                           f'{dash} stroke-linejoin="round"/>')
    # vertical markers, labels staggered so they do not overlap
    placed: list[tuple[float, int]] = []
    for m in sorted(marks, key=lambda m: (not m.get("strong"), m["x"])):
        x = sx(m["x"])
        strong = m.get("strong")
        dash = "" if strong else ' stroke-dasharray="2 3"'
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="{m["color"]}" '
                   f'stroke-width="{2 if strong else 1}"{dash}/>')
        text = esc(m["label"])
        row = 0
        while any(abs(x - p) < 80 and r == row for p, r in placed):
            row += 1
        placed.append((x, row))
        anchor = "end" if x > left + pw * 0.75 else "start"
        dx = -4 if anchor == "end" else 4
        out.append(f'<text x="{x + dx:.1f}" y="{top + 12 + row * 13}" text-anchor="{anchor}" '
                   f'class="mark{" strong" if strong else ""}" fill="{m["color"]}">{text}</text>')
    # legend
    items = [(line["label"], line["color"], "line", line.get("dash")) for line in lines]
    if band:
        items.append((band["label"], band["color"], "band", None))
    items += [(r["label"], r["color"], "ref", None) for r in refs]
    lx, ly = left, height - 25
    for text, color, kind, dash in items:
        if lx + 20 + 6.2 * len(text) > width and lx > left:
            lx, ly = left, ly + 14
        if kind == "band":
            out.append(f'<rect x="{lx}" y="{ly - 9}" width="16" height="10" fill="{color}" fill-opacity="0.25"/>')
        else:
            d = ' stroke-dasharray="5 3"' if kind == "ref" or dash else ""
            out.append(f'<line x1="{lx}" x2="{lx + 16}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                       f'stroke-width="{1.5 if kind == "ref" else 2.2}"{d}/>')
        out.append(f'<text x="{lx + 20}" y="{ly}" class="legend">{esc(text)}</text>')
        lx += 28 + 6.2 * len(text)
    if note:
        out.append(f'<text x="{left + pw}" y="18" text-anchor="end" class="note">{esc(note)}</text>')
    out.append("</svg>")
    return "".join(out)
