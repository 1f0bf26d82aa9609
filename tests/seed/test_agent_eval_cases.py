# Ported from the test suite of self-improving-loop 0.1.3 (the seed; PyPI sdist,
# tests/test_agent_eval_cases.py), with `self_improving_loop` imports rewritten to `sil_core`.
# Tests that cannot pass on sil_core by design are skipped with the reason.
#
# The seed's license:
#
# MIT License
#
# Copyright (c) 2026 Self-Improving Loop Contributors
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in all
# copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.

"""The bundled eval cases should stay parseable and non-authorizing."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skip(reason="runs the seed's examples/verify_agent_eval_cases.py, a seed-only file")
def test_agent_eval_cases_verify():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "verify_agent_eval_cases.py"),
            str(ROOT / "examples" / "agent_eval_cases.jsonl"),
        ],
        cwd=str(ROOT),
        text=True,
        capture_output=True,
        timeout=20,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict=ok" in result.stdout
    assert "case_count=30" in result.stdout
    assert "judgment_allowed=false" in result.stdout
    assert "paper_buy_allowed=false" in result.stdout
    assert "trade_allowed=false" in result.stdout
    assert "promote_allowed=false" in result.stdout
