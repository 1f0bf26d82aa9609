"""``sil report``: the page's content, from the model built through the public API."""

from __future__ import annotations

import html
import json
import re
import sqlite3

import pytest

from sil_core import Guard
from sil_core.cli import main
from sil_core.report import build_model, render, write_report
from sil_core.report import data as report_data

from ._stores import build, make_guard


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One SQLite store with every kind of change, and its report."""
    path = tmp_path_factory.mktemp("report") / "sil.db"
    guard = make_guard(f"sqlite:///{path}")
    changes = build(guard)
    model = build_model(guard)
    page = render(model)
    guard.close()
    return {"url": f"sqlite:///{path}", "changes": changes, "model": model, "html": page}


def _text(page: str) -> str:
    """The page's visible text, roughly (tags dropped, entities kept)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_every_change_has_its_badge_verdict_and_chart(built):
    page, changes = built["html"], built["changes"]
    assert set(changes) == {"writer:rolled_back", "writer:promoted", "answer:rolled_back", "summarizer:canary"}
    text = _text(page)
    assert "4 changes: 2 rolled back, 1 in flight, 1 promoted" in text
    for label in ("ROLLED BACK", "PROMOTED", "IN FLIGHT"):
        assert f">{label}<" in page
    articles = re.findall(r'<article class="card change[^"]*" id="[^"]+" data-change-id="([^"]+)">(.*?)</article>',
                          page, re.S)
    assert sorted(cid for cid, _ in articles) == sorted(c.id for c in changes.values())
    for cid, body in articles:
        change = next(c for c in changes.values() if c.id == cid)
        assert "<svg" in body  # every change that served calls has its charts
        if change.verdict is not None and not change.in_flight:
            assert html.escape(change.verdict.reason) in body
    rolled = changes["writer:rolled_back"]
    assert "Rolled back after" in text and "its success rate fell from" in text
    assert rolled.verdict.metric == "success_rate"
    assert "drop that is statistically certain" in text


def test_the_evidence_numbers_are_on_the_page(built):
    page = built["html"]
    ev = built["changes"]["writer:rolled_back"].verdict.evidence
    sr = ev["success_rate"]
    assert f"{sr['baseline'] * 100:.1f} %" in page and f"{sr['candidate'] * 100:.1f} %" in page
    assert f"{sr['diff'] * 100:+.1f} pts [{sr['lower'] * 100:+.1f}, {sr['upper'] * 100:+.1f}]" in page
    assert f">{ev['n']['baseline']}<" in page and f">{ev['n']['candidate']}<" in page
    cost = built["changes"]["answer:rolled_back"].verdict.evidence["metrics"]["cost_usd"]
    assert f"x{cost['ratio']:.3f} [{cost['ratio_lower']:.3f}, {cost['ratio_upper']:.3f}]" in page
    assert "cost_usd (lower is better)" in page  # the metric that decided gets a chart of its own


def test_the_replay_ends_where_the_judge_decided(built):
    """The curves are the judge's own reading: the replay reaches the verdict's n and the
    bound it draws there is the verdict's bound (up to records at the change's edges)."""
    for c in built["model"]["summary"]:
        if c["state"] != "rolled_back" or c["verdict"]["metric"] != "success_rate":
            continue
        series = c["series"]
        ev = c["verdict"]["evidence"]
        assert series["decision_n"] == ev["n"]["candidate"]
        at = next(p for p in series["points"] if p["n"] == series["decision_n"])
        assert at["kind"] == "regressed"
        assert at["rate_hi"] == pytest.approx(ev["success_rate"]["baseline"] + ev["success_rate"]["upper"], abs=0.02)
        return
    pytest.fail("no change rolled back on success rate")


def test_targets_versions_pin_and_metrics(built):
    page, model = built["html"], built["model"]
    assert [t["name"] for t in model["targets"]] == ["answer", "router", "summarizer", "writer"]
    router = next(t for t in model["targets"] if t["name"] == "router")
    assert router["pinned"] and router["pinned_by"] == "api"
    assert "<strong>pinned</strong> by api" in page
    writer = next(t for t in model["targets"] if t["name"] == "writer")
    assert "cost_usd" in writer["metric_names"] and sum(v["calls"] for v in writer["versions"]) == writer["calls"]
    assert "(active)" in page


def test_the_trail_and_its_verification(built):
    page, trail = built["html"], built["model"]["trail"]
    assert trail["ok"] and trail["events"] > 0
    assert "Verification OK" in page and trail["head_hash"] in page and "Trail verified" in page
    assert "rollback_succeeded" in page and "arm_weight_changed" in page


def test_a_tampered_trail_shows_failed(built, tmp_path):
    path = tmp_path / "t.db"
    source = sqlite3.connect(built["url"].removeprefix("sqlite:///"))
    with sqlite3.connect(path) as copy:
        source.backup(copy)
        seq, event = copy.execute("SELECT seq, event FROM sil_trail ORDER BY seq LIMIT 1 OFFSET 2").fetchone()
        data = json.loads(event)
        data["actor"] = "someone-else"
        copy.execute("UPDATE sil_trail SET event = ? WHERE seq = ?", (json.dumps(data), seq))
    source.close()
    out = tmp_path / "r.html"
    write_report(f"sqlite:///{path}", out)
    page = out.read_text()
    assert "Verification FAILED" in page and "Trail verification FAILED" in page
    assert "hash does not match its content (edited)" in page


def test_an_empty_store_gives_a_useful_page(tmp_path):
    with Guard("memory://") as guard:
        page = render(build_model(guard))
    assert "No calls or changes are recorded in this store yet" in page
    assert "No config change has been proposed" in page and "Verification OK" in page


def test_bad_text_is_escaped(tmp_path):
    nasty = '<script>alert("x")</script> & \'q\' \udcff'
    guard = make_guard("memory://")
    try:
        guard.adapter.configs["odd"] = {"prompt": "cite"}
        guard.adopt("odd", {"prompt": "cite"})
        guard.propose("odd", {"prompt": "</pre><img src=x onerror=alert(1)>"})
        guard.record("odd", success=True, latency_s=0.01, version=guard.change("odd").baseline_version,
                     arm="baseline")
        guard.rollback("odd", reason=nasty)
        out = tmp_path / "bad.html"
        write_report(guard, out)
    finally:
        guard.close()
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;q&#x27; \\udcff" in page
    assert "&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_bounded_reads_are_said_on_the_page(built, monkeypatch):
    """A change with more calls than the report reads, or replays, says so."""
    with Guard(built["url"], flush_interval=60) as guard:
        page = render(build_model(guard, replay_cap=20))
        assert "Only the first 20 decided calls of the new version are drawn." in page
        monkeypatch.setattr(report_data, "READ_MAX", 50)
        model = build_model(guard)
    assert "The change has more stored calls than the report reads" in render(model)
    clipped = [c["series"] for c in model["summary"] if c["series"] and c["series"]["clipped"]]
    assert clipped and all(0 < s["points"][-1]["n"] + s["points"][-1]["n_baseline"] < 50 for s in clipped)


def test_sil_report_command(built, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", "--store", built["url"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "KiB" in printed
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", "--store", built["url"], "--out", str(out), "--target", "writer", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["targets"] == 1 and data["changes"] == 2 and data["bytes"] == out.stat().st_size
    assert main(["report", "--store", built["url"], "--target", "nope", "--out", str(out)]) == 1
    assert "no calls or changes recorded for nope" in capsys.readouterr().err
    assert main(["report", "--store", built["url"], "--since", "1h", "--out", str(out)]) == 0


def test_the_page_needs_no_network(built):
    """Self-contained: no external src/href/url(), no script."""
    page = built["html"]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", page, re.I) and "@import" not in page
    assert "<script" not in page and "<link" not in page
