"""Routing: which version (and, during a change, which arm) serves a call of a target.

Each worker keeps a :class:`TargetView` per target, read from the store (the target's head,
its latest change, the versions' configs) and served for ``refresh_s`` seconds. The hot
path never waits on the store: an expired view keeps serving while a background thread
re-reads it (see :meth:`Router.view`). Integrations read views through
``Guard.view(target)`` and route through ``Guard.route(target, key=...)``.
"""

from __future__ import annotations

import hashlib
import random
import threading
import zlib
from typing import Any, Callable

from ._internal.clock import SYSTEM, Clock
from ._internal.failopen import report
from ._internal.worker import BackgroundWorker
from .policy import RolloutPolicy
from .rollout import SERVING, Arm, Mode
from .versions import get_version

__all__ = ("FIRST_READ_S", "KEY_HASH", "Router", "TargetView", "bucket")

#: how long a call of a target this worker has never seen waits for its first read
FIRST_READ_S = 0.02


#: how changes proposed by this release hash routing keys (a change keeps the hash it was made with)
KEY_HASH = "blake2b"


def bucket(change_id: str, key: Any, key_hash: str = KEY_HASH) -> float:
    """Where a routing key falls in [0, 1) for one change: below the change's weight, the
    candidate serves it. The same on every worker, so any worker can tell which arm a key
    got (or, after a rollback, would have got at the final weight).

    ``key_hash`` is the change's (``Change.key_hash``): ``"blake2b"`` for changes made since
    it exists; ``"crc32"`` for older ones, whose arms are kept. crc32 is linear: keys that
    differ in the same place (``u1-t0``/``u1-t1``, ``u2-t0``/``u2-t1``, ...) fell on the same
    side together, so an arm could follow the structure of the keys."""
    data = f"{change_id}:{key}".encode()
    if key_hash == "crc32":
        return zlib.crc32(data) / 4294967296.0
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 18446744073709551616.0


class TargetView:
    """What a worker knows about a target, as read from the store (read-only).

    ``unversioned``: no version serves the target yet (no change was ever made), so its
    calls are recorded without a version. During a change, ``change_id``, ``state``,
    ``mode``, ``weight`` and both arms' versions and configs are set; after it, ``state``
    tells how it ended and ``active`` is the version served.
    """

    __slots__ = ("expires", "unversioned", "active", "active_config", "change_id", "state", "mode", "weight",
                 "baseline", "baseline_config", "candidate", "candidate_config", "started", "policy", "target",
                 "pin", "key_hash")

    def __init__(self, target: str, expires: float) -> None:
        self.target = target
        self.expires = expires
        self.active = self.active_config = self.change_id = self.state = self.mode = None
        self.baseline = self.baseline_config = self.candidate = self.candidate_config = None
        self.started = 0.0
        self.policy: RolloutPolicy | None = None
        self.weight = 0.0
        self.unversioned = True
        #: ``{"actor", "ts"}`` while the target is pinned (``Guard.pin``), else ``None``
        self.pin: dict | None = None
        #: how the change in flight hashes routing keys (see :func:`bucket`)
        self.key_hash = KEY_HASH

    @property
    def pinned(self) -> bool:
        return self.pin is not None

    @property
    def versioned(self) -> bool:
        return not self.unversioned

    @property
    def serving(self) -> bool:
        """Whether a change's candidate serves calls (its calls get an arm)."""
        return self.state in SERVING

    def route(self, key: Any = None) -> tuple[str | None, str | None, dict | None]:
        """``(version, arm, config)`` for one call (a copy of the config)."""
        if self.state not in SERVING:
            return self.active, None, None if self.active_config is None else dict(self.active_config)
        if self.mode == Mode.SWITCH or \
                (random.random() if key is None else bucket(self.change_id, key, self.key_hash)) < self.weight:
            return self.candidate, Arm.CANDIDATE, dict(self.candidate_config)
        return self.baseline, Arm.BASELINE, dict(self.baseline_config)

    def __repr__(self) -> str:
        if self.unversioned:
            return f"<TargetView {self.target}: unversioned>"
        change = f", change {self.change_id} {self.state} ({self.mode}, weight {self.weight:g})" if self.change_id else ""
        return f"<TargetView {self.target}: serves {self.active}{change}>"


class Router:
    """The cached views of one worker, refreshed in the background.

    ``read(target, expires)`` builds a fresh view from the store (it may raise); the change
    engine passes one that also notes which targets have a change in flight.
    """

    def __init__(self, read: Callable[[str, float], TargetView], *, refresh_s: float = 0.5,
                 clock: Clock = SYSTEM) -> None:
        self.refresh_s = refresh_s
        self.clock = clock
        self.views: dict[str, TargetView] = {}
        self._read = read
        self._refreshing: dict[str, threading.Event] = {}  # targets being re-read in the background
        self._refresher = BackgroundWorker("sil-refresh", self._background_refresh)
        self._lock = threading.Lock()

    def view(self, target: str) -> TargetView:
        """The target's view for a call: never waits on the store (see :meth:`_served`),
        except with ``refresh_s == 0``, which asks for a fresh read on every call."""
        v = self.views.get(target)
        if v is not None and self.clock.monotonic() <= v.expires:
            return v
        if self.refresh_s <= 0:
            return self.refresh(target)
        return self._served(target, v)

    def view_now(self, target: str) -> TargetView:
        """The target's view, read from the store now if it expired (off the hot path)."""
        v = self.views.get(target)
        if v is None or self.clock.monotonic() > v.expires:
            v = self.refresh(target)
        return v

    def fresh(self, target: str) -> TargetView | None:
        """The cached view if it has not expired (no read, no background work)."""
        v = self.views.get(target)
        return v if v is not None and self.clock.monotonic() <= v.expires else None

    def route(self, target: str, key: Any = None) -> tuple[str | None, str | None, dict | None]:
        """``(version, arm, config)`` serving one call of ``target``."""
        return self.view(target).route(key)

    def _served(self, target: str, stale: TargetView | None) -> TargetView:
        """An expired view keeps serving while a background thread re-reads it.

        A view that expired more than ``refresh_s`` ago (a worker that sat idle: it may be
        serving a change that ended long ago) makes the call that starts its re-read wait
        for it, at most ``FIRST_READ_S``; so does a target never seen here. If the store is
        slower than that, the call is served from the old view, or, for a target never
        seen, as a target without a change (its record carries no version or arm:
        unattributed, never misattributed), until the read lands. Calls meanwhile never wait.
        """
        with self._lock:
            pending = self._refreshing.get(target)
            first = pending is None
            if first:
                pending = self._refreshing[target] = threading.Event()
                self._refresher.submit(target)
        if stale is not None:
            if first and self.clock.monotonic() - stale.expires > self.refresh_s:
                pending.wait(FIRST_READ_S)
                return self.views.get(target) or stale
            return stale
        pending.wait(FIRST_READ_S)
        return self.views.get(target) or TargetView(target, 0.0)

    def _background_refresh(self, target: str) -> None:
        try:
            self.refresh(target)
        finally:
            with self._lock:
                done = self._refreshing.pop(target, None)
            if done is not None:
                done.set()

    def refresh(self, target: str) -> TargetView:
        """Read the target's view from the store now; on a store error keep serving what
        was known (fail open)."""
        try:
            view = self._read(target, self.clock.monotonic() + self.refresh_s)
        except Exception as exc:
            report("change.refresh", exc)
            old = self.views.get(target)
            if old is not None:
                old.expires = self.clock.monotonic() + self.refresh_s
                return old
            view = TargetView(target, self.clock.monotonic() + self.refresh_s)
        self.views[target] = view
        return view

    def invalidate(self, target: str) -> None:
        self.views.pop(target, None)

    def close(self) -> None:
        self._refresher.close(0.0)


def read_view(rows: Any, target: str, expires: float) -> tuple[TargetView, Any]:
    """A view of ``target`` built from its head, its latest change and their versions;
    returns the view and that change's row (``None`` without one)."""
    store = rows.store
    view = TargetView(target, expires)
    head = rows.head(target)
    if head.pinned:
        view.pin = head.pin or {}
    if head.active:
        view.active = head.active
        view.active_config = get_version(store, target, view.active)
    row = rows.row(head.change_id)
    if row is not None:
        view.change_id, view.state, view.mode, view.weight = row.id, row.state, row.mode, row.weight
        view.started = row.started
        view.key_hash = row.key_hash
        view.policy = row.rollout_policy
        view.baseline, view.candidate = row.baseline_version, row.candidate_version
        view.baseline_config = get_version(store, target, view.baseline)
        view.candidate_config = get_version(store, target, view.candidate)
    view.unversioned = view.active is None and view.state is None
    return view, row
