"""What observability costs per agent call, in CPU time.

One agent call with one tool round is eight events (agent.start, model.request,
model.response, tool.call, tool.result, model.request, model.response, agent.end).
This builds that sequence N times, then emits it through an ``EventStream`` the way the
runtime does (16 calls' events per event-loop iteration) and reports process CPU
microseconds per agent call: with no sinks, with each sink alone, and with all on.
Only the sinks' and the stream's work is timed, so it moves much less than the full call.

"All on" is what a production user runs: ``JSONLSink(path)`` (metadata capture),
``OTelSink`` on the provider ``configure_tracing("otlp", endpoint=...)`` builds (what
``baton run --trace otlp`` uses: a ``BatchSpanProcessor`` and the OTLP/HTTP exporter,
which encodes every span to protobuf and POSTs each batch) and ``MetricsSink()``. The
OTLP endpoint is a small collector in a child process (like the fake API, so its CPU
is not counted); it parses what it receives, and the benchmark checks that every span
arrived (none dropped by a full queue, which would hide their cost). Process CPU time
counts the batch thread too; sinks are closed, and so flushed, before the clock stops.

Then the full agent call (issue 6): the same complete ``ctx.call`` of a one-turn agent as
bench_agent_call.py (real sockets to the fake API in another process, 1,000 in flight),
with no sinks vs all sinks on; the extra CPU is the share of the call that observability
costs (target <= 20 %). Each run is a fresh process, so a run with sinks off carries none
of their code or data (a process that already ran with sinks, or imported them, pays for
a larger heap at every full garbage collection), and runs alternate in rounds; the
verdict is the median over rounds of the extra CPU against the same round's run with no
sinks. ``--breakdown`` adds each sink alone and OpenTelemetry through the stock OTLP
exporter (its protobuf-object encoder) for comparison. ``--floors`` adds diagnostics: all
on with one part of the sinks' work patched out of the child process (redaction and
capture, span encoding, span building), to show what each part costs in the full call.
``--payload large`` runs the same call with working-size prompts and answer instead of
benchmark 2's one-word exchange.

    .venv/bin/python benchmarks/bench_observe.py [--n 10000] [--capture metadata] [--content]
    .venv/bin/python benchmarks/bench_observe.py --skip-events --calls 3000 --rounds 11   # the full-call verdict
    .venv/bin/python benchmarks/bench_observe.py --skip-events --breakdown                # per sink
    .venv/bin/python benchmarks/bench_observe.py --skip-events --floors                   # what each part costs
    .venv/bin/python benchmarks/bench_observe.py --skip-events --payload large            # working-size prompts

``AllSinks(tmpdir, collector_url).build()`` builds that set; the full agent-call benchmark reuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson

from baton.observe.events import Event, EventStream, Sink, new_id

if TYPE_CHECKING:  # the sinks and OpenTelemetry load only where used: a run with sinks off imports neither
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    from baton.observe.redact import Capture

MODEL = "claude-sonnet-4-6"
TARGET_EXTRA = 0.20
# The benchmark emits far faster than a real run; a full queue (default 2,048) would drop
# spans and hide their export cost. The collector's span count checks that none were dropped.
os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(1 << 20))


def no_export() -> Any:
    """An exporter that takes each batch and does nothing with it: what the sink and the SDK cost on their own."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class NoExport(SpanExporter):  # type: ignore[misc]
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    return NoExport()


class Collector:
    """An OTLP/HTTP trace endpoint in a child process; counts the spans it parses."""

    def __enter__(self) -> Collector:
        self.proc = subprocess.Popen([sys.executable, __file__, "--collector"], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.__exit__(None, None, None)
            raise RuntimeError("OTLP collector did not start")
        self.url = line.split()[1]
        return self

    def spans(self) -> int:
        with urllib.request.urlopen(self.url + "/count", timeout=10) as response:
            return int(orjson.loads(response.read())["spans"])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def serve_collector() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    counts = {"spans": 0, "requests": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real collector

        def do_POST(self) -> None:  # noqa: N802
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
            counts["requests"] += 1
            counts["spans"] += sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
            self._answer(b"", "application/x-protobuf")

        def do_GET(self) -> None:  # noqa: N802
            self._answer(orjson.dumps(counts), "application/json")

        def _answer(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"READY http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


class NoopSink:
    def handle(self, event: Event) -> None:
        pass

    def process(self, event: Event) -> None:
        pass

    def batch_done(self) -> None:
        pass

    def close(self) -> None:
        pass


class AllSinks:
    """Builds sink sets against one collector; shuts the previous set's tracer provider down
    on the next build (outside the timed part) so that batch threads do not pile up."""

    def __init__(self, tmpdir: str | Path, collector_url: str, capture: Capture = "metadata") -> None:
        self.tmpdir = Path(tmpdir)
        self.url = collector_url
        self.capture = capture
        self.providers: list[TracerProvider] = []

    def _provider(self, exporter: str) -> TracerProvider:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from baton.observe import configure_tracing

        for old in self.providers:
            old.shutdown()
        self.providers.clear()
        if exporter == "otlp":  # baton's default: configure_tracing("otlp")
            provider = configure_tracing("otlp", endpoint=self.url)
            assert provider is not None
        else:
            provider = TracerProvider()
            if exporter == "stock-otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url + "/v1/traces")))
            else:
                provider.add_span_processor(BatchSpanProcessor(no_export()))
        self.providers.append(provider)
        return provider

    def jsonl(self) -> list[Sink]:
        from baton.observe import JSONLSink

        return [JSONLSink(self.tmpdir / "events.jsonl", capture=self.capture)]

    def otel(self, exporter: str = "otlp") -> list[Sink]:
        from baton.observe import OTelSink

        return [OTelSink(self._provider(exporter), capture=self.capture)]

    def prometheus(self) -> list[Sink]:
        from baton.observe import MetricsSink

        return [MetricsSink()]

    def noop(self) -> list[Sink]:
        """A batching sink that does nothing: what building and queuing the events costs."""
        return [NoopSink()]

    def build(self) -> list[Sink]:
        """JSONL + OpenTelemetry (batched, OTLP over HTTP) + Prometheus: everything a user would turn on."""
        return [*self.jsonl(), *self.otel(), *self.prometheus()]

    def close(self) -> None:
        for provider in self.providers:
            provider.shutdown()
        self.providers.clear()


def _usage(i: int, o: int, r: int = 0, w: int = 0) -> dict[str, int]:
    return {"input_tokens": i, "output_tokens": o, "cache_read_input_tokens": r, "cache_creation_input_tokens": w}


def agent_call_events(run_id: str, trace_id: str, run_span: str, i: int, content: bool) -> list[Event]:
    """One agent call's events, built the way the runtime builds them."""
    events: list[Event] = []
    agent, key = "researcher", str(i)
    a, m1, t1, m2 = new_id(), new_id(), new_id(), new_id()
    question = "What changed in the widget market last quarter? Cite sources."
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]

    def emit(kind: str, span: str, parent: str, data: dict[str, Any]) -> None:
        events.append(Event(kind, run_id, trace_id, span, parent, data))

    emit("agent.start", a, run_span, {"agent": agent, "key": key, "depth": 1,
                                      **({"input": question} if content else {})})
    emit("model.request", m1, a, {"agent": agent, "model": MODEL, "key": f"{key}/0", "prompt_version": "3f2a9c",
                                  "attempt": 1, "max_tokens": 1024, **({"messages": messages} if content else {})})
    emit("model.response", m1, a, {"agent": agent, "model": MODEL, "key": f"{key}/0", "prompt_version": "3f2a9c",
                                   "usage": _usage(812, 64, 2048, 0), "cost_usd": 0.00402, "latency_s": 1.21,
                                   "stop_reason": "tool_use", "request_id": f"req_{i:08d}",
                                   **({"output": [{"type": "tool_use", "id": "toolu_1", "name": "web_search",
                                                   "input": {"query": "widget market Q3"}}]} if content else {})})
    emit("tool.call", t1, a, {"agent": agent, "tool": "web_search", "key": f"{key}/1.0",
                              **({"input": {"query": "widget market Q3"}} if content else {})})
    emit("tool.result", t1, a, {"agent": agent, "tool": "web_search", "key": f"{key}/1.0", "is_error": False,
                                "duration_s": 0.31, **({"output": "Widget sales rose 4% ..." * 20} if content else {})})
    emit("model.request", m2, a, {"agent": agent, "model": MODEL, "key": f"{key}/2", "prompt_version": "3f2a9c",
                                  "attempt": 1, "max_tokens": 1024, **({"messages": messages * 3} if content else {})})
    emit("model.response", m2, a, {"agent": agent, "model": MODEL, "key": f"{key}/2", "prompt_version": "3f2a9c",
                                   "usage": _usage(1290, 240, 2048, 0), "cost_usd": 0.00811, "latency_s": 2.02,
                                   "stop_reason": "end_turn", "request_id": f"req_{i:08d}b",
                                   **({"output": [{"type": "text", "text": "Sales rose 4%."}]} if content else {})})
    emit("agent.end", a, run_span, {"agent": agent, "key": key, "status": "ok", "duration_s": 3.6,
                                    "usage": _usage(2102, 304, 4096, 0), "cost_usd": 0.01213,
                                    **({"output": "Sales rose 4%."} if content else {})})
    return events


CALLS_PER_ITERATION = 16  # under load one loop iteration carries the events of many agent calls


def cpu_us_per_agent_call(sinks: list[Sink], n: int, *, content: bool = False) -> float:
    """Emit ``n`` agent calls' events from a task on a running loop, as the runtime does
    (``CALLS_PER_ITERATION`` calls' events per loop iteration), and return process CPU µs
    per agent call, sinks closed (JSONL written, spans exported). The events are built
    before the clock starts: what is measured is the sinks' work and the stream's."""

    async def emit_all() -> float:
        stream = EventStream(sinks)
        run_id, trace_id, run_span = new_id(), new_id(16), new_id()
        calls = [agent_call_events(run_id, trace_id, run_span, i, content) for i in range(n)]
        gc.collect()
        start = time.process_time()
        stream.emit(Event("run.start", run_id, trace_id, run_span, None, {"workflow": "bench", "run_id": run_id}))
        for i, events in enumerate(calls):
            for event in events:
                stream.emit(event)
            if i % CALLS_PER_ITERATION == CALLS_PER_ITERATION - 1:
                await asyncio.sleep(0)  # the end of the loop iteration: the stream works its queue through
        stream.emit(Event("run.end", run_id, trace_id, run_span, None, {"status": "succeeded"}))
        stream.close()  # flushes the JSONL file and the span processor: their work is counted
        return (time.process_time() - start) / n * 1e6

    return asyncio.run(emit_all())


FULL_CALL_SPANS = 2  # a one-turn agent call: invoke_agent + chat


CONFIGS = {  # name -> (AllSinks method and its argument, whether spans are exported)
    "no sinks": (None, False),
    "events, a sink that does nothing": ("noop", False),
    "jsonl": ("jsonl", False),
    "otel, OTLP export": ("otel", True),
    "otel, stock OTLP exporter": ("otel:stock-otlp", True),
    "prometheus": ("prometheus", False),
}

# --floors: all sinks on with one part of their work taken out (in the child process only),
# to show what that part costs inside the complete call. Diagnostics, not settings a user has.
FLOORS = {
    "diag: no redaction or capture": ("build+raw", True),
    "diag: spans built, not encoded": ("build+unencoded", True),
    "diag: no span building": ("build+nospans", True),
    "diag: neither spans nor redaction": ("build+nospans+raw", True),
}


def take_out(part: str, hits: dict[str, int]) -> None:
    """Patch one part of the sinks' work out of this process (``--floors``).

    ``raw``: sinks get each event's data as emitted (no capture mode, no redaction).
    ``unencoded``: spans are built as usual, then one constant pre-encoded span is queued
    for each instead of its encoding. ``nospans``: the OpenTelemetry sink skips the agent
    and model events and queues that constant span at each end event. In every case each
    span still reaches the collector (the count is checked), so the export path is paid.
    Each replacement counts its calls in ``hits[part]``: a patch that the sinks no longer
    reach would measure nothing, so ``one_run`` fails when a count stays 0.
    """
    from opentelemetry.trace import SpanKind

    from baton.observe import capture, otel, otlp
    from baton.observe import events as ev

    constant = otlp.encode_span_fields(1, 1, None, None, "diagnostic", SpanKind.INTERNAL, 1, 2, {"a": "b"},
                                       None, None)
    hits[part] = 0

    def hit() -> None:
        hits[part] += 1

    if part == "raw":
        def as_emitted(data: dict[str, Any], mode: Capture) -> dict[str, Any]:
            hit()
            return data

        capture.apply_capture = as_emitted  # type: ignore[assignment]
    elif part == "unencoded":
        def not_encoded(*args: Any, **kwargs: Any) -> bytes:
            hit()
            return constant

        otel.encode_span_fields = not_encoded  # type: ignore[assignment]
    elif part == "nospans":
        process = otel.OTelSink.process
        starts, ends = {ev.AGENT_START, ev.MODEL_REQUEST}, {ev.AGENT_END, ev.MODEL_RESPONSE}

        def without_spans(self: Any, event: Event) -> None:
            direct = self._fast._direct if self._fast is not None else None
            if direct is None or event.kind not in starts | ends:
                process(self, event)
            elif event.kind in ends:
                hit()
                direct.add(constant)

        otel.OTelSink.process = without_spans  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown part to take out: {part}")


def full_agent_call(collector: Collector, capture: Capture, calls: int, concurrency: int, rounds: int,
                    breakdown: bool, floors: bool = False, payload: str = "small") -> dict[str, list[float]]:
    """CPU ms per complete agent call per sink configuration ("no sinks" first), one sample per round.

    Each run is a fresh process (``--run``): a process with sinks off imports and keeps
    none of their code or data, and no run inherits the heap another one left. Within a
    round the configurations run back to back, in reverse order every other round, so
    that each sample can be compared with the same round's "no sinks".
    """
    from _harness import FakeServerProcess

    configs = {name: spec for name, spec in CONFIGS.items() if breakdown or name == "no sinks"}
    configs[ALL_ON] = ("build", True)
    if floors:
        configs.update(FLOORS)
    with tempfile.TemporaryDirectory() as tmp:
        server_args: list[str] = []
        if payload == "large":
            script = Path(tmp) / "reply.json"
            script.write_bytes(orjson.dumps({"rules": [{"text": LARGE_REPLY}]}))
            server_args = ["--script", str(script)]
        with FakeServerProcess(*server_args) as url:
            if payload == "large":
                check_large_reply(url)
            return _rounds(url, collector, configs, capture, calls, concurrency, rounds, payload)


def check_large_reply(url: str) -> None:
    """One request at the ``--payload large`` sizes, straight to the fake API: the answer must be
    ``LARGE_REPLY``, else the runs would measure the default one-word reply under the large label."""
    body = {"model": MODEL, "max_tokens": 1024, "system": LARGE_SYSTEM,
            "messages": [{"role": "user", "content": LARGE_PROMPT}]}
    request = urllib.request.Request(url + "/v1/messages", data=orjson.dumps(body), method="POST", headers={
        "content-type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = "".join(block.get("text", "") for block in orjson.loads(response.read())["content"])
    if text != LARGE_REPLY:
        raise RuntimeError(f"--payload large: the fake API answered {text[:60]!r}, not the large reply")


def _rounds(url: str, collector: Collector, configs: dict[str, tuple[str | None, bool]], capture: Capture,
            calls: int, concurrency: int, rounds: int, payload: str) -> dict[str, list[float]]:
    """``full_agent_call``'s measured runs against the fake API at ``url``."""
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(rounds):  # alternate, so drift on a shared machine hits every variant alike
        order = list(configs.items())
        for name, (sinks, traced) in order if round_ % 2 == 0 else reversed(order):
            before = collector.spans()
            command = [sys.executable, __file__, "--run", sinks or "none", "--server", url,
                       "--collector-url", collector.url, "--calls", str(calls),
                       "--concurrency", str(concurrency), "--capture", capture, "--payload", payload]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{name}: the benchmark run failed:\n{done.stderr}")
            samples[name].append(float(done.stdout.split()[-1]))
            if traced:  # run_cpu_ms: one warm-up run of `concurrency` calls, then the measured run
                expected = (concurrency + calls) * FULL_CALL_SPANS + 2
                got = collector.spans() - before
                if got != expected:
                    raise RuntimeError(f"{name}: the collector received {got} spans, expected {expected}")
    return samples


def one_run(sinks: str, server: str, collector_url: str, calls: int, concurrency: int, capture: Capture,
            payload: str = "small") -> None:
    """The child of ``full_agent_call``: warm up, measure one run, print CPU ms per call."""
    from bench_agent_call import run_cpu_ms

    sinks, *parts = sinks.split("+")
    hits: dict[str, int] = {}
    for part in parts:
        take_out(part, hits)
    with tempfile.TemporaryDirectory() as tmp:
        all_sinks = AllSinks(tmp, collector_url, capture)
        method, _, exporter = sinks.partition(":")
        build: Callable[[], list[Sink]] = list if method == "none" else getattr(all_sinks, method)
        if exporter:
            build = lambda: all_sinks.otel(exporter)  # noqa: E731
        try:
            cpu_ms = asyncio.run(run_cpu_ms(server, calls, concurrency, build, **payload_call(payload)))
        finally:
            all_sinks.close()
    missed = [part for part, count in hits.items() if count == 0]
    if missed:
        raise RuntimeError(f"--floors: the sinks never reached the patched {', '.join(missed)}: "
                           "take_out() no longer matches the code it patches")
    print(cpu_ms)


ALL_ON = "all on (JSONL+OTel+Prom)"

# --payload large: the sizes of a working agent call instead of benchmark 2's one-word
# exchange (about 2 KB of system prompt, a 0.6 KB task, a 1.4 KB answer), to show whether
# the ratio is an artefact of a tiny call. The same one-turn call, the same 4 events.
LARGE_SYSTEM = "You are a careful market analyst. Cite sources, keep numbers exact, prefer short paragraphs. " * 21
LARGE_PROMPT = "Summarise the attached notes on solid-state battery suppliers and their 2026 capacity plans. " * 6
LARGE_REPLY = "Supplier A plans 12 GWh by 2026, up from 4 GWh; Supplier B delays its pilot line to Q3. " * 16


def payload_call(payload: str) -> dict[str, Any]:
    """``run_cpu_ms`` keyword arguments for a payload size (none: benchmark 2's own call)."""
    if payload == "small":
        return {}
    import baton

    return {"call_agent": baton.Agent("analyst", system=LARGE_SYSTEM, model=MODEL, max_tokens=1024),
            "prompt": LARGE_PROMPT}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="agent calls per configuration (events only)")
    parser.add_argument("--capture", default="metadata", choices=["none", "metadata", "full"])
    parser.add_argument("--content", action="store_true",
                        help="events carry prompts/outputs (as when content capture is on)")
    parser.add_argument("--calls", type=int, default=2000, help="complete agent calls per measured run")
    parser.add_argument("--concurrency", type=int, default=1000, help="agent calls in flight")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of measured runs (medians reported)")
    parser.add_argument("--skip-events", action="store_true", help="skip the events-only part")
    parser.add_argument("--breakdown", action="store_true",
                        help="full call: also each sink alone, and OTel through the stock OTLP exporter")
    parser.add_argument("--floors", action="store_true",
                        help="full call: also all on with redaction, span encoding or span building taken out")
    parser.add_argument("--payload", default="small", choices=["small", "large"],
                        help="full call: benchmark 2's one-word exchange, or working sizes (2 KB system prompt, "
                             "0.6 KB task, 1.4 KB answer)")
    parser.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--run", help=argparse.SUPPRESS)  # a child: one measured run with these sinks
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--collector-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collector:
        serve_collector()
        return
    if args.run:
        one_run(args.run, args.server, args.collector_url, args.calls, args.concurrency, args.capture, args.payload)
        return
    capture: Capture = args.capture
    with tempfile.TemporaryDirectory() as tmp, Collector() as collector:
        if not args.skip_events:
            events_only(tmp, collector, args, capture)
        full = full_agent_call(collector, capture, args.calls, args.concurrency, args.rounds, args.breakdown,
                               args.floors, args.payload)
    report_full_call(full, args.calls, args.concurrency, capture, args.payload)


def report_full_call(full: dict[str, list[float]], calls: int, concurrency: int, capture: str,
                     payload: str = "small") -> None:
    """Print each configuration's median and its extra CPU over "no sinks" of the same round.

    The verdict uses the median of the per-round ratios: GC pauses and a shared machine move
    whole runs by ±15 % here, and a ratio taken within one round cancels most of that drift.
    """
    off = full["no sinks"]
    rounds = len(off)
    print(f"\ncomplete agent call (ctx.call, one turn, 4 events, real sockets), {calls} calls at "
          f"concurrency {concurrency}, capture={capture}, payload={payload}, {rounds} rounds (configurations back to back)")
    print(f"  {'':<28} {'median ms/call':>14}   extra over no sinks: median of rounds [lowest, highest]")
    for name, values in full.items():
        line = f"  {name:<28} {statistics.median(values):14.3f}"
        if name != "no sinks":
            extras = sorted((on - base) / base for on, base in zip(values, off, strict=True))
            line += (f"   +{statistics.median(extras) * 100:.1f}%  [{extras[0] * 100:+.0f}%, {extras[-1] * 100:+.0f}%]"
                     f"  (+{(statistics.median(values) - statistics.median(off)) * 1000:.0f} us)")
        print(line)
    extra = statistics.median((on - base) / base for on, base in zip(full[ALL_ON], off, strict=True))
    print(f"\nSUMMARY observe: all sinks on add {extra * 100:.1f}% CPU per agent call "
          f"(median of {rounds} paired rounds; target <= {TARGET_EXTRA * 100:.0f}%: "
          f"{'OK' if extra <= TARGET_EXTRA else 'MISSED'})")


def events_only(tmp: str, collector: Collector, args: argparse.Namespace, capture: Capture) -> None:
    sinks = AllSinks(tmp, collector.url, capture)
    configs: list[tuple[str, Callable[[], list[Sink]]]] = [
        ("no sinks", list),
        ("a sink that does nothing", sinks.noop),
        ("jsonl", sinks.jsonl),
        ("otel, no export", lambda: sinks.otel("none")),
        ("otel, OTLP export", sinks.otel),
        ("otel, stock OTLP exporter", lambda: sinks.otel("stock-otlp")),
        ("prometheus", sinks.prometheus),
        ("all on", sinks.build),
    ]
    try:
        cpu_us_per_agent_call(sinks.build(), 200, content=args.content)  # warm caches, imports, connections
        results = {name: cpu_us_per_agent_call(build(), args.n, content=args.content) for name, build in configs}
    finally:
        sinks.close()
    print(f"sink work per agent call (8 events, 4 spans, built beforehand; {CALLS_PER_ITERATION} calls per loop "
          f"iteration), N={args.n}, capture={capture}, content={'yes' if args.content else 'no'}")
    base = results["no sinks"]
    for name, us in results.items():
        extra = "" if name == "no sinks" else f"   (+{us - base:.1f} us, {(us - base) / 8:.1f} us/event)"
        print(f"  {name:<28} {us:8.1f} us{extra}")


if __name__ == "__main__":
    main()
