"""The async control plane: each blocking method of a Guard has an async twin that runs it
on a small thread pool of the guard's own, so a coroutine never freezes its event loop."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from ._internal import exits

if TYPE_CHECKING:
    from .aggregates import Stats
    from .detect.verdict import Verdict
    from .guard import Guard
    from .health import Health
    from .rollout import Change
    from .trail import TrailReport

__all__ = ("AsyncControl",)

#: threads of a guard's pool for the async control plane
CONTROL_THREADS = 4


class AsyncControl:
    """Mixed into :class:`~sil_core.Guard`: ``a``-prefixed twins of its control plane."""

    _control: ThreadPoolExecutor | None = None
    _control_lock: threading.Lock

    async def _off_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking control-plane call on this guard's pool; the loop keeps running."""
        with self._control_lock:
            if self._control is None:
                self._control = ThreadPoolExecutor(CONTROL_THREADS, thread_name_prefix="sil-control",
                                                   initializer=exits.own_thread)
            pool = self._control
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def aflush(self, timeout: float | None = 30.0) -> bool:
        """Async twin of :meth:`flush`: awaits the batch without a thread of its own."""
        return await self._writer.aflush(timeout)

    async def adrain(self, timeout: float | None = 30.0) -> bool:
        """Async twin of :meth:`drain`."""
        return await self._off_loop(self.drain, timeout)

    async def aclose(self, timeout: float | None = 30.0) -> None:
        """Async twin of :meth:`close`."""
        await self._off_loop(self.close, timeout)

    async def __aenter__(self) -> "Guard":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def astats(self, target: str, **kwargs: Any) -> Stats:
        """Async twin of :meth:`stats`."""
        return await self._off_loop(self.stats, target, **kwargs)

    async def achange(self, target: str) -> Change | None:
        """Async twin of :meth:`change`."""
        return await self._off_loop(self.change, target)

    async def aevaluate(self, target: str) -> Verdict | None:
        """Async twin of :meth:`evaluate`."""
        return await self._off_loop(self.evaluate, target)

    async def apropose(self, target: str, patch: dict, **kwargs: Any) -> Change:
        """Async twin of :meth:`propose`."""
        return await self._off_loop(self.propose, target, patch, **kwargs)

    async def aapprove(self, target: str, **kwargs: Any) -> Change:
        """Async twin of :meth:`approve`."""
        return await self._off_loop(self.approve, target, **kwargs)

    async def apromote(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`promote`."""
        return await self._off_loop(self.promote, target, **kwargs)

    async def arollback(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`rollback`."""
        return await self._off_loop(self.rollback, target, **kwargs)

    async def apause(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`pause`."""
        return await self._off_loop(self.pause, target, **kwargs)

    async def aresume(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`resume`."""
        return await self._off_loop(self.resume, target, **kwargs)

    async def apin(self, target: str, version: str, **kwargs: Any) -> None:
        """Async twin of :meth:`pin`."""
        return await self._off_loop(self.pin, target, version, **kwargs)

    async def aadopt(self, target: str, config: dict, **kwargs: Any) -> str:
        """Async twin of :meth:`adopt`."""
        return await self._off_loop(self.adopt, target, config, **kwargs)

    async def aunpin(self, target: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`unpin`."""
        return await self._off_loop(self.unpin, target, **kwargs)

    async def arevert(self, target: str, **kwargs: Any) -> Change:
        """Async twin of :meth:`revert`."""
        return await self._off_loop(self.revert, target, **kwargs)

    async def ahealth(self, **kwargs: Any) -> Health:
        """Async twin of :meth:`health`."""
        return await self._off_loop(self.health, **kwargs)

    async def achanges(self, target: str | None = None) -> list[Change]:
        """Async twin of :meth:`changes`."""
        return await self._off_loop(self.changes, target)

    async def arequest(self, target: str, action: str, **kwargs: Any) -> bool:
        """Async twin of :meth:`request`."""
        return await self._off_loop(self.request, target, action, **kwargs)

    async def aversions(self, target: str) -> list[dict]:
        """Async twin of :meth:`versions`."""
        return await self._off_loop(self.versions, target)

    async def atrail(self, target: str | None = None) -> list[dict]:
        """Async twin of :meth:`trail`."""
        return await self._off_loop(self.trail, target)

    async def averify_trail(self) -> TrailReport:
        """Async twin of :meth:`verify_trail`."""
        return await self._off_loop(self.verify_trail)
