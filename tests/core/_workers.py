"""Process entry points for multi-process tests (importable by spawned children)."""

from __future__ import annotations

import json
import os
import random
import time

from sil_core import Guard, JsonFileConfigAdapter, RolloutPolicy


class CountingAdapter(JsonFileConfigAdapter):
    """A JSON-file adapter that appends one line per rollback_config call to a shared file."""

    def __init__(self, path, counter):
        super().__init__(path)
        self.counter = counter

    def rollback_config(self, agent_id, backup_config):
        with open(self.counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        super().rollback_config(agent_id=agent_id, backup_config=backup_config)


def guarded_worker(url: str, config_path: str, counter: str, seconds: float, seed: int) -> None:
    """Run the agent until its change is no longer in flight (or time runs out)."""
    rng = random.Random(seed)
    policy = RolloutPolicy(min_calls=20, step_calls=20)
    guard = Guard(url, adapter=CountingAdapter(config_path, counter), policy=policy,
                  flush_interval=0.05, refresh_interval=0.05)

    @guard.track("agent")
    def agent():
        config = json.loads(open(config_path).read())
        time.sleep(0.001)
        if config["prompt"] == "bad" and rng.random() < 0.7:
            raise RuntimeError("bad output")

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            agent()
        except RuntimeError:
            pass
        if rng.random() < 0.02:
            change = guard.change("agent")
            if change is not None and change.state == "rolled_back":
                break
    guard.drain()
    guard.close()
