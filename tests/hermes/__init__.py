import os
import tempfile

import pytest

# Hermes creates its home tree when model_tools is first imported: point it at a scratch
# folder before anything imports Hermes (each test then sets its own HERMES_HOME).
os.environ.setdefault("HERMES_HOME", tempfile.mkdtemp(prefix="sil-hermes-session-"))
pytest.importorskip("hermes_constants", reason="hermes-agent is not installed (pip install 'sil-guard[hermes]')")
