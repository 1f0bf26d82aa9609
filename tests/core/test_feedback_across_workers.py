"""Feedback reaches a call whichever worker takes it, before or after the worker that
served the call writes its record, and the click given last wins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from sil_core import open_store

from ..conftest import store_url

_SERVER = textwrap.dedent(
    """
    import json, sys
    from sil_core import Guard
    guard = Guard(sys.argv[1], flush_interval=30)   # its records wait in its queue
    ids = []
    for i in range(40):
        with guard.call("answer", key=f"user-{i}") as call:
            pass
        ids.append(call.call_id)
    print(json.dumps(ids), flush=True)
    sys.stdin.readline()                           # exits (and writes) when told
    """
)

_FEEDBACK = textwrap.dedent(
    """
    import json, sys
    from sil_core import Guard
    guard = Guard(sys.argv[1], flush_interval=30)
    for call_id in json.loads(sys.argv[3]):
        guard.feedback(call_id, success=sys.argv[2] == "good")
    print("given", flush=True)
    sys.stdin.readline()
    """
)


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_feedback_sent_to_other_workers_before_the_record_is_written_is_never_lost(backend, tmp_path, request):
    url = store_url(backend, tmp_path, request)
    open_store(url).close()
    server = _start(_SERVER, url)
    ids = json.loads(server.stdout.readline())
    # worker B takes a thumbs-up for every call first; worker C a thumbs-down a moment later
    # (the user changed their mind) and writes it first; worker D rates the other half again
    early = _start(_FEEDBACK, url, "good", json.dumps(ids))
    assert early.stdout.readline().strip() == "given"
    late = _start(_FEEDBACK, url, "bad", json.dumps(ids[:20]))
    assert late.stdout.readline().strip() == "given"
    _finish(late)       # the later click is written first...
    _finish(early)      # ...the earlier one after it...
    with open_store(url) as store:
        assert store.count_calls("answer") == 0  # ...and both before the calls exist
    third = _start(_FEEDBACK, url, "bad", json.dumps(ids[20:]))
    assert third.stdout.readline().strip() == "given"
    _finish(third)
    _finish(server)     # now the records land, and the feedback that waited for them
    with open_store(url) as store:
        calls = {r.id: r for r in store.read_calls("answer", limit=100)}
        assert len(calls) == 40
        assert [calls[i].success for i in ids] == [False] * 40  # the last click, for every call
        s = store.stats("answer")
        assert (s.n, s.successes, s.failures) == (40, 0, 40)
