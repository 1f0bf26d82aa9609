"""The trail: hash-chained, verified; any edit, deletion, insertion, reordering or
truncation is found."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest

from sil_core import open_store, verify_trail
from sil_core.trail import EVENT_TYPES, append_event


@pytest.fixture
def trail_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'trail.db'}"
    store = open_store(url)
    for i in range(30):
        append_event(store, EVENT_TYPES[i % 5], f"t{i % 3}", change_id=f"c{i // 5}", actor="test",
                     evidence={"n": i, "rate": i / 30})
    assert verify_trail(store).ok
    store.close()
    return tmp_path / "trail.db", url


def _rows(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT seq, target, hash, event FROM sil_trail ORDER BY seq").fetchall()


def _tamper(db, kind, rng):
    conn = sqlite3.connect(db)
    rows = _rows(db)
    seq, _, _, text = rows[rng.randrange(len(rows))]
    event = json.loads(text)
    if kind == "edit":
        field = rng.choice(["type", "target", "actor", "data", "ts", "change_id"])
        event[field] = {"type": "promoted", "target": "other", "actor": "mallory", "data": {"n": -1},
                        "ts": "2020-01-01T00:00:00+00:00", "change_id": "forged"}[field]
        conn.execute("UPDATE sil_trail SET event = ? WHERE seq = ?", (json.dumps(event), seq))
    elif kind == "delete":
        conn.execute("DELETE FROM sil_trail WHERE seq = ?", (rng.randrange(1, len(rows)),))
    elif kind == "swap":
        a, b = rng.sample(range(1, len(rows) + 1), 2)
        ea, eb = (json.loads(r[3]) for r in rows if r[0] in (a, b))
        ea["seq"], eb["seq"] = eb["seq"], ea["seq"]
        conn.execute("DELETE FROM sil_trail WHERE seq IN (?, ?)", (a, b))
        for e in (ea, eb):
            conn.execute("INSERT INTO sil_trail (seq, target, hash, event) VALUES (?, ?, ?, ?)",
                         (e["seq"], e["target"], e["hash"], json.dumps(e)))
    elif kind == "insert":
        forged = dict(event, seq=len(rows) + 1, type="promoted", prev_hash=rows[-1][2])
        conn.execute("INSERT INTO sil_trail (seq, target, hash, event) VALUES (?, ?, ?, ?)",
                     (forged["seq"], forged["target"], forged["hash"], json.dumps(forged)))
    elif kind == "truncate":
        conn.execute("DELETE FROM sil_trail WHERE seq > ?", (rng.randrange(1, len(rows)),))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("kind", ["edit", "delete", "swap", "insert", "truncate"])
def test_tampering_is_always_detected(trail_db, kind, tmp_path):
    import shutil

    db, _ = trail_db
    rng = random.Random(kind)
    for attempt in range(25):
        copy = tmp_path / f"copy-{attempt}.db"
        shutil.copy(db, copy)
        _tamper(copy, kind, rng)
        store = open_store(f"sqlite:///{copy}")
        report = verify_trail(store)
        store.close()
        assert not report.ok, (kind, attempt)


def test_an_untouched_trail_verifies_and_reports_its_head(trail_db):
    _, url = trail_db
    store = open_store(url)
    report = verify_trail(store)
    assert report.ok and report.events == 30 and report.head_seq == 30 and len(report.head_hash) == 64
    events = store.trail_read(target="t1")
    assert [e["seq"] for e in events] == list(range(2, 31, 3))
    store.close()


def test_unknown_event_types_are_refused():
    with open_store("memory://") as store:
        with pytest.raises(ValueError):
            append_event(store, "made_up", "t")
