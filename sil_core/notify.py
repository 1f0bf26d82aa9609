"""Notifiers: who hears about triggers, verdicts and rollbacks.

A notifier is any object with ``notify(event: dict)``. The guard calls notifiers on its
own background thread and swallows their errors, so a broken notifier never reaches the
guarded call (seed bug D3). Events are dicts with at least ``type``, ``target``, ``ts``
and a human-readable ``message``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Protocol, runtime_checkable

from ._internal.worker import BackgroundWorker

__all__ = ("LoggingNotifier", "Notifier", "TelegramNotifier", "WebhookNotifier", "format_event")

_HIGH = {"rollback_started", "rollback_succeeded", "restore_failed", "failure_trigger"}


@runtime_checkable
class Notifier(Protocol):
    """Anything with ``notify(event)``."""

    def notify(self, event: dict[str, Any]) -> None: ...


def format_event(event: dict[str, Any]) -> str:
    """One line of text for an event (its ``message``, or type and target)."""
    text = event.get("message") or f"{event.get('type', 'event')} on {event.get('target', '?')}"
    return f"[sil-guard] {event.get('type', 'event')}: {text}"


class LoggingNotifier:
    """Writes each event to a :mod:`logging` logger (``sil_core.events`` by default)."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.WARNING) -> None:
        self.logger = logger or logging.getLogger("sil_core.events")
        self.level = level

    def notify(self, event: dict[str, Any]) -> None:
        self.logger.log(self.level, format_event(event), extra={"sil_event": event})


class WebhookNotifier:
    """POSTs each event as JSON to a URL, Slack-compatible (``{"text": ..., "event": ...}``).

    Posting happens on the notifier's own thread with a timeout and bounded retries
    (exponential backoff on network errors and 5xx/429 answers), never on the caller's.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        headers: dict[str, str] | None = None,
        max_queue: int = 1000,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.sent = 0
        self.failed = 0
        self._worker = BackgroundWorker("sil-webhook", self._post, max_queue=max_queue)

    def notify(self, event: dict[str, Any]) -> None:
        self._worker.submit(event)

    def _post(self, event: dict[str, Any]) -> None:
        body = json.dumps({"text": format_event(event), "event": event}, default=str).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.sent += 1
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    break  # the receiver refuses this payload: retrying will not help
            except (urllib.error.URLError, OSError):
                pass
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        self.failed += 1
        raise RuntimeError(f"webhook {self.url} failed after {self.retries + 1} attempts")

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued event was posted (or gave up)."""
        return self._worker.drain(timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        self._worker.close(timeout)


class TelegramNotifier:
    """The seed's Telegram stub, kept: it prints; override ``_send_message`` to send.

    ``notify(event)`` maps guard events onto the seed's messages. Unlike the seed, a
    rollback that did not restore the config is reported as a failure, not as done.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def notify(self, event: dict[str, Any]) -> None:
        priority = "high" if event.get("type") in _HIGH else "normal"
        self._send(format_event(event), priority)

    def notify_improvement(self, agent_id: str, improvements_applied: int, details: dict | None = None) -> None:
        text = f"Agent {agent_id}: {improvements_applied} improvement(s) applied"
        if details:
            text += "\n" + "\n".join(f"- {k}: {v}" for k, v in details.items())
        self._send(text, "normal")

    def notify_rollback(self, agent_id: str, reason: str, metrics: dict | None = None) -> None:
        restored = bool((metrics or {}).get("success", True)) and (metrics or {}).get("restore_applied", True) is not False
        head = "rolled back to the previous config" if restored else "ROLLBACK FAILED: the previous config was NOT restored"
        text = f"Agent {agent_id}: {head}\nReason: {reason}"
        if metrics:
            text += "\n" + "\n".join(f"- {k}: {v}" for k, v in metrics.items())
        self._send(text, "high")

    def notify_daily_summary(self, stats: dict) -> None:
        self._send("Daily summary\n" + "\n".join(f"- {k}: {v}" for k, v in stats.items()), "normal")

    def notify_threshold_adjusted(self, agent_id: str, profile: dict) -> None:
        self._send(f"Agent {agent_id}: thresholds adjusted\n" + "\n".join(f"- {k}: {v}" for k, v in profile.items()), "normal")

    def _send(self, message: str, priority: str) -> None:
        if self.enabled:
            self._send_message(message, priority)

    def _send_message(self, message: str, priority: str = "normal") -> None:
        """Override to deliver; the stub prints (with a fallback for narrow encodings)."""
        prefix = "[HIGH] " if priority == "high" else ""
        try:
            print(f"{prefix}{message}")
        except UnicodeEncodeError:
            encoding = getattr(sys.stdout, "encoding", None) or "ascii"
            print(f"{prefix}{message}".encode(encoding, "replace").decode(encoding))
