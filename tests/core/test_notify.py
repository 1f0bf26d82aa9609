"""Notifiers: logging, webhook (real HTTP on 127.0.0.1), and the seed's Telegram stub."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from sil_core import LoggingNotifier, TelegramNotifier, WebhookNotifier


@pytest.fixture
def server():
    """A local HTTP server; ``plan`` lists the status codes to answer, then 200."""
    received, plan, threads = [], [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            threads.append(threading.current_thread().name)
            code = plan.pop(0) if plan else 200
            if code == "hang":
                time.sleep(1.0)
                code = 200
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_port}/hook", received, plan
    httpd.shutdown()


EVENT = {"type": "failure_trigger", "target": "agent", "ts": 1.0, "message": "3 failures in 10 calls"}


def test_webhook_posts_slack_compatible_json_off_the_caller_thread(server):
    url, received, _ = server
    hook = WebhookNotifier(url)
    t0 = time.perf_counter()
    hook.notify(EVENT)
    assert time.perf_counter() - t0 < 0.05  # queued, not posted inline
    assert hook.flush(5)
    assert received[0]["text"] == "[sil-guard] failure_trigger: 3 failures in 10 calls"
    assert received[0]["event"]["target"] == "agent"
    assert hook.sent == 1
    hook.close()


def test_webhook_retries_server_errors_then_succeeds(server):
    url, received, plan = server
    plan.extend([500, 503])
    hook = WebhookNotifier(url, retries=3, backoff=0.01)
    hook.notify(EVENT)
    assert hook.flush(5)
    assert len(received) == 3 and hook.sent == 1 and hook.failed == 0
    hook.close()


def test_webhook_gives_up_after_bounded_retries(server):
    url, received, plan = server
    plan.extend([500] * 10)
    hook = WebhookNotifier(url, retries=2, backoff=0.01)
    hook.notify(EVENT)
    assert hook.flush(5)
    assert len(received) == 3 and hook.failed == 1
    hook.close()


def test_webhook_does_not_retry_a_client_error(server):
    url, received, plan = server
    plan.append(400)
    hook = WebhookNotifier(url, retries=3, backoff=0.01)
    hook.notify(EVENT)
    assert hook.flush(5)
    assert len(received) == 1 and hook.failed == 1
    hook.close()


def test_webhook_timeout_is_bounded(server):
    url, received, plan = server
    plan.append("hang")
    hook = WebhookNotifier(url, timeout=0.2, retries=0)
    hook.notify(EVENT)
    t0 = time.perf_counter()
    assert hook.flush(5)
    assert time.perf_counter() - t0 < 0.9 and hook.failed == 1
    hook.close()


def test_webhook_to_a_closed_port_fails_quietly():
    hook = WebhookNotifier("http://127.0.0.1:9/nothing", retries=1, backoff=0.01, timeout=0.5)
    hook.notify(EVENT)
    assert hook.flush(5) and hook.failed == 1
    hook.close()


def test_logging_notifier(caplog):
    with caplog.at_level(logging.WARNING, logger="sil_core.events"):
        LoggingNotifier().notify(EVENT)
    assert "3 failures in 10 calls" in caplog.text


def test_telegram_stub_prints_and_can_be_overridden(capsys):
    TelegramNotifier().notify_improvement("agent", 1, {"prompt": "v2"})
    assert "agent: 1 improvement(s) applied" in capsys.readouterr().out

    sent = []

    class Mine(TelegramNotifier):
        def _send_message(self, message, priority="normal"):
            sent.append((message, priority))

    n = Mine()
    n.notify_rollback("agent", "success rate fell", {"success": False, "restore_applied": False})
    n.notify_rollback("agent", "success rate fell", {"success": True, "restore_applied": True})
    n.notify(EVENT)
    assert "ROLLBACK FAILED" in sent[0][0] and sent[0][1] == "high"  # the seed said "rolled back" (B4)
    assert "rolled back to the previous config" in sent[1][0]
    assert sent[2][1] == "high"
    TelegramNotifier(enabled=False).notify(EVENT)
    assert capsys.readouterr().out == ""
