"""``guard.adopt``: a first version without a change; ``rollback(cooldown=False)``: a change
superseded by a newer one does not refuse its patch afterwards."""

from __future__ import annotations

import pytest

from sil_core import DictConfigAdapter, Guard, InvalidTransition, State


def test_adopt_makes_a_baseline_without_a_change():
    adapter = DictConfigAdapter({"skill": {"text": "created"}})
    with Guard("memory://", adapter=adapter, refresh_interval=0) as g:
        version = g.adopt("skill", {"text": "created"}, actor="hermes")
        assert g.view("skill").active == version and g.changes("skill") == []
        change = g.propose("skill", {"text": "edited"}, mode="switch")
        assert change.baseline_version == version and change.state == State.SWITCHED
        with pytest.raises(InvalidTransition):
            g.adopt("skill", {"text": "other"})  # not while a change is in flight
        assert g.rollback("skill") and adapter.configs["skill"] == {"text": "created"}
        assert [e["type"] for e in g.trail("skill")][0] == "version_adopted" and g.verify_trail().ok


def test_a_superseded_change_can_be_proposed_again():
    with Guard("memory://", adapter=DictConfigAdapter({"t": {"v": 1}}), refresh_interval=0) as g:
        g.propose("t", {"v": 2}, mode="switch")
        assert g.rollback("t", reason="superseded by a newer edit", cooldown=False)
        assert g.propose("t", {"v": 2}, mode="switch").state == State.SWITCHED  # no cooldown
        assert g.rollback("t")  # judged bad: refused for its cooldown
        again = g.propose("t", {"v": 2}, mode="switch")
        assert again.state == State.REJECTED and "cooldown" in again.reason
