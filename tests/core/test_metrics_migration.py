"""Stores written before metrics existed open, keep their statistics, and then record,
aggregate and read back metrics; odd stored values read as absent, never raise."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from sil_core import Guard
from sil_core.records import CallRecord, Feedback, Outcome
from sil_core.store import open_store

from ..conftest import PG_BASE

from .test_fixture_stores import EXPECTED, FIXTURES, _url


def _old_stats(g: Guard) -> dict:
    return {t: {"n": s.n, "successes": s.successes, "failures": s.failures, "score_mean": s.score_mean}
            for t in ("writer", "planner", "critic") for s in [g.stats(t)]}


def _same(got: dict, want: dict) -> None:
    for target, stats in want.items():
        assert got[target]["score_mean"] == pytest.approx(stats["score_mean"])
        assert {k: v for k, v in got[target].items() if k != "score_mean"} == \
            {k: v for k, v in stats.items() if k != "score_mean"}


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_v1_store_records_and_reads_metrics(kind, tmp_path):
    url = _url(kind, tmp_path)
    with Guard(url, refresh_interval=0, handle_sigterm=False) as g:
        _same(_old_stats(g), EXPECTED[kind]["stats"])
        old = g.stats("planner")  # written before metrics: only the score, from its own fields
        assert set(old.metrics) == ({"score"} if old.score_n else set())
        assert not old.score_n or old.metrics["score"].mean == pytest.approx(old.score_mean)
        ids = [g.record("metered", success=True, latency_s=0.1, metrics={"tokens_out": 10.0 * (i + 1)})
               for i in range(3)]
        g.feedback(ids[0], metrics={"tokens_out": 40.0, "cost_usd": 0.5})
        g.feedback("not-yet", metrics={"cost_usd": 2.0})  # waits for its record
        g.flush()
        late = g.record("metered", success=True, latency_s=0.1)
        g.flush()
        _same(_old_stats(g), EXPECTED[kind]["stats"])
    with open_store(url) as store:  # a fresh handle reads what was written
        m = store.stats("metered").metrics
        assert m["tokens_out"].n == 3 and m["tokens_out"].mean == pytest.approx(30.0)
        assert m["cost_usd"].n == 1 and m["cost_usd"].mean == pytest.approx(0.5)
        got = store.get_call(ids[0])
        assert got.metrics == {"tokens_out": 10.0} and set(got.feedback_metrics) == {"tokens_out", "cost_usd"}
        assert store.get_call(late).metrics is None
        store.write([CallRecord("not-yet", "metered", time.time(), 0.1, Outcome.OK)])
        assert store.get_call("not-yet").feedback_metrics["cost_usd"][0] == 2.0
        assert store.stats("metered").metrics["cost_usd"].n == 2
        assert {r.id: r.effective_metrics for r in store.read_calls("metered")}[ids[1]] == {"tokens_out": 20.0}
        planner = store.stats("planner")
        assert (planner.n, planner.failures) == (6, 1)
    if kind == "sqlite":
        from sil_core.store.sqlite import MIGRATIONS

        with sqlite3.connect(tmp_path / "store.db") as conn:
            assert conn.execute("SELECT version FROM sil_schema_version").fetchone()[0] == len(MIGRATIONS)
    else:
        agg = json.loads((tmp_path / "jsonl" / "aggregates.json").read_text())
        assert agg["format"] == 2
        rows = [row for row in agg["cells"] if row[0] == "metered"]
        assert rows and all(len(row) == 7 and set(row[6]) == {"tokens_out", "cost_usd"} for row in rows)
        assert all(len(row) == 6 for row in agg["cells"] if row[0] != "metered")  # no metrics, as before


def test_a_postgresql_store_of_the_previous_schema_gets_metrics(pg_schema):
    import psycopg

    from sil_core.aggregates import cells_for
    from sil_core.store.postgres import MIGRATIONS, _Sql, quote_ident

    now = time.time()
    old = [CallRecord(f"old-{i}", "agent", now - 60, 0.1, Outcome.OK if i else Outcome.ERROR, version="v1",
                      score=0.25 * i) for i in range(4)]
    with psycopg.connect(PG_BASE, autocommit=True) as conn:  # the schema as released before metrics
        schema = quote_ident(pg_schema)
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.sil_schema_version "
                     "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for number, script in enumerate(MIGRATIONS[:-1], start=1):
            for statement in filter(str.strip, script.format(schema=schema).split(";")):
                conn.execute(statement)
            conn.execute(f"INSERT INTO {schema}.sil_schema_version (version) VALUES (%s)", (number,))
        for r in old:
            conn.execute(f"INSERT INTO {schema}.sil_calls (id, target, ts, duration_s, outcome, version, score) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s)", (r.id, r.target, r.ts, r.duration_s, r.outcome,
                                                                 r.version, r.score))
        conn.execute(f"INSERT INTO {schema}.sil_pending_feedback (call_id, score, score_ts, received) "
                     "VALUES ('early', 0.5, %s, %s)", (now, now))
        sql = _Sql(pg_schema)
        cells = sorted(cells_for(old).items())
        conn.execute(sql.upsert_cells, [list(col) for col in zip(*[(*k, *c.values()) for k, c in cells])])
    url = f"{PG_BASE}?schema={pg_schema}"
    with open_store(url) as store:
        before = store.stats("agent")
        assert (before.n, before.failures, before.score_n) == (4, 1, 4) and set(before.metrics) == {"score"}
        assert before.metrics["score"].n == 4 and before.metrics["score"].mean == pytest.approx(before.score_mean)
        assert store.get_call("old-1").metrics is None and store.get_call("old-1").feedback_metrics is None
        store.write([CallRecord("new-1", "agent", now, 0.1, Outcome.OK, version="v2", metrics={"tokens_in": 8.0}),
                     CallRecord("early", "agent", now, 0.1, Outcome.OK, version="v2")],
                    [Feedback("old-2", metrics={"tokens_in": 2.0}, ts=now)])
        assert store.get_call("early").feedback_score == 0.5  # the old pending row, folded in
        after = store.stats("agent")
        assert (after.n, after.failures, after.score_n) == (6, 1, 5)
        assert after.metrics["tokens_in"].n == 2 and after.metrics["tokens_in"].mean == pytest.approx(5.0)
        assert store.stats("agent", version="v1").score_mean == before.score_mean
    with psycopg.connect(PG_BASE, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute(f"SELECT version FROM {schema}.sil_schema_version ORDER BY 1")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    with open_store(url) as store:  # migrated: opens as it is
        assert store.get_call("old-2").feedback_metrics == {"tokens_in": [2.0, now]}


# -- odd stored values ------------------------------------------------------------------------------
def test_odd_sqlite_rows_read_without_metrics(tmp_path):
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    now = time.time()
    with open_store(url) as store:
        store.write([CallRecord("a", "t", now, 0.1, Outcome.OK, metrics={"x": 1.0}),
                     CallRecord("b", "t", now, 0.1, Outcome.OK, metrics={"x": 3.0})])
    with sqlite3.connect(tmp_path / "odd.db") as conn:
        conn.execute("UPDATE sil_calls SET metrics = 'not json', feedback_metrics = '[1, 2]' WHERE id = 'a'")
        conn.execute("""UPDATE sil_calls SET metrics = '{"x": NaN, "y": 2, "z": "s", "w": true}',
                        feedback_metrics = '{"x": [Infinity, 1], "y": [5, "soon"], "z": 4}' WHERE id = 'b'""")
        conn.execute("INSERT INTO sil_pending_feedback (call_id, received, metrics) VALUES ('c', ?, '{oops')", (now,))
        conn.execute("INSERT INTO sil_metrics (target, version, arm, hour, name, n) VALUES ('t', '', '', -1, 'empty', 0)")
        conn.execute("INSERT INTO sil_metrics (target, version, arm, hour, name, n) VALUES ('gone', '', '', -1, 'q', 2)")
    with open_store(url) as store:
        a, b = store.get_call("a"), store.get_call("b")
        assert (a.metrics, a.feedback_metrics) == (None, None)
        assert b.metrics == {"y": 2.0} and b.feedback_metrics == {"y": [5.0, None]}
        assert set(store.stats("t").metrics) == {"x"} and store.stats("gone").n == 0
        store.write([CallRecord("c", "t", now, 0.1, Outcome.OK, metrics={"x": 5.0})])
        assert store.get_call("c").feedback_metrics is None and store.stats("t").metrics["x"].n == 3


def test_odd_jsonl_lines_read_without_metrics(tmp_path):
    folder = tmp_path / "odd"
    now = time.time()
    with open_store(f"jsonl:///{folder}") as store:
        store.write([CallRecord("a", "t", now, 0.1, Outcome.OK, metrics={"x": 1.0})])
    with open(folder / "calls.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "b", "target": "t", "ts": %r, "duration_s": 0.1, "outcome": "ok", '
                '"metrics": {"x": NaN, "y": 2, "z": [1]}, "feedback_metrics": {"y": [3, null], "q": 1}}\n' % now)
        f.write('{"feedback": "a", "success": null, "score": null, "ts": %r, "metrics": {"x": "7", "v": 4}}\n' % now)
        f.write('{"feedback": "a", "success": null, "score": null, "metrics": [1, 2]}\n')
    agg = json.loads((folder / "aggregates.json").read_text())
    for row in agg["cells"]:
        row[6] = {**row[6], "bad": [1, "a", 0, 0, 0, 0], "short": [1, 2]}
    (folder / "aggregates.json").write_text(json.dumps(agg))
    (folder / "pending.json").write_text(json.dumps(
        {"format": 2, "pending": {"c": {"received": now, "metrics": {"x": ["NaN", 1], "y": [4, 1]}}}}))
    with open_store(f"jsonl:///{folder}") as store:
        m = store.stats("t").metrics  # the lines added by hand are counted on open, their odd values not
        assert {name: s.n for name, s in m.items()} == {"x": 1, "y": 1, "v": 1} and m["x"].mean == 1.0
        rows = {r.id: r for r in store.read_calls("t")}
        assert rows["a"].feedback_metrics == {"v": [4.0, now]}
        assert rows["b"].metrics == {"y": 2.0} and rows["b"].feedback_metrics == {"y": [3.0, None]}
        store.write([CallRecord("c", "t", now, 0.1, Outcome.OK)])
        assert store.get_call("c").feedback_metrics == {"y": [4.0, 1.0]}
