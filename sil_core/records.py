"""Call records, outcomes and feedback: the plain data every store keeps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ("CallRecord", "Feedback", "Outcome", "format_ts", "parse_ts")


class Outcome:
    """How a call ended. Only ``ok`` and ``error`` feed the success rate.

    ``retried`` is a failed attempt that the framework runs again (a LangGraph
    ``RetryPolicy``): it counts as an attempt error (``n_error`` of the cells,
    ``Stats.attempt_errors``) but not in the success rate, which sees the task's final
    attempt only.
    """

    OK = "ok"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    RETRIED = "retried"
    ALL = (OK, ERROR, INTERRUPTED, CANCELLED, BLOCKED, RETRIED)
    #: outcomes that count as a success or a failure (the others are control flow)
    DECIDED = (OK, ERROR)


@dataclass(slots=True)
class CallRecord:
    """One execution of a target.

    ``ts`` is the UTC wall-clock start (epoch seconds) used for windows; ``duration_s`` is
    measured with a monotonic clock. ``context`` holds JSON text once the record has been
    prepared for a store (see :func:`sil_core._internal.jsonsafe.dumps_context`).
    ``feedback_success``/``feedback_score`` hold late feedback, which overrides the
    outcome in every statistic; ``feedback_success_ts``/``feedback_score_ts`` say when the
    feedback that set each was given (epoch seconds), so that the latest-given wins.
    """

    id: str
    target: str
    ts: float
    duration_s: float
    outcome: str
    error_type: str | None = None
    error_message: str | None = None
    version: str | None = None
    arm: str | None = None
    attempt: int = 1
    score: float | None = None
    context: Any = None
    feedback_success: bool | None = None
    feedback_score: float | None = None
    feedback_success_ts: float | None = None
    feedback_score_ts: float | None = None
    #: the call's numeric metrics (``sil_core.metrics``); ``score`` stays in ``score``
    metrics: dict[str, float] | None = None
    #: late metric values: name -> ``[value, ts given]``; each overrides the call's own
    feedback_metrics: dict[str, list] | None = None

    @property
    def success(self) -> bool | None:
        """The call's effective success: feedback if given, else its outcome; ``None``
        for control-flow outcomes (interrupted, cancelled, blocked) without feedback."""
        if self.feedback_success is not None:
            return self.feedback_success
        if self.outcome == Outcome.OK:
            return True
        if self.outcome == Outcome.ERROR:
            return False
        return None

    @property
    def effective_score(self) -> float | None:
        """The feedback score if given, else the score recorded with the call."""
        return self.feedback_score if self.feedback_score is not None else self.score

    @property
    def effective_metrics(self) -> dict[str, float]:
        """The metrics every statistic sees: the call's own, late values overriding them,
        and ``score`` (the effective score) when there is one."""
        out = dict(self.metrics) if self.metrics else {}
        if self.feedback_metrics:
            for name, (value, _ts) in self.feedback_metrics.items():
                out[name] = value
        score = self.effective_score
        if score is not None:
            out["score"] = float(score)
        else:
            out.pop("score", None)
        return out

    @property
    def timestamp(self) -> datetime:
        """The start time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.ts, timezone.utc)

    def context_value(self) -> Any:
        """The context decoded from its stored JSON text (``None`` if absent or bad)."""
        if self.context is None or not isinstance(self.context, str):
            return self.context
        try:
            return json.loads(self.context)
        except ValueError:
            return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (context decoded), as written to JSONL stores."""
        return {
            "id": self.id,
            "target": self.target,
            "ts": format_ts(self.ts),
            "duration_s": self.duration_s,
            "outcome": self.outcome,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "version": self.version,
            "arm": self.arm,
            "attempt": self.attempt,
            "score": self.score,
            "context": self.context_value(),
            "feedback_success": self.feedback_success,
            "feedback_score": self.feedback_score,
            **({"metrics": self.metrics} if self.metrics else {}),
            **({"feedback_metrics": self.feedback_metrics} if self.feedback_metrics else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CallRecord":
        """Rebuild a record from :meth:`to_dict` output; raises ``KeyError``/``ValueError``
        on a malformed dict."""
        ts = data["ts"]
        context = data.get("context")
        return cls(
            id=str(data["id"]),
            target=str(data["target"]),
            ts=parse_ts(ts) if isinstance(ts, str) else float(ts),
            duration_s=float(data["duration_s"]),
            outcome=str(data["outcome"]),
            error_type=data.get("error_type"),
            error_message=data.get("error_message"),
            version=data.get("version"),
            arm=data.get("arm"),
            attempt=int(data.get("attempt") or 1),
            score=data.get("score"),
            context=None if context is None else json.dumps(context, ensure_ascii=False, separators=(",", ":")),
            feedback_success=data.get("feedback_success"),
            feedback_score=data.get("feedback_score"),
            metrics=data.get("metrics") or None,
            feedback_metrics=data.get("feedback_metrics") or None,
        )


@dataclass(slots=True, frozen=True)
class Feedback:
    """Late feedback on a call (a user's thumbs-down, an eval score).

    ``ts`` is when it was given (epoch seconds); per field, the feedback given last wins,
    whatever order stores receive it in. ``None`` means "when the store writes it".
    """

    call_id: str
    success: bool | None = None
    score: float | None = None
    ts: float | None = None
    #: late metric values (each overrides the call's own value of that metric)
    metrics: dict[str, float] | None = None


def format_ts(ts: float) -> str:
    """Epoch seconds to ISO 8601 UTC with microseconds (``...+00:00``)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def parse_ts(text: str) -> float:
    """ISO 8601 (``Z`` or offset; naive means UTC) to epoch seconds."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()
