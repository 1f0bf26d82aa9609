import pytest

pytest.importorskip("opentelemetry.sdk", reason="OpenTelemetry is not installed (pip install 'sil-guard[otel]')")
