"""``ChangeManager``: the change engine of one Guard, put together from its parts.

It holds no Guard: it is given the store, this worker's id, a clock, and callables for the
few things it reads from its owner (the default adapter, policy and strategy, and where
events go). The parts each do one job:

* :mod:`~sil_core.routing` serves calls from cached views;
* :mod:`.rows` reads and compare-and-sets change rows and heads;
* :mod:`.propose` turns a patch into a change and starts it;
* :mod:`.act` takes a lease and promotes, rolls back, pauses or ramps;
* :mod:`.operator` serves people: requests, pins, reverts;
* :mod:`.judging` feeds the tripwire, judges, and watches promoted versions.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from .._internal.clock import SYSTEM, Clock
from .._internal.failopen import fail_open, logger as _log
from ..adapters import ConfigAdapter, adapter_from_spec
from ..policy import RolloutPolicy
from ..rollout import State
from ..routing import Router, TargetView, read_view
from ..store.base import Store
from ..trail import append_event
from .act import Actions
from .judging import Judging
from .operator import Operator
from .propose import Proposals
from .rows import ChangeRow, Rows

__all__ = ("ChangeManager",)

_LOG_LEVELS = {"rollback_succeeded": logging.WARNING, "restore_failed": logging.ERROR, "reverted": logging.WARNING}


class ChangeManager:
    """Changes of every target of one Guard (see the module docstring)."""

    def __init__(self, store: Store, *, worker_id: str, clock: Clock = SYSTEM, refresh_s: float = 0.5,
                 default_adapter: Callable[[], ConfigAdapter | None] = lambda: None,
                 default_policy: Callable[[], RolloutPolicy] = RolloutPolicy,
                 strategy: Callable[[], Any] = lambda: None,
                 emit: Callable[[dict], None] = lambda event: None) -> None:
        self.store = store
        self.worker_id = worker_id
        self.clock = clock
        self.default_adapter = default_adapter
        self.default_policy = default_policy
        self.strategy = strategy
        self.emit = emit
        #: per target: the adapter its latest proposal in this process gave
        self.adapters: dict[str, ConfigAdapter] = {}
        self.rows = Rows(store, on_head_change=self.invalidate)
        self.router = Router(self._read_view, refresh_s=refresh_s, clock=clock)
        self.lock = threading.RLock()
        #: targets with a change in flight, and targets whose promoted version is watched (this worker's view)
        self.in_flight: set[str] = set()
        self.watching: set[str] = set()
        self.proposals = Proposals(self)
        self.actions = Actions(self)
        self.operator = Operator(self)
        self.judging = Judging(self)
        #: exporters told of every trail event (the guard's ``sil_core.observe.Observers``)
        self.observers: list = []

    @property
    def refresh_s(self) -> float:
        return self.router.refresh_s

    # -- routing ---------------------------------------------------------------------------
    def view(self, target: str) -> TargetView:
        return self.router.view(target)

    def view_now(self, target: str) -> TargetView:
        return self.router.view_now(target)

    def route(self, target: str, key: Any = None) -> tuple[str | None, str | None, dict | None]:
        return self.router.route(target, key)

    def invalidate(self, target: str) -> None:
        self.router.invalidate(target)

    def _read_view(self, target: str, expires: float) -> TargetView:
        view, row = read_view(self.rows, target, expires)
        if row is not None:
            self.note(row)
        return view

    def note(self, row: ChangeRow) -> None:
        """Learn from a row read: whether its target has a change in flight or a watched
        promotion; forget what this worker kept about a change that ended."""
        with self.lock:
            if row.in_flight:
                self.in_flight.add(row.target)
            else:
                self.in_flight.discard(row.target)
            if row.state == State.PROMOTED and self.clock.time() < row.watch_until \
                    and not row.watch_alerted and row.kind != "revert":
                self.watching.add(row.target)
            else:
                self.watching.discard(row.target)
        if not row.in_flight:
            self.judging.forget(row.id, ended_watch=row.target not in self.watching)

    # -- shared by the parts ---------------------------------------------------------------
    def trail(self, type: str, target: str, change_id: str | None, actor: str | None = None, **data: Any) -> None:
        with fail_open("trail.append"):
            append_event(self.store, type, target, change_id=change_id, actor=actor or self.worker_id, **data)
        if self.observers:
            self.observers.trail({"type": type, "target": target, "change_id": change_id,
                                  "actor": actor or self.worker_id, "ts": self.clock.time(), **data})

    def notify(self, type: str, target: str, message: str, **data: Any) -> None:
        """Tell the notifiers, and the ``sil_core`` logger (WARNING for what undoes or fails,
        INFO for the rest), so a decision is seen even without a notifier."""
        if type != "watch_regressed":  # logged where it is decided, with its reason
            _log.log(_LOG_LEVELS.get(type, logging.INFO), "sil-guard: %s", message)
        self.emit({"type": type, "target": target, "ts": self.clock.time(), "message": message, **data})

    def adapter_for_row(self, target: str, row: ChangeRow | None) -> ConfigAdapter | None:
        """The adapter to act on ``row`` through: this process's, else one rebuilt from its spec."""
        return self.adapters.get(target) or self.default_adapter() or \
            adapter_from_spec(None if row is None else row.adapter_spec, store=self.store)

    def adapter_for(self, target: str) -> ConfigAdapter | None:
        """The adapter this worker would act through (see ``Guard.adapter_for``)."""
        found = self.adapters.get(target) or self.default_adapter()
        if found is not None:
            return found
        for row in reversed(self.rows.all(target)):
            if row.adapter_spec:
                return adapter_from_spec(row.adapter_spec, store=self.store)
        return None

    def close(self) -> None:
        self.router.close()

    # -- the operations Guard exposes --------------------------------------------------------
    def propose(self, target: str, patch: dict, **kwargs: Any):
        return self.proposals.propose(target, patch, **kwargs)

    def approve(self, target: str, actor: str):
        return self.proposals.approve(target, actor)

    def evaluate(self, target: str):
        return self.judging.evaluate(target)

    def promote(self, target: str, verdict: Any, *, actor: str) -> bool:
        return self.actions.promote(target, verdict, actor=actor)

    def rollback(self, target: str, verdict: Any, *, actor: str, cooldown: bool = True, restore: bool = True) -> bool:
        return self.actions.rollback(target, verdict, actor=actor, cooldown=cooldown, restore=restore)

    def adopt(self, target: str, config: dict, *, actor: str) -> str:
        return self.operator.adopt(target, config, actor=actor)

    def set_paused(self, target: str, paused: bool, *, actor: str, verdict: Any = None) -> bool:
        return self.actions.set_paused(target, paused, actor=actor, verdict=verdict)

    def request(self, target: str, action: str, actor: str) -> bool:
        return self.operator.request(target, action, actor)

    def pin(self, target: str, version: str, *, adapter: ConfigAdapter | None, actor: str) -> None:
        self.operator.pin(target, version, adapter=adapter, actor=actor)

    def unpin(self, target: str, *, actor: str) -> bool:
        return self.operator.unpin(target, actor=actor)

    def revert(self, target: str, to: str | None, *, adapter: ConfigAdapter | None, actor: str):
        return self.operator.revert(target, to, adapter=adapter, actor=actor)

    def observe(self, calls: list, judged: list = ()) -> set[str]:
        return self.judging.observe(calls, judged)

    def any_in_flight(self) -> bool:
        return self.judging.any_in_flight()

    def tick(self) -> None:
        self.judging.tick()

    def busy(self) -> bool:
        """Whether this worker knows of a change in flight or a watched promotion."""
        return bool(self.in_flight or self.watching)
