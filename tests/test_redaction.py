"""Secrets never reach a sink: redaction rules, capture modes, and a canary through every sink."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from baton.errors import UsageError
from baton.observe import EventStream, JSONLSink, MetricsSink, OTelSink, ProgressSink
from baton.observe.events import Event
from baton.observe.redact import (
    REDACTED,
    apply_capture,
    clear_secrets,
    redact,
    register_env_secrets,
    register_secret,
)

API_KEY = "sk-ant-api03-Zq9vL2mXw7RkT4pYb8NcJd3HfGs6AeU1oIy5tV0rWnQ-xKzM_7hPqLbA"
ENV_SECRET = "pg-pass-5b1d9c7e2f4a"
MARKED = "CANARY-7e21a9f0-tool-argument"


@pytest.fixture(autouse=True)
def no_registered_secrets() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


# --- rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (f"key={API_KEY} end", f"key={REDACTED} end"),
    ("openai sk-proj-AbCdEfGhIjKlMnOpQrStUvWx12 here", f"openai {REDACTED} here"),
    ("Authorization: Bearer eyJhbGciOi.abc-DEF_123", f"Authorization: Bearer {REDACTED}"),
    ("basic dXNlcjpwYXNzd29yZA==", f"basic {REDACTED}"),
    ("postgresql://baton:s3cr3t-pw@db.internal:5432/runs", f"postgresql://baton:{REDACTED}@db.internal:5432/runs"),
    ("aws AKIAIOSFODNN7EXAMPLE key", f"aws {REDACTED} key"),
    ("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", f"token {REDACTED}"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     f"jwt {REDACTED}"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", REDACTED),
])
def test_known_secret_shapes_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "claude-sonnet-4-6", "task-force-alpha-bravo-charlie-delta", "risk-assessment-framework-v2",
    "sk-short", "The basic idea is simple.", "see https://example.com/docs", "req_011CZ3", "0/1.0",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) is text


def test_credential_named_keys_are_masked_whatever_the_value() -> None:
    data = {
        "headers": {"Authorization": "whatever", "x-api-key": "abc", "X-Api-Key": "abc", "Cookie": "s=1"},
        "api_key": "k", "password": "hunter2", "client_secret": "c", "access_token": "t", "token": "t",
        "db": {"PASSWORD": "p", "credentials": {"user": "u"}},
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 1},
        "max_tokens": 1024, "token_count": 3, "key": "0/1", "empty_token": "",
    }
    out = redact(data)
    assert out["headers"] == {"Authorization": REDACTED, "x-api-key": REDACTED, "X-Api-Key": REDACTED,
                              "Cookie": REDACTED}
    for key in ("api_key", "password", "client_secret", "access_token", "token"):
        assert out[key] == REDACTED
    assert out["db"] == {"PASSWORD": REDACTED, "credentials": REDACTED}
    assert out["usage"] == data["usage"] and out["max_tokens"] == 1024
    assert out["token_count"] == 3 and out["key"] == "0/1" and out["empty_token"] == ""


def test_redact_never_mutates_and_returns_clean_data_as_is() -> None:
    data = {"agent": "writer", "messages": [{"role": "user", "content": f"use {API_KEY}"}], "n": (1, "x")}
    before = copy.deepcopy(data)
    out = redact(data)
    assert data == before
    assert out["messages"][0]["content"] == f"use {REDACTED}"
    assert out["n"] is data["n"]
    clean = {"agent": "writer", "usage": {"input_tokens": 1}, "tags": ["a", "b"], "ok": True, "x": None}
    assert redact(clean) is clean


def test_foreign_objects_become_plain_data() -> None:
    from baton.messages import Usage

    assert redact(Usage(input_tokens=3)) == {"input_tokens": 3, "output_tokens": 0, "cache_creation_input_tokens": 0,
                                             "cache_read_input_tokens": 0, "cache_creation_1h_input_tokens": 0}
    assert redact(b"\x00\x01") == "<2 bytes>"
    assert redact(ValueError(f"bad key {API_KEY}")) == f"bad key {REDACTED}"


def test_registered_and_env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    register_secret("opaque-internal-value")
    assert redact({"note": "x opaque-internal-value y"}) == {"note": f"x {REDACTED} y"}
    env = {"MYSVC_API_KEY": "mysvc-9f8e7d6c5b", "DB_PASSWORD": ENV_SECRET, "GH_TOKEN": "gho_short12345",
           "FEATURE_TOKEN": "1", "PATH": "/usr/bin:/bin", "HOME": "/root"}
    assert register_env_secrets(env) == ["DB_PASSWORD", "GH_TOKEN", "MYSVC_API_KEY"]
    assert redact(f"dsn host=db password={ENV_SECRET} mysvc-9f8e7d6c5b") == f"dsn host=db password={REDACTED} {REDACTED}"
    assert redact("/usr/bin:/bin") == "/usr/bin:/bin"
    monkeypatch.setenv("ZZ_SERVICE_SECRET", "from-the-real-environment")
    assert "ZZ_SERVICE_SECRET" in register_env_secrets()
    assert redact(["from-the-real-environment"]) == [REDACTED]
    with pytest.raises(UsageError, match="at least 4 characters"):
        register_secret("abc")


@settings(max_examples=150, deadline=None)
@given(prefix=st.text(max_size=40), suffix=st.text(max_size=40),
       secret=st.text(alphabet="0123456789abcdef", min_size=8, max_size=24))
def test_a_registered_secret_never_survives(prefix: str, suffix: str, secret: str) -> None:
    register_secret(secret)
    out = redact({"k": [prefix + secret + suffix], prefix: {"x": secret}})
    assert secret not in str(out)


@settings(max_examples=150, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(alphabet="abcdefghij .,_/", max_size=30),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["agent", "model", "usage", "n"]), inner, max_size=4),
                    max_leaves=20))
def test_clean_data_comes_back_unchanged(value: Any) -> None:
    assert redact(value) == value


# --- capture modes -----------------------------------------------------------------------------


def test_capture_modes() -> None:
    data = {"agent": "researcher", "tool": "search", "input": {"q": "private question"},
            "output": "private answer", "messages": [{"role": "user", "content": "hi"}],
            "error": {"type": "ToolError", "message": "failed on private question", "raw_output": "zz"},
            "errors": ["worker 'x' unknown"], "duration_s": 0.5, "headers": {"x-api-key": API_KEY}}
    none = apply_capture(data, "none")
    assert none == {"agent": "researcher", "tool": "search", "error": {"type": "ToolError"},
                    "duration_s": 0.5, "headers": {"x-api-key": REDACTED}}
    metadata = apply_capture(data, "metadata")
    assert metadata == {"agent": "researcher", "tool": "search", "input_chars": len('{"q":"private question"}'),
                        "output_chars": len("private answer"), "messages_chars": len('[{"role":"user","content":"hi"}]'), "messages_count": 1,
                        "error": {"type": "ToolError", "message": "failed on private question",
                                  "raw_output_chars": 2},
                        "errors": ["worker 'x' unknown"], "duration_s": 0.5, "headers": {"x-api-key": REDACTED}}
    full = apply_capture(data, "full")
    assert full["input"] == {"q": "private question"} and full["headers"] == {"x-api-key": REDACTED}
    assert data["headers"] == {"x-api-key": API_KEY}  # untouched
    with pytest.raises(UsageError, match="capture must be one of none, metadata, full"):
        apply_capture(data, "some")  # type: ignore[arg-type]


def _reference_capture(data: dict[str, Any], mode: str) -> dict[str, Any]:
    """The capture rules stated plainly (strip, then redact), to check the one-pass version against."""
    from baton.observe.redact import CONTENT_KEYS, FREE_TEXT_KEYS, content_size

    def strip(d: dict[Any, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for k, v in d.items():
            if k in CONTENT_KEYS:
                if mode == "metadata" and v is not None:
                    out[f"{k}_chars"] = content_size(v)
                    if isinstance(v, list):
                        out[f"{k}_count"] = len(v)
            elif isinstance(v, dict):
                out[k] = strip(v)
            elif not (mode == "none" and k in FREE_TEXT_KEYS):
                out[k] = v
        return out

    return redact(strip(data))  # type: ignore[no-any-return]


_KEYS = st.sampled_from(["agent", "input", "output", "messages", "error", "message", "errors", "usage", "headers",
                         "api_key", "password", "token", "input_tokens", "n", 7])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["", API_KEY, f"Bearer {ENV_SECRET}", "postgresql://u:pw-1234@h/db"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=15)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(_KEYS, _VALUES, max_size=6), mode=st.sampled_from(["none", "metadata"]))
def test_capture_matches_the_plain_rules(data: dict[str, Any], mode: str) -> None:
    before = copy.deepcopy(data)
    assert apply_capture(data, mode) == _reference_capture(data, mode)  # type: ignore[arg-type]
    assert data == before


# --- canary through every sink -----------------------------------------------------------------


def canary_run() -> list[Event]:
    """A run whose data carries the API key, the env secret and a marked tool argument."""
    events: list[Event] = []
    t = 1_700_000_000.0

    def add(kind: str, span: str, parent: str | None, **data: Any) -> None:
        nonlocal t
        t += 0.1
        events.append(Event(kind, "run-canary", "ab" * 16, span, parent, data, ts=t))

    add("run.start", "R", None, workflow="leaky", run_id="run-canary")
    add("agent.start", "A", "R", agent="researcher", key="0", depth=1, input=f"use key {API_KEY}")
    add("model.request", "M", "A", agent="researcher", model="claude-sonnet-4-6", key="0/0", prompt_version="v1",
        attempt=1, max_tokens=100, headers={"x-api-key": API_KEY, "authorization": f"Bearer {ENV_SECRET}"},
        messages=[{"role": "user", "content": f"the db password is {ENV_SECRET}"}])
    add("model.error", "M", "A", agent="researcher", model="claude-sonnet-4-6", key="0/0",
        error_type=f"auth failed for {API_KEY}", status=401, retryable=False, latency_s=0.01)
    add("retry", "r", "A", agent="researcher", target=f"proxy-{ENV_SECRET}", attempt=1, delay_s=0.5,
        error_type="overloaded_error")
    add("tool.call", "T", "A", agent="researcher", tool="http_get", key="0/1.0",
        input={"url": "https://example.com", "note": MARKED, "auth": f"Bearer {API_KEY}"})
    add("tool.result", "T", "A", agent="researcher", tool="http_get", key="0/1.0", is_error=True,
        duration_s=0.2, output=f"echo {MARKED} {ENV_SECRET}", error_type="ToolError")
    add("tool.denied", "d", "A", agent="researcher", tool=f"exfil-{ENV_SECRET}")
    add("agent.end", "A", "R", agent="researcher", key="0", status="error", duration_s=0.5,
        error_type=f"Leak{API_KEY}")
    add("run.end", "R", None, status="failed", duration_s=1.0, cost_usd=0.0, model_calls=0,
        usage={"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
               "cache_creation_input_tokens": 0},
        error={"type": "ToolError", "message": f"tool said {MARKED} with {API_KEY} and {ENV_SECRET}"})
    return events


def run_all_sinks(tmp_path: Path, capture: str) -> dict[str, str]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    progress = io.StringIO()
    metrics = MetricsSink()
    jsonl = tmp_path / f"{capture}.jsonl"
    stream = EventStream([JSONLSink(jsonl, capture=capture), OTelSink(provider, capture=capture),  # type: ignore[arg-type]
                          metrics, ProgressSink(progress, tty=False)])
    for event in canary_run():
        stream.emit(event)
    stream.close()
    spans = exporter.get_finished_spans()
    assert len(spans) == 4  # run, agent, chat, execute_tool
    return {
        "jsonl": jsonl.read_text(),
        "spans": "\n".join(span.to_json() for span in spans),
        "metrics": generate_latest(metrics.registry).decode(),
        "progress": progress.getvalue(),
    }


def test_canaries_never_reach_any_sink_with_capture_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TEST_DB_PASSWORD", ENV_SECRET)
    assert "BATON_TEST_DB_PASSWORD" in register_env_secrets()
    outputs = run_all_sinks(tmp_path, "none")
    for sink, text in outputs.items():
        assert text, sink
        for canary in (API_KEY, "sk-ant-api03", ENV_SECRET, MARKED):
            assert canary not in text, f"{canary} leaked into {sink}"
    # The sinks still did their jobs around the masked values.
    assert 'baton_errors_total{agent="researcher",type="Leak[REDACTED]"} 1.0' in outputs["metrics"]
    assert "baton_retries_total{target=\"proxy-[REDACTED]\"} 1.0" in outputs["metrics"]
    assert "asked for tool exfil-[REDACTED]" in outputs["progress"]
    assert '"x-api-key":"[REDACTED]"' in outputs["jsonl"]


def test_full_capture_keeps_content_but_still_masks_secrets(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_TEST_DB_PASSWORD", ENV_SECRET)
    register_env_secrets()
    outputs = run_all_sinks(tmp_path, "full")
    for sink, text in outputs.items():
        assert API_KEY not in text and ENV_SECRET not in text, sink
    # Content is kept in full mode (the marked argument is there), but never in metrics or progress.
    assert MARKED in outputs["jsonl"] and MARKED in outputs["spans"]
    assert MARKED not in outputs["metrics"] and MARKED not in outputs["progress"]
    assert "the db password is [REDACTED]" in outputs["jsonl"]
