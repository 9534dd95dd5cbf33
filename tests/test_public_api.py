"""The public surface is small and deliberate: changing it must be a conscious decision.

Public means: in the ``__all__`` of ``baton`` or one of its subpackages (the shipped test
doubles of ``baton.testing`` may also be imported from their own modules). Every public
name has a docstring, every error class is exported, and the docs import nothing else.
"""

import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import baton
import baton.errors

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "baton": [
        "Agent", "AgentResult", "BatonError", "Decision", "HandoffNote", "Limits", "RunContext", "RunResult", "Tool",
        "ToolContext", "__version__", "approve", "fork", "register_workflow", "replay", "resume", "run", "run_sync",
        "stream", "stream_resume", "tool",
    ],
    "baton.runtime": ["Engine", "RateGovernor", "RateLimits", "RetryPolicy"],
    "baton.models": ["AnthropicModel", "LocalModel", "Model", "OpenAICompatModel", "close_models", "get_model"],
    "baton.stores": ["RunRecord", "StepRecord", "Store", "open_store"],
    "baton.observe": ["Event", "EventStream", "JSONLSink", "MetricsSink", "OTelSink", "ProgressSink",
                      "configure_tracing", "otlp_span_exporter", "read_events", "register_env_secrets",
                      "register_secret", "serve_metrics"],
    "baton.patterns": ["Bus", "BusMessage", "Consensus", "FallbackChain", "FanOut", "Gate", "Handoffs", "Orchestrator",
                       "Pipeline", "Refine", "Router", "Stage", "Verdict"],
    "baton.spec": ["YamlWorkflow", "load_workflow_file"],
    "baton.knowledge": ["Embedder", "KnowledgeBase"],
    "baton.testing": ["FakeAnthropicServer", "Fault", "LoggedRequest", "RateLimitConfig", "Reply", "Rule",
                      "ScriptedModel", "json_reply", "text", "tool_call", "tool_calls"],
}
SUBPACKAGES = sorted(p.parent.name for p in (ROOT / "src" / "baton").glob("*/__init__.py"))
UNEXPORTED = {"cli", "server", "temporal"}  # entry points: a command, a service, an engine run by `baton worker`


def test_all_is_pinned() -> None:
    assert sorted(baton.__all__) == sorted(EXPECTED["baton"])
    for name in baton.__all__:
        assert hasattr(baton, name), name


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_each_subpackage_all_is_pinned_and_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(EXPECTED[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_every_subpackage_is_pinned_or_an_entry_point() -> None:
    assert set(SUBPACKAGES) == {m.removeprefix("baton.") for m in EXPECTED if m != "baton"} | UNEXPORTED


def test_the_library_surface_stays_small() -> None:
    library = sum(len(names) for module, names in EXPECTED.items() if module != "baton.testing")
    assert library <= 64, library


def test_every_error_class_is_exported() -> None:
    defined = {name for name, obj in vars(baton.errors).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == "baton.errors"}
    assert sorted(baton.errors.__all__) == sorted(defined)


def _own_doc(obj: object) -> str:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        generated = dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}(")
        return "" if generated else doc
    return getattr(obj, "__doc__", None) or ""


@pytest.mark.parametrize("module", [*sorted(EXPECTED), "baton.errors"])
def test_every_public_name_has_a_docstring(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not name.startswith("__")
               and not _own_doc(getattr(mod, name)).strip()]
    assert missing == []


_IMPORT = re.compile(r"^\s*from (baton(?:\.[\w.]+)?) import (\([^)]*\)|[^\n#]+)", re.M)


def _doc_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.py"))]:
        for module, names in _IMPORT.findall(path.read_text()):
            for name in re.split(r"[\s,()]+", names):
                if name:
                    found.append((path.name, module, name.split(" as ")[0]))
    return found


def test_docs_import_only_public_names() -> None:
    imports = _doc_imports()
    assert len(imports) > 20, "the import scan found almost nothing: its pattern no longer matches the docs"
    wrong = []
    for where, module, name in imports:
        parts = module.split(".")
        home = len(parts) <= 2 or (len(parts) == 3 and parts[1] == "testing")
        exported = name in getattr(importlib.import_module(module), "__all__", ())
        if not (home and exported):
            wrong.append(f"{where}: from {module} import {name}")
    assert wrong == []


def test_import_is_light() -> None:
    """Heavy optional parts (pydantic, jsonschema, llama.cpp, OTel, drivers) load lazily."""
    code = ("import sys, baton, baton.models, baton.runtime, baton.stores; heavy = [m for m in ('pydantic', "
            "'jsonschema', 'llama_cpp', 'opentelemetry', 'psycopg', 'redis', 'prometheus_client', 'yaml', "
            "'baton.models.anthropic', 'baton.models.local') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
