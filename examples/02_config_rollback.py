"""A bad config patch is applied, detected and rolled back; the JSON file on disk is
restored byte for byte.

Run: python examples/02_config_rollback.py
"""

import json
import random
import tempfile
from pathlib import Path

from sil_core import Guard, JsonFileConfigAdapter, RolloutPolicy

workdir = Path(tempfile.mkdtemp(prefix="sil-example-02-"))
config_file = workdir / "support-agent.json"
# hand-written formatting that json.dumps would never reproduce
config_file.write_bytes(b'{ "model": "small-1",\n  "prompt": "Answer briefly and cite the docs." }\n')
original = config_file.read_bytes()

rng = random.Random(42)
guard = Guard(f"sqlite:///{workdir / 'sil.db'}", adapter=JsonFileConfigAdapter(config_file),
              policy=RolloutPolicy(min_calls=30), flush_interval=0.05, refresh_interval=0.05)


@guard.track("support-agent", success=lambda answer: "docs" in answer)
def support_agent(question: str) -> str:
    config = json.loads(config_file.read_text())  # the agent reads its own config, as before
    if "cite" in config["prompt"] or rng.random() < 0.1:
        return f"[{config['model']}] see the docs about {question}"
    return f"[{config['model']}] I think it is fine"  # no citation: fails the success predicate


for i in range(200):  # the baseline: some history before any change
    support_agent(f"question {i}")

change = guard.propose("support-agent", {"prompt": "Answer briefly."}, mode="switch")
print(f"applied {change.candidate_version} over {change.baseline_version} (mode {change.mode})")
print("config on disk now:", config_file.read_text().strip())

for i in range(500):
    support_agent(f"question {i}")
    if i % 20 == 19 and not guard.change("support-agent").serving:
        break
guard.drain()

change = guard.change("support-agent")
print(f"state: {change.state}; verdict: {change.verdict.reason}")
print("config on disk now:", config_file.read_text().strip())
assert change.state == "rolled_back", change
assert config_file.read_bytes() == original, "the restored file must be byte-identical"
print("restored byte for byte:", config_file.read_bytes() == original)
report = guard.verify_trail()
print(f"trail: {report.events} events, ok={report.ok}")
guard.close()
