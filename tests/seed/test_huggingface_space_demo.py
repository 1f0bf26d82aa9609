# Ported from the test suite of self-improving-loop 0.1.3 (the seed; PyPI sdist,
# tests/test_huggingface_space_demo.py), with `self_improving_loop` imports rewritten to `sil_core`.
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

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = ROOT / "demo" / "huggingface_space"


@pytest.mark.skip(reason="reads the seed's demo/huggingface_space folder, seed-only files")
def test_huggingface_space_demo_files_exist():
    assert (SPACE_DIR / "app.py").exists()
    assert (SPACE_DIR / "requirements.txt").exists()


@pytest.mark.skip(reason="reads the seed's demo/huggingface_space folder, seed-only files")
def test_huggingface_space_demo_is_bounded_and_package_backed():
    app = (SPACE_DIR / "app.py").read_text(encoding="utf-8")
    requirements = (SPACE_DIR / "requirements.txt").read_text(encoding="utf-8")

    assert "SelfImprovingLoop" in app
    assert "external_model_called" in app
    assert "simulated agent failure" in app
    assert "streamlit" in requirements
    assert "self-improving-loop" in requirements
