"""``GuardMiddleware``: guard a LangChain v1 agent (``langchain.agents.create_agent``) run by run.

::

    agent = create_agent(model, tools, middleware=[GuardMiddleware(guard, "support-agent", check=check)])

One **agent run** (one ``invoke``/``stream``: the whole loop of model and tool turns) is one
call of ``target``:

* Routing: at ``before_agent`` the run is routed once, with ``key(state, config)`` if given,
  else the run's thread id, else at random. Every model call of the run is then served that
  arm's config through ``wrap_model_call``: ``configure(request, config) -> request`` if
  given, else the default, which applies ``system_prompt``, ``model`` (a model name: the
  model is built with ``init_chat_model`` when it differs from the request's; a config whose
  ``model`` is not a string leaves the model alone), and model settings (``temperature``,
  ``max_tokens``, ... and a ``model_settings`` dict) through ``ModelRequest.override``.
  Before the target's first change, the config its guard's adapter holds is served.
* Recording: the record starts at ``before_agent`` and ends at ``after_agent``, where the
  final state is judged by ``check(state)`` (falsy or raising: a failure; the run's result
  is returned all the same). Its context counts the run's model calls, tool calls and tool
  errors (``ToolMessage`` with status ``"error"``). An exception escaping a model call or a
  tool call is recorded as a failure there and re-raised unchanged.
* Tokens and cost: the ``usage_metadata`` of every model response that passes through
  ``wrap_model_call`` (what the agent's model node receives: a retried or fallen-back call
  once, its final response) adds to the run's ``tokens_in`` / ``tokens_out``; ``cost_usd``
  is the cost the framework reports, else ``prices`` (``{model: (USD in, USD out per
  million tokens)}`` or a ``sil_core.PriceTable``; model: the response's ``model_name``,
  else the request's model), recorded only when every model call of the run has one.
  Model calls made inside tools are not the agent's and are not counted.
* ``evaluate(state)`` scores each completed run's final state later, on the guard's
  evaluator pool (``guard.evaluate_later``): a number is the run's ``score``.
* Interrupts (``HumanInTheLoopMiddleware``, ``interrupt()`` in a tool) are not failures: the
  run is pinned to its version (the guard's store, kind ``"pin"``, key
  ``"<target>|<thread id>"``) and, when the thread is resumed (in this process or another),
  it is served the same version, even if the change was promoted or rolled back meanwhile,
  and recorded once, when it completes. The recorded latency is the run's active time.
* Tracing: model and tool calls run with ``sil_version:<target>``, ``sil_arm:<target>`` and
  ``sil_change:<target>`` in their run metadata (what LangSmith and other tracers receive).

Per-run state is keyed by the graph invocation (the runtime's ``stream_writer``, one object
per invocation, shared by its nodes; weakly held), so concurrent runs never mix. Put the
middleware **first** in ``middleware=[...]`` so it sees what escapes the other middleware.
Every bookkeeping error is reported and swallowed (fail open).

Limits: an exception raised outside a model or tool call (in another middleware's hook) is
recorded as ``RunAbandoned`` when the run has no thread id; with a thread id it cannot be
told from an interrupt and the run stays pinned until the thread completes. Defining
``wrap_tool_call`` makes ``create_agent`` skip its check for unknown client-side tools.

LangChain (``langchain>=1.0``) is imported when :data:`GuardMiddleware` is first used.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Any, Callable, Iterator, Optional

from sil_core.integration import judge_result, new_id, report
from sil_core.versions import get_version

from . import _compat
from ._usage import Tally, price_table
from .adapters import arm_key, version_key

__all__ = ("GuardMiddleware", "change_key", "default_configure")

_now = time.time
_perf = time.perf_counter
PIN = "pin"
ABANDONED = "RunAbandoned"
#: config keys the default ``configure`` passes to the model as settings
MODEL_SETTINGS = frozenset({
    "temperature", "max_tokens", "max_completion_tokens", "top_p", "top_k", "stop", "seed", "frequency_penalty",
    "presence_penalty", "reasoning_effort", "timeout", "max_retries", "n", "logprobs",
})
_EMPTY: dict = {}


def change_key(target: str) -> str:
    """The run-metadata key naming the change id a run of ``target`` was served under."""
    return f"sil_change:{target}"


class _Run:
    """One agent run in flight."""

    __slots__ = ("version", "arm", "config", "change_id", "ts", "t0", "elapsed", "last", "thread", "ns",
                 "model_calls", "tool_calls", "tool_errors", "done", "pinned", "meta", "lock", "usage", "call")

    def __init__(self, version: Any, arm: Any, config: Any, change_id: Any, thread: Any, ns: str,
                 prices: Any = None) -> None:
        self.version, self.arm, self.config, self.change_id = version, arm, config, change_id
        self.ts, self.t0, self.elapsed = _now(), _perf(), 0.0
        self.last = self.t0
        self.thread, self.ns = thread, ns
        self.model_calls = self.tool_calls = self.tool_errors = 0
        self.done = self.pinned = False
        self.lock = threading.Lock()
        self.usage = Tally({}, prices)  # the run's tokens and cost, summed over its model calls
        self.call: Any = None  # the run as a detached call of the guard (Recorder.open): its steps, its span
        meta = {}
        if version is not None:
            meta["version"] = version
        if arm is not None:
            meta["arm"] = arm
        if change_id is not None:
            meta["change"] = change_id
        self.meta = meta

    def active_time(self) -> float:
        return self.elapsed + max(self.last - self.t0, 0.0)

    def context(self) -> dict:
        return {"model_calls": self.model_calls, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors}

    def pin_value(self) -> dict:
        return {"version": self.version, "arm": self.arm, "change_id": self.change_id, "ts": self.ts,
                "elapsed": self.active_time(), **self.context(), "metrics": dict(self.usage.metrics),
                "uncosted": self.usage.uncosted}


_model_cache: dict = {}


def _model_name(model: Any) -> Optional[str]:
    for attr in ("model_name", "model", "model_id"):
        name = getattr(model, attr, None)
        if isinstance(name, str) and name:
            return name
    return None


def default_configure(request: Any, config: Optional[dict]) -> Any:
    """Apply ``config`` to a ``ModelRequest``: ``system_prompt``, ``model`` (a name, built with
    ``init_chat_model`` only when it differs from the request's model), and model settings."""
    if not config:
        return request
    overrides: dict = {}
    prompt = config.get("system_prompt")
    if isinstance(prompt, str) and prompt != request.system_prompt:
        from langchain_core.messages import SystemMessage

        overrides["system_message"] = SystemMessage(content=prompt)
    name = config.get("model")
    if isinstance(name, str) and name:
        current = _model_name(request.model)
        if current is None or (name != current and name.split(":", 1)[-1] != current):
            model = _model_cache.get(name)
            if model is None:
                from langchain.chat_models import init_chat_model

                model = _model_cache.setdefault(name, init_chat_model(name))
            overrides["model"] = model
    settings = {k: v for k, v in config.items() if k in MODEL_SETTINGS}
    extra = config.get("model_settings")
    if isinstance(extra, dict):
        settings.update(extra)
    if settings:
        overrides["model_settings"] = {**(request.model_settings or {}), **settings}
    return request.override(**overrides) if overrides else request


class _GuardMiddlewareLogic:
    """The middleware's behaviour; the class users get also subclasses ``AgentMiddleware``."""

    def __init__(self, guard: Any, target: str, *, check: Optional[Callable[[Any], Any]] = None,
                 key: Optional[Callable[[Any, Any], Any]] = None,
                 configure: Optional[Callable[[Any, Optional[dict]], Any]] = None,
                 evaluate: Optional[Callable[[Any], Any]] = None, prices: Any = None) -> None:
        super().__init__()
        if not isinstance(target, str) or not target:
            raise ValueError("target must be a non-empty string")
        self.guard, self.target, self.check, self.key = guard, target, check, key
        self.evaluate, self.prices = evaluate, price_table(prices)
        self.configure = configure or default_configure
        self._lg = _compat.load()
        self._rec = guard.recorder(target)
        self._runs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # invocation -> {ns: _Run}
        self._threads: dict = {}  # (thread id, ns) -> _Run not yet completed (in-process resume)
        self._lock = threading.Lock()
        self._meta_keys = {"version": version_key(target), "arm": arm_key(target), "change": change_key(target)}
        from langchain_core.messages import ToolMessage
        from langchain_core.runnables.config import var_child_runnable_config

        self._ToolMessage, self._var = ToolMessage, var_child_runnable_config

    @property
    def name(self) -> str:
        return f"GuardMiddleware[{self.target}]"

    # -- locating the run -------------------------------------------------------------------
    def _where(self, runtime: Any) -> tuple:
        """``(invocation, ns, configurable, thread)`` of the running node."""
        config = self._lg.current_config() or _EMPTY
        configurable = config.get("configurable") or _EMPTY
        rt = configurable.get(_compat.RUNTIME_KEY) or runtime
        writer = getattr(rt, "stream_writer", None)
        ns = (configurable.get("checkpoint_ns") or "").rpartition("|")[0]
        return writer, ns, configurable, configurable.get("thread_id"), config

    def _find(self, runtime: Any) -> Optional[_Run]:
        """The run this node belongs to: by invocation; on a resumed invocation, the thread's
        suspended run (this process) or its pin (the store)."""
        writer, ns, configurable, thread, _ = self._where(runtime)
        runs = self._runs.get(writer) if writer is not None else None
        if runs and ns in runs:
            return runs[ns]  # None: an invocation known to serve no run of ours
        if thread is None:
            return None
        with self._lock:
            run = self._threads.get((thread, ns))
        if run is None:  # a resumed invocation (LangGraph's resuming flag is gone after its first step)
            run = self._from_pin(thread, ns)
        self._attach(writer, run, ns)
        return run

    def _attach(self, writer: Any, run: Optional[_Run], ns: str) -> None:
        """Key ``run`` (``None``: no run) by this invocation, resuming its clock."""
        if run is not None:
            run.t0 = run.last = _perf()
        if writer is None:
            return
        with self._lock:
            runs = self._runs.get(writer)
            if runs is None:
                runs = self._runs[writer] = {}
                weakref.finalize(writer, self._invocation_ended, runs)
            runs[ns] = run

    def _from_pin(self, thread: Any, ns: str) -> Optional[_Run]:
        try:
            row = self.guard.store.kv_get(PIN, self._pin_key(thread, ns))
            pin = row[0] if row else None
            if not pin or "ts" not in pin:
                return None
            version = pin.get("version")
            config = self.guard.adapter_config(self.target) if version is None else \
                get_version(self.guard.store, self.target, version)
            run = _Run(version, pin.get("arm"), None if config is None else dict(config), pin.get("change_id"),
                       thread, ns, self.prices)
            run.usage.metrics.update(pin.get("metrics") or {})
            run.usage.uncosted = bool(pin.get("uncosted"))
            run.ts, run.elapsed, run.pinned = pin.get("ts") or run.ts, float(pin.get("elapsed") or 0.0), True
            run.model_calls, run.tool_calls = int(pin.get("model_calls") or 0), int(pin.get("tool_calls") or 0)
            run.tool_errors = int(pin.get("tool_errors") or 0)
            with self._lock:
                found = self._threads.setdefault((thread, ns), run)
            if found is run:  # resumed here: observers see the rest of the run as a call of its own
                run.call = self._rec.open(self._route(run))
            return found
        except Exception as exc:  # fail open: the run goes unrecorded, served as routed
            report("langchain.pin", exc)
            return None

    def _pin_key(self, thread: Any, ns: str) -> str:
        return f"{self.target}|{thread}" if not ns else f"{self.target}|{thread}|{ns}"

    def _invocation_ended(self, runs: dict) -> None:
        """An invocation is gone: its runs that did not complete were interrupted (a thread
        can be resumed: pin them) or failed outside a model or tool call (no thread)."""
        for run in list(runs.values()):
            try:
                if run is None or run.done:
                    continue
                if run.thread is None:
                    self._rec.put(self._finish(run, None, ABANDONED))
                else:
                    run.elapsed, run.t0 = run.active_time(), run.last  # this segment's time is counted
                    self.guard.store.kv_put(PIN, self._pin_key(run.thread, run.ns), run.pin_value(), expect_rev=None)
                    run.pinned = True
            except Exception as exc:
                report("langchain.pin", exc)

    # -- starting and finishing ------------------------------------------------------------
    def _start(self, state: Any, runtime: Any) -> None:
        try:
            writer, ns, configurable, thread, config = self._where(runtime)
            if configurable.get(_compat.RESUMING_KEY) and self._find(runtime) is not None:
                return  # re-executed on resume: the run goes on
            routing = thread
            if self.key is not None:
                try:
                    routing = self.key(state, config)
                except Exception as exc:
                    report("routing key", exc)
                    routing = None
            view = self.guard.view(self.target)
            version, arm, served = view.route(routing)
            if version is None:
                served = self.guard.adapter_config(self.target)
            run = _Run(version, arm, served, view.change_id if arm is not None else None, thread, ns, self.prices)
            run.call = self._rec.open(self._route(run))
            if thread is not None:
                with self._lock:
                    old = self._threads.get((thread, ns))
                    self._threads[(thread, ns)] = run
                if old is not None and old.pinned and not old.done:  # a new run on an interrupted thread
                    old.done = True
                    self._clear_pin(old)
            self._attach(writer, run, ns)
        except Exception as exc:
            report("langchain.before_agent", exc)

    def _finish(self, run: _Run, exc: Optional[BaseException], ok: Any, call_id: Optional[str] = None) -> Any:
        """The record of a completed run (once), or ``None``."""
        with run.lock:
            if run.done:
                return None
            run.done = True
        try:
            run.last = _perf()
            if run.thread is not None:
                with self._lock:
                    if self._threads.get((run.thread, run.ns)) is run:
                        del self._threads[(run.thread, run.ns)]
            if run.pinned:
                self._clear_pin(run)
            return self._rec.close(run.call, run.ts, run.active_time(), exc, ok, context=run.context(),
                                   call_id=call_id, metrics=run.usage.close())
        except Exception as err:
            report("langchain.record", err)
            return None

    @staticmethod
    def _route(run: _Run) -> Optional[tuple]:
        return (run.version, run.arm, run.config) if run.version is not None else None

    def _clear_pin(self, run: _Run) -> None:
        try:
            self.guard.store.kv_put(PIN, self._pin_key(run.thread, run.ns), {}, expect_rev=None)
        except Exception as exc:
            report("langchain.pin", exc)

    def _end(self, state: Any, runtime: Any) -> Any:
        try:
            run = self._find(runtime)
            if run is None:
                return None
            ok = judge_result(self.check, state)
            if self.evaluate is None:
                return self._finish(run, None, ok)
            call_id = new_id()
            record = self._finish(run, None, ok, call_id)
            if record is not None:
                self.guard.evaluate_later(call_id, self.evaluate, state)
            return record
        except Exception as exc:
            report("langchain.after_agent", exc)
            return None

    def _failed(self, run: Optional[_Run], exc: BaseException) -> Any:
        """The record of a run a model or tool call raised out of (``None`` for control flow:
        an interrupt keeps the run open, to be pinned when its invocation ends)."""
        if run is None or isinstance(exc, self._lg.GraphBubbleUp):
            return None
        return self._finish(run, exc, True)

    # -- serving ---------------------------------------------------------------------------
    def _request(self, run: _Run, request: Any) -> Any:
        try:
            return self.configure(request, None if run.config is None else dict(run.config))
        except Exception as exc:
            report("langchain.configure", exc)
            return request

    def _tag(self, run: Optional[_Run]) -> Any:
        """Put the run's version, arm and change into the config the call runs under."""
        if run is None or not run.meta:
            return None
        try:
            config = self._var.get()
            if not config:
                return None
            keys = self._meta_keys
            metadata = {**(config.get("metadata") or _EMPTY), **{keys[k]: v for k, v in run.meta.items()}}
            return self._var.set({**config, "metadata": metadata})
        except Exception as exc:
            report("langchain.metadata", exc)
            return None

    def _untag(self, token: Any) -> None:
        if token is not None:
            try:
                self._var.reset(token)
            except ValueError:
                pass

    @contextlib.contextmanager
    def _serving(self, run: Optional[_Run]) -> Iterator[None]:
        """Around one model or tool call of a run: its metadata in the config, and the run
        as the current call (and observers' current span); both undone after, even on error."""
        token = self._tag(run)
        try:
            with self._rec.step(run.call if run is not None else None):
                yield
        finally:
            self._untag(token)

    def _model_done(self, run: Optional[_Run], request: Any, response: Any) -> None:
        if run is not None:
            run.model_calls += 1
            run.last = _perf()
            self._count(run, request, response)

    def _count(self, run: Optional[_Run], request: Any, response: Any) -> None:
        """Add a model response's usage (its ``AIMessage``s) to the run's tokens and cost."""
        if run is None:
            return
        try:
            inner = getattr(response, "model_response", response)  # an ExtendedModelResponse's
            messages = getattr(inner, "result", None)
            if messages is None:
                messages = (inner,)  # a handler may return the AIMessage itself
            for message in messages:
                if getattr(message, "usage_metadata", None):
                    run.usage.add(message, _model_name(request.model))
        except Exception as exc:
            report("langchain.usage", exc)

    def _tool_result(self, run: Optional[_Run], result: Any) -> None:
        if run is None:
            return
        run.last = _perf()
        run.tool_calls += 1
        if isinstance(result, self._ToolMessage) and getattr(result, "status", None) == "error":
            run.tool_errors += 1

    # -- AgentMiddleware hooks -------------------------------------------------------------
    def before_agent(self, state: Any, runtime: Any) -> None:
        self._start(state, runtime)
        return None

    async def abefore_agent(self, state: Any, runtime: Any) -> None:
        self._start(state, runtime)
        return None

    def after_agent(self, state: Any, runtime: Any) -> None:
        self._rec.put(self._end(state, runtime))
        return None

    async def aafter_agent(self, state: Any, runtime: Any) -> None:
        await self._rec.aput(self._end(state, runtime))
        return None

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        run = self._find(request.runtime)
        if run is not None:
            request = self._request(run, request)
        try:
            with self._serving(run):
                response = handler(request)
        except BaseException as exc:
            self._rec.put(self._failed(run, exc))
            raise
        self._model_done(run, request, response)
        return response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        run = self._find(request.runtime)
        if run is not None:
            request = self._request(run, request)
        try:
            with self._serving(run):
                response = await handler(request)
        except BaseException as exc:
            await self._rec.aput(self._failed(run, exc))
            raise
        self._model_done(run, request, response)
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        run = self._find(getattr(request, "runtime", None))
        try:
            with self._serving(run):
                result = handler(request)
        except BaseException as exc:
            self._rec.put(self._failed(run, exc))
            raise
        self._tool_result(run, result)
        return result

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        run = self._find(getattr(request, "runtime", None))
        try:
            with self._serving(run):
                result = await handler(request)
        except BaseException as exc:
            await self._rec.aput(self._failed(run, exc))
            raise
        self._tool_result(run, result)
        return result

    def __repr__(self) -> str:
        return f"<GuardMiddleware {self.target!r} of {self.guard!r}>"


_MIDDLEWARE = _compat.LazyClass(__name__, "GuardMiddleware", _GuardMiddlewareLogic, __doc__,
                                "langchain.agents.middleware:AgentMiddleware", "langchain")


def __getattr__(name: str) -> Any:
    if name == "GuardMiddleware":
        return _MIDDLEWARE.get()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
