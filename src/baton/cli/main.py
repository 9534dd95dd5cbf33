"""The ``baton`` command.

Exit codes: 0 succeeded; 1 failed; 2 bad usage or invalid workflow/input; 3 stopped by
a budget (resumable); 4 paused awaiting approval; 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baton.api import load_recorded_file
from baton.cli.live import add_fork_parser, add_stream_option, edit_text, stream_sinks
from baton.errors import BatonError, UsageError, WorkflowError
from baton.masking import mask_in, mask_urls, printable
from baton.models.resolve import announce_provider, close_models, provider_and_reason
from baton.observe.events import new_id
from baton.runtime.batch import BatchOptions
from baton.runtime.budget import Limits
from baton.runtime.engine import Engine, decide
from baton.runtime.gcpolicy import tune_gc
from baton.runtime.ids import check_run_id
from baton.runtime.workflows import check_signature
from baton.settings import limit_arg
from baton.stores import using_store

EXIT_BY_STATUS = {"succeeded": 0, "failed": 1, "budget_exceeded": 3, "awaiting_approval": 4, "awaiting_batch": 4,
                  "interrupted": 130, "cancelled": 1}


MAX_INPUT_BYTES = 64 * 1024 * 1024
"""The largest --input-file or stdin input read (a device like /dev/zero never ends)."""


def _out(text: str) -> None:
    """Write to stdout; a reader that went away (``baton runs | head``) ends the output, not the command."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's last flush at exit cannot fail again.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def _print_json(obj: Any) -> None:
    _out(json.dumps(obj, indent=2, default=str) + "\n")


def _err(msg: str) -> None:
    """One message on stderr: URL credentials masked, control characters escaped."""
    with contextlib.suppress(OSError):
        sys.stderr.write(printable(mask_urls(msg.rstrip())) + "\n")


def _report_error(exc: BatonError, as_json: bool) -> int:
    if as_json:
        _print_json({"run_id": None, "status": "error", "output": None, "error": mask_in(exc.to_dict())})
    if isinstance(exc, WorkflowError) and len(exc.problems) > 1:
        _err(f"baton: {len(exc.problems)} problems:")
        for p in exc.problems:
            where = ":".join(str(x) for x in (p.get("file"), p.get("line")) if x is not None)
            _err(f"  {where}: {p.get('field') or '(file)'}: {p.get('message')}")
    else:
        _err(f"baton: error: {exc}")
    return exc.exit_code


# --- sinks -------------------------------------------------------------------------------


class _Sinks:
    """The sinks a CLI run writes to: progress, JSONL, metrics, traces."""

    def __init__(self, args: argparse.Namespace) -> None:
        from baton.observe.redact import register_env_secrets

        register_env_secrets()
        self.sinks: list[Any] = []
        self._server: Any = None
        from baton.observe.redact import check_capture

        capture = check_capture(getattr(args, "capture", "metadata"))
        from baton.observe.progress import RunTally

        self.tally = RunTally()  # for the end-of-run summary
        self.sinks.append(self.tally)
        if not getattr(args, "quiet", False):
            from baton.observe.progress import ProgressSink

            self.sinks.append(ProgressSink(sys.stderr, summary=False))
        if getattr(args, "log_jsonl", None):
            from baton.observe.jsonl import JSONLSink

            self.sinks.append(JSONLSink(args.log_jsonl, capture=capture))
        if getattr(args, "metrics_port", None):
            from baton.observe.metrics import MetricsSink, serve_metrics

            metrics = MetricsSink()
            self.sinks.append(metrics)
            try:
                self._server = serve_metrics(args.metrics_port, metrics.registry)
            except (OSError, OverflowError) as exc:
                raise UsageError(f"cannot serve metrics on port {args.metrics_port}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from exc
            _err(f"baton: metrics on http://127.0.0.1:{args.metrics_port}/metrics")
        if getattr(args, "trace", None):
            from baton.observe.otel import OTelSink, configure_tracing

            provider = configure_tracing(args.trace)
            self.sinks.append(OTelSink(provider, capture=capture))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


# --- commands ----------------------------------------------------------------------------


def _input_text(data: bytes, source: str) -> str:
    """Input is text: UTF-8, no NUL bytes, at most ``MAX_INPUT_BYTES``."""
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{source} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB, the input limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         f"input must be text") from None
    if "\x00" in text:
        raise UsageError(f"{source} contains NUL bytes (a binary file?); input must be text")
    return text


def _read_input(args: argparse.Namespace) -> Any:
    if args.input is not None and args.input_file is not None:
        raise UsageError("give either --input or --input-file, not both")
    if args.input_file is not None:
        try:
            with open(args.input_file, "rb") as f:
                data = f.read(MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read --input-file {args.input_file}: {exc.strerror or exc}") from exc
        return _input_text(data, f"--input-file {args.input_file}")
    if args.input is not None:
        if "\x00" in args.input:
            raise UsageError("--input contains NUL characters; input must be text")
        return args.input
    if not sys.stdin.isatty():
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        if data:
            return _input_text(data, "stdin")
    raise UsageError("no input: pass --input TEXT, --input-file PATH, or pipe text on stdin")


def _provider(args: argparse.Namespace) -> str:
    provider, reason = provider_and_reason(getattr(args, "provider", None))
    if reason == "default" or provider == "local":
        _err(announce_provider(provider, reason))
    return provider


def _finish(result: Any, args: argparse.Namespace, tally: Any = None) -> int:
    for warning in result.warnings:  # on stderr in both modes: --json keeps stdout one object
        _err(f"baton: warning: {warning.get('message')}")
    if args.json:
        _print_json(result.to_json())
    else:
        if result.output is not None:
            out = result.output if isinstance(result.output, str) else json.dumps(result.output, indent=2)
            _out(out.rstrip() + "\n")
        from baton.observe.progress import end_of_run

        u = result.usage
        _err(end_of_run(result.run_id, result.status, result.duration_s, result.cost_usd,
                        u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens,
                        u.output_tokens, tally))
        if result.error:
            _err(f"baton: {result.error.get('type')}: {result.error.get('message')}")
        if result.status in ("budget_exceeded", "interrupted", "awaiting_batch"):
            _err(f"baton: resume with: baton resume {result.run_id}"
                 + (" --budget-usd X" if result.status == "budget_exceeded" else ""))
    return EXIT_BY_STATUS.get(result.status, 1)


def _load_workflow(ref: str) -> Any:
    """A YAML file, or a Python workflow given as ``module:function`` (the caller names it: this is
    the only place a module path is imported, never from a stored run)."""
    from baton.spec import load_workflow_file
    from baton.spec.build import DEFAULT_MAX_MODEL_CALLS

    if Path(ref).suffix in (".yaml", ".yml") or Path(ref).is_file():
        return load_workflow_file(ref), None
    if ":" in ref:
        from baton.spec.build import import_callable

        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())  # last: a file in the current folder never shadows an installed module
        try:
            workflow = import_callable(ref)
        except (ImportError, AttributeError, ValueError) as exc:
            raise UsageError(f"cannot import workflow {ref!r}: {exc}") from exc
        check_signature(workflow, ref)
        # The same ceiling on model calls as a workflow file without limits.max_model_calls.
        return workflow, Limits(max_model_calls=DEFAULT_MAX_MODEL_CALLS)
    raise UsageError(f"workflow {ref!r} is neither a YAML file nor module:function")


def _named_workflow(args: argparse.Namespace) -> Any:
    """The workflow resume/replay were told to use with --workflow, or None (the run's own, if allowed)."""
    ref = getattr(args, "workflow", None)
    return _load_workflow(ref)[0] if ref else None


def _engine(args: argparse.Namespace, sinks: _Sinks) -> Any:
    """The engine for run/resume: provider, store, sinks, result cache, shared rate governor."""
    cache = None
    cache_url = getattr(args, "cache", None) or os.environ.get("BATON_CACHE")
    if cache_url:
        from baton.runtime.cache import open_cache

        cache = open_cache(cache_url)
    governor = None
    rl_url = os.environ.get("BATON_RATE_LIMIT_URL")
    if rl_url:
        from baton.runtime.ratelimit_redis import RedisRateGovernor

        governor = RedisRateGovernor(rl_url)  # limits shared by every process using this Redis

    return Engine(store=args.store, provider=_provider(args), sinks=sinks.sinks, cache=cache,
                  cache_ttl_s=getattr(args, "cache_ttl", None), governor=governor, files=load_recorded_file,
                  batch=BatchOptions(detach=bool(getattr(args, "detach", False))))


def _interrupted(run_id: str, args: argparse.Namespace) -> int:
    """SIGINT/SIGTERM stopped the run (the engine recorded it ``interrupted``): say so, in --json too."""
    if args.json:
        _print_json({"run_id": run_id, "status": "interrupted", "output": None, "error": {
            "type": "Interrupted", "message": "the run was interrupted; resume it with baton resume"}})
    _err(f"baton: run {run_id} interrupted; resume with: baton resume {run_id}")
    return EXIT_BY_STATUS["interrupted"]


async def _cmd_run(args: argparse.Namespace) -> int:
    run_id = check_run_id(args.run_id, source="--run-id") if args.run_id is not None else new_id(8)
    workflow, default_limits = _load_workflow(args.workflow)
    input_value = _read_input(args)
    base = default_limits or workflow.limits
    limits = base.merged(budget_usd=args.budget_usd, budget_tokens=args.budget_tokens)
    if args.engine == "temporal":  # the run executes on Temporal workers (baton worker)
        from baton.temporal.cli import run_on_temporal

        return _finish(await run_on_temporal(args, workflow, input_value, run_id, limits), args)
    sinks = _Sinks(args)
    sinks.sinks.extend(stream_sinks(args))  # --stream
    engine = _engine(args, sinks)
    try:
        result = await engine.run(workflow, input_value, run_id=run_id, limits=limits)
    except (asyncio.CancelledError, KeyboardInterrupt):
        return _interrupted(run_id, args)
    finally:
        sinks.close()
        await _close(engine)
    return _finish(result, args, sinks.tally)


async def _cmd_fork(args: argparse.Namespace) -> int:
    from baton.runtime.fork import fork  # deferred: `baton fork` only

    edit = edit_text(args)
    workflow = _named_workflow(args)
    sinks = _Sinks(args)
    sinks.sinks.extend(stream_sinks(args))
    engine = _engine(args, sinks)
    fork_id = new_id(8)
    try:
        result = await fork(engine, args.run_id, args.at, edit=edit, workflow=workflow, new_run_id=fork_id)
    except (asyncio.CancelledError, KeyboardInterrupt):
        return _interrupted(fork_id, args)
    finally:
        sinks.close()
        await _close(engine)
    return _finish(result, args)


async def _cmd_resume(args: argparse.Namespace) -> int:
    workflow = _named_workflow(args)
    sinks = _Sinks(args)
    sinks.sinks.extend(stream_sinks(args))  # --stream: completed steps replay, only new text prints
    engine = _engine(args, sinks)
    try:
        result = await engine.resume(args.run_id, workflow, force=args.force, budget_usd=args.budget_usd,
                                     budget_tokens=args.budget_tokens)
    except (asyncio.CancelledError, KeyboardInterrupt):
        return _interrupted(args.run_id, args)
    finally:
        sinks.close()
        await _close(engine)
    return _finish(result, args, sinks.tally)


async def _cmd_runs(args: argparse.Namespace) -> int:
    from baton.cli.views import runs_text

    async with using_store(args.store) as store:
        runs = await store.list_runs(args.limit)
    if args.json:
        _print_json([{k: v for k, v in r.to_dict().items() if k not in ("owner", "input", "output")} for r in runs])
    else:
        _out(runs_text(runs) + "\n")
    return 0


async def _cmd_show(args: argparse.Namespace) -> int:
    from baton.cli.views import show_json, show_text
    from baton.observe.redact import redact, redact_text

    async with using_store(args.store) as store:
        run = await store.get_run(args.run_id)
        steps = await store.load_steps(args.run_id)
        transitions = await store.transitions(args.run_id)
    run.error = mask_in(run.error)  # type: ignore[assignment]  # rows written before masking
    if args.json:
        _print_json(redact(show_json(run, steps, transitions)))
    else:
        _out(printable(mask_urls(redact_text(show_text(run, steps, transitions)))) + "\n")  # the journal is raw: display is a sink
    return 0


async def _cmd_stats(args: argparse.Namespace) -> int:
    from baton.cli.views import stats_json, stats_text

    async with using_store(args.store) as store:
        runs = await store.list_runs(args.limit)
        steps = {r.run_id: await store.load_steps(r.run_id) for r in runs}
    stats = stats_json(runs, steps)
    if args.json:
        _print_json(stats)
    else:
        _out(printable(stats_text(stats)) + "\n")
    return 0


async def _cmd_validate(args: argparse.Namespace) -> int:
    from baton.spec import load_workflow_file
    from baton.spec.cost import workflow_bound

    wf = load_workflow_file(args.workflow)
    bound = workflow_bound(wf, args.assume_input_tokens)
    report = {"file": wf.file, "name": wf.name, "pattern": wf.spec["workflow"]["pattern"], "valid": True,
              "agents": sorted(wf.agents), "worst_case": {
                  "model_calls": round(bound.calls), "usd": round(bound.usd, 4), "per_input_item": bound.per_item,
                  "unpriced_models": sorted(bound.unpriced), "assumed_input_tokens_per_call": args.assume_input_tokens},
              "max_model_calls": wf.limits.max_model_calls}
    if args.json:
        _print_json(report)
    else:
        per = " per input item" if bound.per_item else ""
        _out(f"{args.workflow}: valid ({report['pattern']}, {len(wf.agents)} agents)\n"
             f"worst case: {round(bound.calls)} model calls, ${bound.usd:.4f}{per} "
             f"(assuming <= {args.assume_input_tokens} input tokens per call; capped by the file's limits)\n")
        _out(f"run ceiling: {wf.limits.max_model_calls} model calls (limits.max_model_calls)\n")
        if bound.unpriced:
            _out(f"unpriced models (not in the price table): {', '.join(sorted(bound.unpriced))}\n")
    return 0


async def _cmd_approve(args: argparse.Namespace) -> int:
    edit: Any = args.edit
    if edit is not None:
        with contextlib.suppress(ValueError):
            edit = json.loads(edit)
    if args.resume:
        _named_workflow(args)  # a bad --workflow is refused before the decision is written
    from baton.temporal.cli import temporal_run

    temporal = await temporal_run(args)  # a run on Temporal waits for the decision as a signal
    await decide(args.run_id, args.step, approved=not args.reject, edit=edit, by=args.by or os.environ.get("USER"),
                 note=args.note, store=args.store)
    _err(f"baton: recorded {'rejection' if args.reject else 'approval'} of {args.step} for run {args.run_id}")
    if temporal is not None:
        await temporal.approve(args.run_id, args.step, approved=not args.reject, edit=edit,
                               by=args.by or os.environ.get("USER"), note=args.note)
        _err(f"baton: run {args.run_id} continues on its Temporal workers")
        return 0
    if args.resume:
        ns = argparse.Namespace(**vars(args), force=False, budget_usd=None, budget_tokens=None, provider=None,
                                log_jsonl=None, metrics_port=None, trace=None, capture="metadata", quiet=False,
                                cache=None, cache_ttl=None)
        return await _cmd_resume(ns)
    _err(f"baton: continue with: baton resume {args.run_id}")
    return 0


async def _cmd_cancel(args: argparse.Namespace) -> int:
    from baton.temporal.cli import cancel_on_temporal, temporal_run

    temporal = await temporal_run(args)  # a run on Temporal is cancelled there (its workers record it)
    if temporal is not None:
        record = await cancel_on_temporal(temporal, args.run_id)
    else:
        record = await Engine(store=args.store).cancel(args.run_id, force=args.force, reason=args.reason)
    if args.json:
        _print_json({"run_id": record.run_id, "status": record.status})
    else:
        _out(f"run {record.run_id} cancelled\n")
    return 0


async def _cmd_replay(args: argparse.Namespace) -> int:
    result = await Engine(store=args.store, files=load_recorded_file).replay(args.run_id, _named_workflow(args))
    if args.json:
        _print_json({"run_id": args.run_id, "status": "replayed", "diverged": False, "output": result.output})
    else:
        _out(f"run {args.run_id}: replay matches the journal (no model or tool calls made)\n")
    return 0


async def _close(engine: Any) -> None:
    """Release model connections, the result cache and a Redis-shared governor."""
    with contextlib.suppress(Exception):
        await close_models()
    for part in (engine.cache, engine.governor):
        close = getattr(part, "close", None) or getattr(part, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


# --- parser ------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range (1-65535)")
    return port


def _count(low: int, high: int) -> Any:
    """An argparse type: a whole number within [low, high] (a negative --limit would list everything)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low}-{high})")
        return value

    return parse


def _workflow_option(sp: argparse.ArgumentParser, command: str) -> None:
    sp.add_argument("--workflow", metavar="FILE|MODULE:FUNCTION",
                    help=f"the workflow to {command} the run with; needed for a Python workflow or a workflow file "
                         f"that changed since the run started (stored runs never select code to import)")


class _Parser(argparse.ArgumentParser):
    """argparse, with bad usage told in one line (exit 2) instead of the whole usage block."""

    def error(self, message: str) -> Any:
        _err(f"{self.prog}: error: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="baton", description="Run teams of Claude agents: durable, budgeted, observable.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_parsers(sub)
    _add_inspect_parsers(sub)
    _add_control_parsers(sub)
    add_fork_parser(sub, _cmd_fork)  # baton fork RUN_ID --at STEP

    from baton.server import add_serve_parser

    add_serve_parser(sub)
    from baton.server.ui.local import add_ui_parser

    add_ui_parser(sub)  # baton ui [--store URL] [--port N]: the web UI, read-only

    from baton.cli.index import add_parser as add_index_parser

    add_index_parser(sub)  # baton index WF.yaml

    from baton.temporal.cli import add_worker_parser

    add_worker_parser(sub)  # baton worker --temporal HOST:PORT --workflows DIR
    return p


def _store_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--store", help="store URL (default: $BATON_STORE or sqlite:///.baton/baton.db)")
    sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _observe_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--provider", help="anthropic | local | openai (default: $BATON_PROVIDER, then "
                                       "anthropic if ANTHROPIC_API_KEY is set, else local)")
    sp.add_argument("--log-jsonl", metavar="PATH", help="append every event as one JSON line")
    sp.add_argument("--metrics-port", type=_port, metavar="N", help="serve Prometheus metrics while running")
    sp.add_argument("--trace", choices=["console", "otlp"], help="export OpenTelemetry spans")
    sp.add_argument("--capture", choices=["none", "metadata", "full"], default="metadata",
                    help="how much prompt/output content logs and spans keep (default: metadata)")
    sp.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    sp.add_argument("--cache", metavar="URL", help="exact-match result cache: sqlite:///PATH, redis://... "
                                                   "or memory:// (default: $BATON_CACHE, else none)")
    sp.add_argument("--cache-ttl", type=limit_arg("number", exclusive_minimum=0), metavar="S",
                    help="result cache entry lifetime in seconds")
    sp.add_argument("--budget-usd", type=limit_arg("number", minimum=0), metavar="X")
    sp.add_argument("--budget-tokens", type=limit_arg("integer", minimum=1), metavar="N")
    sp.add_argument("--detach", action="store_true", help="batch mode: stop once a Message Batch is submitted "
                                                         "(status awaiting_batch, exit 4); collect with resume")


def _add_run_parsers(sub: Any) -> None:
    """run and resume: the commands that execute a workflow."""
    r = sub.add_parser("run", help="run a workflow file (or a Python workflow as module:function)")
    r.add_argument("workflow")
    r.add_argument("--input")
    r.add_argument("--input-file")
    r.add_argument("--run-id")
    _store_options(r)
    _observe_options(r)
    add_stream_option(r)
    from baton.temporal.cli import add_engine_options

    add_engine_options(r)  # --engine local|temporal, --temporal HOST:PORT
    r.set_defaults(fn=_cmd_run)

    rs = sub.add_parser("resume", help="continue a stopped run from its journal")
    rs.add_argument("run_id")
    rs.add_argument("--force", action="store_true", help="take the run over even if its owner looks alive")
    _workflow_option(rs, "resume")
    _store_options(rs)
    _observe_options(rs)
    add_stream_option(rs)
    rs.set_defaults(fn=_cmd_resume)


def _add_inspect_parsers(sub: Any) -> None:
    """runs, show, stats, validate: read-only views."""
    ls = sub.add_parser("runs", help="list runs")
    ls.add_argument("--limit", type=_count(1, 1_000_000), default=50)
    _store_options(ls)
    ls.set_defaults(fn=_cmd_runs)

    sh = sub.add_parser("show", help="a run's steps: status, durations, tokens, cost, retries, prompt versions")
    sh.add_argument("run_id")
    _store_options(sh)
    sh.set_defaults(fn=_cmd_show)

    st = sub.add_parser("stats", help="trace analysis over many runs")
    st.add_argument("--limit", type=_count(1, 1_000_000), default=500)
    _store_options(st)
    st.set_defaults(fn=_cmd_stats)

    v = sub.add_parser("validate", help="check a workflow file and print its worst-case cost")
    v.add_argument("workflow")
    v.add_argument("--json", action="store_true")
    v.add_argument("--assume-input-tokens", type=_count(0, 10_000_000), default=8000)
    v.set_defaults(fn=_cmd_validate)


def _add_control_parsers(sub: Any) -> None:
    """approve, cancel, replay: acting on a stored run."""
    a = sub.add_parser("approve", help="approve or reject a step awaiting a human decision")
    a.add_argument("run_id")
    a.add_argument("step")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--approve", action="store_true", default=True)
    g.add_argument("--reject", action="store_true")
    a.add_argument("--edit", help="replacement value (JSON or text) passed on to the workflow")
    a.add_argument("--by")
    a.add_argument("--note")
    a.add_argument("--resume", action="store_true", help="resume the run right away")
    _workflow_option(a, "resume")
    _store_options(a)
    from baton.temporal.cli import add_address_option

    add_address_option(a)  # --temporal HOST:PORT: a run on the Temporal engine gets the decision as a signal
    a.set_defaults(fn=_cmd_approve)

    c = sub.add_parser("cancel", help="mark a stopped run cancelled (it will not be resumed)")
    c.add_argument("run_id")
    c.add_argument("--force", action="store_true", help="even if a live process seems to own it")
    c.add_argument("--reason")
    _store_options(c)
    add_address_option(c)
    c.set_defaults(fn=_cmd_cancel)

    rp = sub.add_parser("replay", help="re-execute against the journal only and report divergence")
    rp.add_argument("run_id")
    _workflow_option(rp, "replay")
    _store_options(rp)
    rp.set_defaults(fn=_cmd_replay)


def main(argv: Sequence[str] | None = None) -> int:
    code = _command(argv)
    worker = sys.modules.get("baton.temporal.worker")
    if argv is None and worker is not None and worker.connected():
        # temporalio's client threads can abort the interpreter's finalization (SIGABRT after
        # the work is done: sdk-python#300), so a process that used one ends here, with its code.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _command(argv: Sequence[str] | None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage already; keep its code
        return int(exc.code or 0)
    as_json = bool(getattr(args, "json", False))
    tune_gc()  # this process is baton's: collect less often while many calls or runs are in flight
    try:
        if getattr(args, "run_id", None) is not None and args.command != "run":
            check_run_id(args.run_id)
        code: int = asyncio.run(_main(args))
        return code
    except BatonError as exc:
        return _report_error(exc, as_json)
    except (KeyboardInterrupt, asyncio.CancelledError):
        _err("baton: interrupted")
        return 130
    except BrokenPipeError:
        _out("")  # stdout's reader went away: nothing more to say
        return 0
    except Exception as exc:  # a bug or an unmapped failure: one line (masked), the traceback on request
        if os.environ.get("BATON_DEBUG"):
            raise
        _err(f"baton: internal error: {type(exc).__name__}: {exc} (set BATON_DEBUG=1 for the traceback)")
        return 1


async def _main(args: argparse.Namespace) -> int:
    """The command, with SIGTERM handled like SIGINT: the run stops, is recorded ``interrupted``, exit 130."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if getattr(args, "own_signals", False):  # baton serve shuts down gracefully on SIGTERM by itself
        return int(await args.fn(args))
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signal handlers on this platform
        loop.add_signal_handler(signal.SIGTERM, lambda: task.cancel() if task is not None else None)
    try:
        code: int = await args.fn(args)
        return code
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
