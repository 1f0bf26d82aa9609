"""The Yijing strategy: six lines from one bounded window, all 64 hexagrams reachable and
named, the seed's eight core policies kept, every other state under a documented rule."""

from __future__ import annotations

import itertools
import time

import pytest

import sil_core
from sil_core import CORE_HEXAGRAMS, DIMENSIONS, Guard, identify_hexagram, policy_for_hexagram, score_lines
from sil_core.strategies import MAX_TRACES, trace_dict
from sil_core.yijing import HEXAGRAMS, YijingEvolutionStrategy, classify_error
from sil_core.yijing.lines import error_category
from sil_core.yijing.policies import CONFIG_KEYS, LINE_FIXES, POLICY_KEYS

ALL_STATES = ["".join(bits) for bits in itertools.product("01", repeat=6)]
SLOW, FAST = 9.0, 0.1
# one failure of each category, each delivered a different way (explicit or classified text)
FAILURE = {
    "routing": {"error_type": "ToolError", "error": "bad call", "context": {"error_category": "schema"}},
    "collaboration": {"error_type": "RuntimeError", "error": "context window exceeded during handoff"},
    "governance": {"error_type": "RateLimitError", "error": "slow down"},
    "dependency": {"error_type": "ConnectionError", "error": "connection refused", "error_category": "dependency"},
    None: {"error_type": "ValueError", "error": "boom"},
}


def history(bits: str) -> list[dict]:
    """100 calls, oldest first, whose six lines read ``bits`` (bottom line first)."""
    failures = [cat for pos, cat in ((4, "routing"), (5, "collaboration"), (6, "governance")) if bits[pos - 1] == "0"
                for _ in range(6)]  # 6 % of calls > the 5 % limit
    if bits[0] == "0":
        failures += ["dependency"] * (30 - len(failures))  # 30 % failed > 20 %
    if bits[2] == "0" and len(failures) < 3:
        failures += [None] * 3
    n_ok = 100 - len(failures)
    fails = [{"success": False, **FAILURE[cat]} for cat in failures]
    oks = [{"success": True, "error": None, "error_type": None} for _ in range(n_ok)]
    calls = oks + fails if bits[2] == "0" else fails + oks  # learning: a failure run ends the window, or not
    for i, call in enumerate(calls):
        call["duration_sec"] = SLOW if bits[1] == "0" and i % 10 < 3 else FAST  # 30 % slow > 20 %
        call.setdefault("context", {"model": "gpt-x", "tool_name": "search", "rate": 3})  # key names never read
    return calls


# -- the 64 states ------------------------------------------------------------------------
def test_all_64_hexagrams_are_named_once_in_king_wen_order():
    assert sorted(h.number for h in HEXAGRAMS.values()) == list(range(1, 65))
    assert len({h.name for h in HEXAGRAMS.values()}) == 64
    assert all(h.pinyin and h.characters and h.characters in h.display_name for h in HEXAGRAMS.values())
    spot = {"111000": (11, "tai", "泰"), "000111": (12, "pi", "否"), "101010": (63, "jiji", "既济"),
            "010101": (64, "weiji", "未济"), "001000": (15, "qian15", "谦"), "010110": (47, "kun47", "困")}
    for binary, (number, name, chars) in spot.items():
        h = HEXAGRAMS[binary]
        assert (h.number, h.name, h.characters) == (number, name, chars)


@pytest.mark.parametrize("bits", ALL_STATES)
def test_every_state_is_reached_by_a_call_history(bits):
    lines = score_lines(history(bits), latency_target_sec=5.0)
    assert [line.dimension for line in lines] == list(DIMENSIONS)
    state = identify_hexagram(lines)
    assert state.binary == bits
    assert (state.name, state.number) == (HEXAGRAMS[bits].name, HEXAGRAMS[bits].number)
    assert state.is_core_state == (bits in CORE_HEXAGRAMS)


def test_every_state_is_reached_through_recorded_calls():
    """The same histories, recorded by a guard and read back as the strategy sees them."""
    with Guard("memory://", flush_interval=60) as g:
        start = time.time() - 1000
        for k, bits in enumerate(ALL_STATES):
            for i, call in enumerate(history(bits)):
                context = dict(call["context"])
                if call.get("error_category"):
                    context["error_category"] = call["error_category"]
                g.record(f"t{k}", success=call["success"], latency_s=call["duration_sec"], error_type=call["error_type"],
                         error_message=call["error"], context=context, ts=start + i)
        g.flush()
        for k, bits in enumerate(ALL_STATES):
            traces = [trace_dict(r) for r in g.store.read_calls(f"t{k}", since=0, limit=MAX_TRACES)]
            assert identify_hexagram(score_lines(traces)).binary == bits


def test_moving_lines_flip_into_the_changed_hexagram():
    calls = history("011111")  # only stability weak: 30 % failed, well past the moving point
    state = identify_hexagram(score_lines(calls))
    assert state.moving_lines == (1,) and state.changed_binary == "111111" and state.changed_name == "qian"
    # 23 % failed: yin (above the 20 % limit) but not moving (below 27.5 %), so nothing changes
    calls = [{"success": i >= 23, "duration_sec": FAST} for i in range(100)]
    lines = score_lines(calls)  # failures first: the window ends in recovery
    assert lines[0].state == "yin" and not lines[0].moving
    assert identify_hexagram(lines).changed_binary == identify_hexagram(lines).binary


def test_an_empty_window_is_all_yang_and_bad_lines_are_refused():
    assert identify_hexagram(score_lines([])).name == "qian"
    with pytest.raises(ValueError):
        identify_hexagram(score_lines([])[:5])


# -- policies -----------------------------------------------------------------------------



def test_the_seeds_eight_core_states_keep_their_names_and_policies():
    """Compared with the seed itself (self-improving-loop 0.1.3, installed by the dev extra)."""
    seed_hexagram = pytest.importorskip("self_improving_loop.yijing.hexagram",
                                        reason="the seed (self-improving-loop==0.1.3) is not installed")
    from self_improving_loop.yijing.policies import CORE_POLICIES as SEED_POLICIES

    assert CORE_HEXAGRAMS == seed_hexagram.CORE_HEXAGRAMS
    for binary, name in CORE_HEXAGRAMS.items():
        state = identify_hexagram(score_lines(history(binary)))
        assert (state.name, state.display_name) == (name, seed_hexagram.DISPLAY_NAMES[name])
        policy = policy_for_hexagram(state)
        assert policy.pop("hexagram")["binary"] == binary
        assert policy == SEED_POLICIES[name]


@pytest.mark.parametrize("bits", [b for b in ALL_STATES if b not in CORE_HEXAGRAMS])
def test_every_other_state_follows_the_trigram_rule(bits):
    h = HEXAGRAMS[bits]
    policy = policy_for_hexagram(identify_hexagram(score_lines(history(bits))))
    weak = [i + 1 for i, bit in enumerate(bits) if bit == "0"]
    expected_config = {}
    for position in weak:
        expected_config.update(LINE_FIXES[position])
    assert {k: v for k, v in policy.items() if k in CONFIG_KEYS} == expected_config and expected_config
    assert set(policy) <= set(CONFIG_KEYS) | set(POLICY_KEYS) | {"policy_action", "reason", "hexagram"}
    assert policy["policy_action"] == f"bounded_{h.lower}_under_{h.upper}"
    assert policy["canary_ratio"] == (0.10 if h.lower == "qian" else 0.05)
    assert policy["auto_apply_enabled"] == ("kun" not in (h.lower, h.upper))
    assert policy.get("rollback_bias", False) == (bits[0] == "0")


# -- the classifier -----------------------------------------------------------------------
@pytest.mark.parametrize("text, category", [
    ("HTTP 429 Too Many Requests", "governance"),
    ("RateLimitError", "governance"),
    ("monthly quota exceeded", "governance"),
    ("401 Unauthorized", "governance"),
    ("AuthenticationError: invalid api key", "governance"),
    ("JSONDecodeError: Expecting value", "routing"),
    ("output does not match the schema", "routing"),
    ("unknown tool 'serach'", "routing"),
    ("handoff to billing agent failed", "collaboration"),
    ("ContextWindowExceeded", "collaboration"),
    ("maximum context length is 8192 tokens", "collaboration"),
    ("connection refused", "dependency"),
    ("upstream 503", "dependency"),
    ("TimeoutError", "dependency"),
    ("failed to generate an accurate answer", None),  # "rate" inside words is not a rate limit
    ("async task failed", None),                        # nor "sync" a collaboration failure
    ("the author field is missing", None),              # nor "author" an auth failure
    ("modeling error in the toolkit", None),            # nor "model"/"tool" prefixes a routing one
    ("", None),
])
def test_free_text_errors_are_classified_on_word_boundaries(text, category):
    assert classify_error(text) == category


def test_the_explicit_category_wins_and_context_key_names_are_never_read():
    assert error_category({"success": False, "error": "429", "context": {"error_category": "handoff"}}) == "collaboration"
    assert error_category({"success": False, "error": "boom", "error_category": "quota"}) == "governance"
    noisy = {"success": False, "error": "boom", "task": "route the model",
             "context": {"model": "x", "tool": "y", "rate_limit": 1, "handoff": True, "schema": "z"}}
    assert error_category(noisy) is None
    assert error_category({"success": True, "error": "429"}) is None
    lines = score_lines([noisy] * 10)
    assert [line.state for line in lines[3:]] == ["yang"] * 3


def test_the_strategy_is_exported_as_the_seed_named_it():
    from sil_core import yijing

    assert sil_core.YijingEvolutionStrategy is yijing.YijingEvolutionStrategy
    for name in ("score_lines", "identify_hexagram", "policy_for_hexagram", "CORE_HEXAGRAMS", "DIMENSIONS",
                 "HexagramState", "LineSignal"):
        assert hasattr(yijing, name)
    s = YijingEvolutionStrategy(latency_target_sec=2.0)
    assert s.analyze("a", history("111111")) is None  # qian changes no config
    assert s.analyze("a", history("010010")) == {"max_tool_fanout": 1, "context_budget_multiplier": 0.75, "retry_limit": 1}
    report = s.describe("a", history("010010"))
    assert report["hexagram"]["name"] == "kan" and len(report["dimensions"]) == 6
