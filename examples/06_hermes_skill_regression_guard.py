"""The Hermes skill regression guard, end to end and offline: a skill edit that breaks the
agent is caught and rolled back, byte for byte, on a verifiable trail.

* A real Hermes ``AIAgent`` talks to a tiny OpenAI-compatible server on 127.0.0.1 (no
  network, no key). Each turn it loads the ``release-notes`` skill with ``skill_view`` and
  answers; once the skill is edited, the model also calls a reference that does not exist
  (a tool error), so the turn fails.
* ``SkillGuard.call`` runs one guarded turn (``/release-notes <task>``) and records its
  outcome and latency against the skill version that served it.
* The ``sil`` plugin's hooks see the edit made through Hermes' real ``skill_manage`` tool:
  they snapshot the skill before the write and turn the write into a guarded change.
* The guard sees consecutive failures of the new version and rolls it back: SKILL.md and
  the skill's ``skills.config`` keys are restored, and that version is quarantined.

Run: python examples/06_hermes_skill_regression_guard.py
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="sil-hermes-example-"))
os.environ["HERMES_HOME"] = str(HOME / "hermes")  # before Hermes is imported
for var in [v for v in os.environ if v.endswith("_API_KEY") or v == "OPENAI_BASE_URL"]:
    os.environ.pop(var)

SKILL_V1 = """---
name: release-notes
description: Write release notes from a list of merged changes.
metadata:
  hermes:
    config:
      - key: release.tone
        description: Tone of the notes
        default: plain
---
# Release notes

List each change on one line, newest first.
"""
CONFIG = """# my Hermes config
skills:
  creation_nudge_interval: 0
  config:
    release:
      tone: plain
"""
STATE = {"edited": False}


class FakeModel(BaseHTTPRequestHandler):
    """Streams one scripted reply per request; 404 for Hermes' /api/show probe."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        tools_done = sum(1 for m in body["messages"] if m.get("role") == "tool")
        if tools_done == 0:
            delta = _tool_call("skill_view", {"name": "release-notes"})
        elif STATE["edited"] and tools_done == 1:
            delta = _tool_call("skill_view", {"name": "release-notes-style-guide"})  # does not exist
        else:
            delta = {"role": "assistant", "content": "- fix: login works again"}
        finish = "tool_calls" if "tool_calls" in delta else "stop"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for chunk in ({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}):
            self.wfile.write(f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', **chunk})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


def _tool_call(name, args):
    return {"role": "assistant", "tool_calls": [{"index": 0, "id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                                                 "function": {"name": name, "arguments": json.dumps(args)}}]}


def main() -> int:
    hermes = HOME / "hermes"
    (hermes / "skills" / "release-notes").mkdir(parents=True)
    skill_md = hermes / "skills" / "release-notes" / "SKILL.md"
    skill_md.write_text(SKILL_V1)
    (hermes / "config.yaml").write_text(CONFIG)

    import model_tools  # Hermes' tool dispatcher (creates the rest of HERMES_HOME)
    from hermes_cli.plugins import PluginContext, PluginManifest, get_plugin_manager
    from run_agent import AIAgent

    from sil_core import Guard, RolloutPolicy
    from sil_hermes import SkillConfigAdapter, SkillGuard, register
    from sil_hermes.plugin import drain

    # what `hermes plugins enable sil` does for an installed Hermes, done in-process here
    register(PluginContext(PluginManifest(name="sil", source="entrypoint"), get_plugin_manager()))

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeModel)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"

    def agent():
        return AIAgent(base_url=base_url, api_key="sk-local", model="fake-model", provider="custom",
                       enabled_toolsets=["skills"], quiet_mode=True, skip_context_files=True, skip_memory=True,
                       max_iterations=6, tool_delay=0.0)

    guard = Guard(f"sqlite:///{HOME / 'sil.db'}", flush_interval=0.05, refresh_interval=0.05,
                  policy=RolloutPolicy(min_calls=4, tripwire_consecutive=3))
    skills = SkillGuard(guard, adapter=SkillConfigAdapter())
    target = "hermes:release-notes"
    try:
        print("1. four guarded turns on the original skill (v1)")
        for _ in range(4):
            result = skills.call("release-notes", "notes for 2.3.1", agent_factory=agent)
            print(f"   turn completed={result['completed']}  answer={result['final_response']!r}")

        print("2. the agent edits the skill through Hermes' own skill_manage tool")
        print("  ", model_tools.handle_function_call("skill_manage", {
            "action": "patch", "name": "release-notes", "old_string": "List each change on one line, newest first.",
            "new_string": "Always consult the release-notes-style-guide skill first."})[:70], "...")
        drain()
        STATE["edited"] = True
        change = guard.change(target)
        writer = guard.trail(target)[0]["actor"]
        print(f"   change {change.baseline_version} -> {change.candidate_version} is live "
              f"({change.mode} mode, {change.state}), written by {writer}")

        print("3. guarded turns on the edited skill (v2)")
        for _ in range(5):
            skills.call("release-notes", "notes for 2.3.2", agent_factory=agent)
            guard.drain()
            stats = guard.stats(target, version=change.candidate_version)
            print(f"   v2: {stats.failures} failed of {stats.n}")
            if not guard.change(target).serving:
                break
        change = guard.change(target)
        print(f"4. the guard decided: {change.state} ({change.reason})")
        print(f"   SKILL.md back to v1 byte for byte: {skill_md.read_text() == SKILL_V1}")
        print(f"   config.yaml unchanged byte for byte: {(hermes / 'config.yaml').read_text() == CONFIG}")

        again = json.loads(model_tools.handle_function_call("skill_manage", {   # the same bad edit comes back
            "action": "patch", "name": "release-notes", "old_string": "List each change on one line, newest first.",
            "new_string": "Always consult the release-notes-style-guide skill first."}))
        drain()
        print(f"5. the same edit again: {again.get('error') or 'written (not refused!)'}"[:120])
        print(f"   SKILL.md still v1: {skill_md.read_text() == SKILL_V1}")
        report = guard.verify_trail()
        print(f"6. trail: {report.events} events, hash chain {'verified' if report.ok else 'BROKEN'}")
        ok = change.state == "rolled_back" and report.ok and skill_md.read_text() == SKILL_V1
        return 0 if ok else 1
    finally:
        guard.close()
        server.shutdown()
        shutil.rmtree(HOME, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
