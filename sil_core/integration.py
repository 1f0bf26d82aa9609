"""The extension surface for integrations: what a framework adapter (``sil_langgraph``,
``sil_hermes``, yours) may use besides the ``Guard``'s public methods.

An integration records through a :class:`Recorder` (``guard.recorder(target)``), reads
routing through ``guard.route(target, key=...)`` and ``guard.view(target)`` (a
:class:`TargetView`), reads changes as typed :class:`Change` objects (``guard.change``,
``guard.changes``), asks for an action with ``guard.request``, and finds a target's adapter
with ``guard.adapter_for``. The helpers below are the ones sil-guard's own integrations use
to stay fail-open and cheap. Nothing else in ``sil_core`` with a leading underscore is part
of the surface: ``tests/test_public_api.py`` checks that our integrations use none of it.
See the README, "Writing an integration", for a complete example.
"""

from __future__ import annotations

from ._internal.failopen import fail_open, report
from ._internal.files import atomic_write
from ._internal.ids import new_id
from ._internal.jsonsafe import error_message
from ._internal.worker import BackgroundWorker
from .calls import is_coroutine_callable, judge_result
from .recorder import Begun, Recorder
from .rollout import IN_FLIGHT, SERVING, Arm, Change, Mode, State
from .routing import TargetView, bucket

__all__ = (
    "IN_FLIGHT", "SERVING", "Arm", "BackgroundWorker", "Begun", "Change", "Mode", "Recorder", "State", "TargetView",
    "atomic_write", "bucket", "error_message", "fail_open", "is_coroutine_callable", "judge_result", "new_id",
    "report",
)
