"""Routing keys fall on arms independently of how the keys are built, and a change keeps
the key hash it was made with (an in-flight change from an older release keeps its arms)."""

from __future__ import annotations

from sil_core import DictConfigAdapter, Guard
from sil_core.changes.rows import ChangeRow
from sil_core.routing import bucket


def test_keys_that_differ_in_the_same_place_fall_independently():
    """crc32 put u{i}-t0 and u{i}-t1 on the same side for every i: 1000 of 1000 pairs."""
    cid = "01a2399a-abc-1"
    same = sum((bucket(cid, f"u{i}-t0") < 0.5) == (bucket(cid, f"u{i}-t1") < 0.5) for i in range(1000))
    assert 440 < same < 560
    assert sum((bucket(cid, f"u{i}-t0", "crc32") < 0.5) == (bucket(cid, f"u{i}-t1", "crc32") < 0.5)
               for i in range(1000)) == 1000  # what the old hash did
    share = sum(bucket(cid, f"user-{i}") < 0.05 for i in range(20_000)) / 20_000
    assert 0.045 < share < 0.055


def test_a_change_keeps_its_key_hash():
    with Guard("memory://", adapter=DictConfigAdapter({"t": {"v": 1}}), refresh_interval=0) as g:
        change = g.propose("t", {"v": 2})
        assert change.key_hash == "blake2b"
        for i in range(50):
            key = f"user-{i}"
            expected = "candidate" if bucket(change.id, key, change.key_hash) < change.weight else "baseline"
            assert g.route("t", key=key)[1] == expected
    old = ChangeRow.from_dict({"id": "c", "target": "t", "state": "canary", "mode": "canary", "patch": {},
                               "patch_hash": "x", "policy": {}, "created": 1.0, "updated": 1.0})
    assert old.key_hash == "crc32"  # a row written before the key hash was recorded keeps its arms
