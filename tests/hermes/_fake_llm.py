"""An OpenAI-compatible chat server on 127.0.0.1 that replays a script (streaming SSE or
JSON) and answers Hermes' ``/api/show`` context-length probe with 404."""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional


class FakeLLM:
    """``replies`` is called with the request's messages and returns one reply:
    ``{"content": str}`` or ``{"tool_calls": [(name, args), ...]}``, optionally with
    ``"usage": (prompt_tokens, completion_tokens)`` (default 10 and 5)."""

    def __init__(self, replies: Callable[[list], dict]) -> None:
        self.replies = replies
        self.delay_s = 0.0
        self.requests: List[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                self.send_error(404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self.path.endswith("/chat/completions") or "messages" not in body:
                    self.send_error(404)
                    return
                fake.requests.append(body)
                reply = fake.replies(body["messages"])
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if body.get("stream"):
                    self._sse(reply)
                else:
                    self._json(reply)

            def _message(self, reply):
                if "tool_calls" in reply:
                    calls = [{"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                              "function": {"name": n, "arguments": json.dumps(a)}} for n, a in reply["tool_calls"]]
                    return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
                return {"role": "assistant", "content": reply["content"]}, "stop"

            @staticmethod
            def _usage(reply):
                p, c = reply.get("usage", (10, 5))
                return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

            def _json(self, reply):
                message, finish = self._message(reply)
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "fake-model",
                                   "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                   "usage": self._usage(reply)})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

            def _sse(self, reply):
                message, finish = self._message(reply)
                delta = {"role": "assistant"}
                if message.get("tool_calls"):
                    delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
                else:
                    delta["content"] = message["content"]
                base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake-model"}
                chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                          {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                           "usage": self._usage(reply)}]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for c in chunks:
                    self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeLLM":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def skill_script(bad: Callable[[], bool]) -> Callable[[list], dict]:
    """A turn: load the demo skill; when ``bad()``, also call a tool that fails; then answer."""

    def replies(messages: list) -> dict:
        tool_results = [m for m in messages if m.get("role") == "tool"]
        if not tool_results:
            return {"tool_calls": [("skill_view", {"name": "demo-skill"})]}
        if bad() and len(tool_results) == 1:
            return {"tool_calls": [("skill_view", {"name": "missing-reference"})]}
        return {"content": "FAILED" if bad() else "OK"}

    return replies


def last_user(messages: list) -> Optional[str]:
    for m in reversed(messages):
        if m.get("role") == "user":
            return m.get("content")
    return None


def turn_results(messages: list) -> list:
    """The tool results after the last user message (this turn's, not the history's)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return [m for m in messages[i + 1:] if m.get("role") == "tool"]
    return [m for m in messages if m.get("role") == "tool"]


def records(guard, target: str) -> list:
    """The target's call records, oldest first, each with its context as a dict."""
    import json

    guard.flush()
    rows = guard.store.read_calls(target, limit=10_000)
    for r in rows:
        r.context = json.loads(r.context) if isinstance(r.context, str) else (r.context or {})
    return rows
