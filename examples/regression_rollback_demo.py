"""The seed's regression demo, on sil-guard: a patch makes things worse, it is rolled back,
and the decision trail is exported to JSONL and verified (any edit would be found).

Run: python examples/regression_rollback_demo.py [--out DIR]
"""

import argparse
import json
import random
import tempfile
from pathlib import Path

from sil_core import DictConfigAdapter, SelfImprovingLoop, open_store, verify_trail


class PromptTweaker:
    """A strategy that, on failures, proposes a "more creative" temperature."""

    def analyze(self, agent_id, traces, before_metrics=None):
        return {"temperature": 1.4}

    def on_verdict(self, change, verdict):
        print(f"strategy told: change {change.id} ended {change.state} ({verdict.reason if verdict else ''})")


def main(out: Path) -> None:
    adapter = DictConfigAdapter({"report-writer": {"temperature": 0.2, "model": "m-1"}})
    loop = SelfImprovingLoop(data_dir=str(out / "data"), strategy=PromptTweaker(), config_adapter=adapter,
                             storage="sqlite")
    loop.adaptive_threshold.set_manual_threshold("report-writer", failure_threshold=3, min_failure_rate=0.1)
    rng = random.Random(11)

    def write_report():
        temperature = adapter.get_config("report-writer")["temperature"]
        fail_rate = 0.15 if temperature < 1 else 0.75  # the patch makes the writer unreliable
        if rng.random() < fail_rate:
            raise RuntimeError("report failed validation")
        return "report"

    rolled_back = None
    for i in range(400):
        result = loop.execute_with_improvement("report-writer", f"report #{i}", write_report)
        if result["improvement_applied"]:
            print(f"call {i}: patch applied -> {adapter.configs['report-writer']}")
        if result["rollback_executed"]:
            rolled_back = result["rollback_executed"]
            print(f"call {i}: rolled back: {rolled_back['reason']}")
            break
    assert rolled_back and rolled_back["success"] and rolled_back["restore_applied"]
    assert adapter.configs["report-writer"] == {"temperature": 0.2, "model": "m-1"}

    trail_file = out / "trail.jsonl"
    with open(trail_file, "w") as f:
        for event in loop.guard.trail():
            f.write(json.dumps(event) + "\n")
    report = verify_trail(loop.trace_store)
    print(f"trail written to {trail_file}: {report.events} events, verified={report.ok}, head {report.head_hash[:16]}")
    assert report.ok
    loop.close()

    # the same check from a fresh handle, as an auditor would run `sil trail verify`
    with open_store(f"sqlite:///{out / 'data' / 'sil.sqlite3'}") as store:
        assert verify_trail(store).ok


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    main(args.out or Path(tempfile.mkdtemp(prefix="sil-regression-demo-")))
