"""One process per turn (``hermes chat -q``): each turn is a fresh Python process with
the plugin loaded as Hermes loads it, against a fake model served by the test process.
The plugin drains its queued work at exit, so no turn record is lost, and the guard
judges what the processes recorded together: a bad edit is rolled back by the tripwire
within a few one-shot turns."""

import os
import subprocess
import sys
import textwrap

from ._fake_llm import FakeLLM, skill_script
from .conftest import CONFIG_V1, SKILL_V1
from .test_e2e import PATCH, TARGET

ONE_SHOT = textwrap.dedent("""\
    import sys
    import model_tools  # noqa: F401  (imports the tools, as the CLI does)
    from hermes_cli.plugins import discover_plugins

    discover_plugins()
    if sys.argv[1] == "edit":
        model_tools.handle_function_call("skill_manage", {patch!r})
    else:
        from run_agent import AIAgent

        agent = AIAgent(base_url=sys.argv[2], api_key="sk-fake", model="fake-model", provider="custom",
                        enabled_toolsets=["skills"], quiet_mode=True, skip_context_files=True, skip_memory=True,
                        max_iterations=6, tool_delay=0.0)
        print(agent.run_conversation("what is the demo?")["final_response"])
    # no drain, no close: the process just exits, as `hermes chat -q` does
    """)


def one_shot(home, *args):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "SIL_STORE"}
    env["HERMES_HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", ONE_SHOT.format(patch=PATCH), *args], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_one_process_per_turn_rolls_a_bad_edit_back_and_loses_no_record(home):
    from sil_core import Guard
    from sil_core.integration import State

    skill_md = home / "skills" / "demo-skill" / "SKILL.md"
    phase = {"bad": False}
    turns = 0
    with FakeLLM(skill_script(lambda: phase["bad"])) as fake:
        for _ in range(3):
            assert one_shot(home, "turn", fake.base_url) == "OK"
            turns += 1
        one_shot(home, "edit")
        assert "three long paragraphs" in skill_md.read_text()
        phase["bad"] = True
        failing = 0
        while failing < 6 and skill_md.read_bytes() != SKILL_V1.encode():
            one_shot(home, "turn", fake.base_url)
            failing += 1
            turns += 1
    print(f"rolled back after {failing} one-shot failing turns")
    assert skill_md.read_bytes() == SKILL_V1.encode(), f"not rolled back after {failing} one-shot turns"
    assert (home / "config.yaml").read_bytes() == CONFIG_V1.encode()

    guard = Guard(f"sqlite:///{home / 'sil' / 'sil.db'}", worker_id="test")
    try:
        change = guard.change(TARGET)
        assert change.state == State.ROLLED_BACK
        records = guard.store.read_calls(TARGET, limit=1000)
        assert len(records) == turns  # one record per one-shot turn: none lost at exit
        assert sum(r.outcome == "error" for r in records) == failing
        assert guard.verify_trail().ok
    finally:
        guard.close()


def test_hermes_z_loses_no_turn_record(home, tmp_path):
    """``hermes -z`` ends with ``os._exit`` (no atexit): the plugin drains at the turn's end."""
    from sil_core import Guard

    from ._fake_llm import records

    store = f"sqlite:///{tmp_path / 'z.db'}"
    with FakeLLM(skill_script(lambda: False)) as fake:
        config = home / "config.yaml"
        config.write_text(config.read_text() + f"model:\n  default: fake-model\n  provider: custom\n"
                                               f"  base_url: {fake.base_url}\n  api_key: sk-fake\ntoolsets: [skills]\n")
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(HERMES_HOME=str(home), SIL_STORE=store)
        for _ in range(3):
            out = subprocess.run([sys.executable, "-m", "hermes_cli.main", "-z", "what is the demo?"], env=env,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
    guard = Guard(store, worker_id="test")
    try:
        rows = records(guard, TARGET)
    finally:
        guard.close()
    assert [r.outcome for r in rows] == ["ok"] * 3
