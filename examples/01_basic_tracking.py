"""Wrap existing agent code, record every call, and read the statistics back.

Run: python examples/01_basic_tracking.py [--store URL]
(default: a fresh SQLite file in a temporary folder; pass --store to use another one)
"""

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from sil_core import Guard
from sil_core.cli import main as sil


def run(store_url: str) -> None:
    rng = random.Random(7)
    guard = Guard(store_url)

    # 1. a decorator on a plain function; "returned an error payload" counts as a failure
    @guard.track("support-agent", success=lambda reply: reply.get("status") == "ok")
    def answer(question: str) -> dict:
        time.sleep(rng.uniform(0.0005, 0.002))  # stands in for a model call
        if rng.random() < 0.08:
            return {"status": "error", "reason": "tool timeout"}
        return {"status": "ok", "text": f"Here is how to {question}"}

    # 2. the same decorator on a coroutine
    @guard.track("summarizer")
    async def summarize(text: str) -> str:
        await asyncio.sleep(0.001)
        if rng.random() < 0.03:
            raise RuntimeError("model overloaded")
        return text[:20]

    # 3. a context manager around code you cannot decorate, with a score and late feedback
    call_ids = []
    for i in range(40):
        with guard.call("router", context={"user": f"u{i % 5}"}) as call:
            call.score = rng.random()
            call_ids.append(call.call_id)

    for i in range(200):
        answer(f"reset password #{i}")

    async def batch() -> None:
        for i in range(60):
            try:
                await summarize("a long document " * 5)
            except RuntimeError:
                pass

    asyncio.run(batch())
    guard.feedback(call_ids[0], success=False)  # a user's thumbs-down on one routed call

    s = guard.stats("support-agent")
    lo, hi = s.success_ci
    print(f"support-agent: {s.n} calls, success {s.success_rate:.1%} (95% CI {lo:.1%}-{hi:.1%}), "
          f"p50 {s.p50_s * 1e3:.2f}ms, p95 {s.p95_s * 1e3:.2f}ms")
    print(f"router: {guard.stats('router').failures} failure(s) after feedback\n")
    guard.close()

    print(f"$ sil status --store {store_url}")
    sil(["status", "--store", store_url])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None)
    args = parser.parse_args()
    url = args.store or f"sqlite:///{Path(tempfile.mkdtemp(prefix='sil-demo-')) / 'sil.db'}"
    run(url)
