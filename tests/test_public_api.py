"""The public surface is small and deliberate: changing it must be a conscious decision."""

import subprocess
import sys

import baton

EXPECTED = [
    "Agent", "AgentResult", "BatonError", "Decision", "HandoffNote", "Limits", "RunContext", "RunResult", "Tool",
    "ToolContext", "__version__", "approve", "fork", "register_workflow", "replay", "resume", "run", "run_sync", "stream",
    "stream_resume", "tool",
]


def test_all_is_pinned() -> None:
    assert sorted(baton.__all__) == sorted(EXPECTED)
    for name in baton.__all__:
        assert hasattr(baton, name), name


def test_import_is_light() -> None:
    """Heavy optional parts (pydantic, jsonschema, llama.cpp, OTel, drivers) load lazily."""
    code = ("import sys, baton; heavy = [m for m in ('pydantic', 'jsonschema', 'llama_cpp', 'opentelemetry', "
            "'psycopg', 'redis', 'prometheus_client', 'yaml') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
