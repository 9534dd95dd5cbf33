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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from baton.errors import BatonError, UsageError, WorkflowError

EXIT_BY_STATUS = {"succeeded": 0, "failed": 1, "budget_exceeded": 3, "awaiting_approval": 4, "interrupted": 130,
                  "cancelled": 1}


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _err(msg: str) -> None:
    sys.stderr.write(msg.rstrip() + "\n")


def _report_error(exc: BatonError, as_json: bool) -> int:
    if as_json:
        _print_json({"run_id": None, "status": "error", "output": None, "error": exc.to_dict()})
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
            self._server = serve_metrics(args.metrics_port, metrics.registry)
            _err(f"baton: metrics on http://127.0.0.1:{args.metrics_port}/metrics")
        if getattr(args, "trace", None):
            from baton.observe.otel import OTelSink, configure_tracing

            provider = configure_tracing(args.trace)
            self.sinks.append(OTelSink(provider, capture=capture))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


# --- commands ----------------------------------------------------------------------------


def _read_input(args: argparse.Namespace) -> Any:
    if args.input is not None and args.input_file is not None:
        raise UsageError("give either --input or --input-file, not both")
    if args.input_file is not None:
        try:
            return Path(args.input_file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read --input-file {args.input_file}: {exc.strerror}") from exc
    if args.input is not None:
        return args.input
    if not sys.stdin.isatty():
        data = sys.stdin.read()
        if data:
            return data
    raise UsageError("no input: pass --input TEXT, --input-file PATH, or pipe text on stdin")


def _provider(args: argparse.Namespace) -> str:
    from baton.models.resolve import announce_provider, provider_and_reason

    provider, reason = provider_and_reason(getattr(args, "provider", None))
    if reason == "default" or provider == "local":
        _err(announce_provider(provider, reason))
    return provider


def _finish(result: Any, args: argparse.Namespace, tally: Any = None) -> int:
    if args.json:
        _print_json(result.to_json())
    else:
        if result.output is not None:
            out = result.output if isinstance(result.output, str) else json.dumps(result.output, indent=2)
            sys.stdout.write(out.rstrip() + "\n")
        from baton.observe.progress import end_of_run

        u = result.usage
        _err(end_of_run(result.run_id, result.status, result.duration_s, result.cost_usd,
                        u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens,
                        u.output_tokens, tally))
        if result.error:
            _err(f"baton: {result.error.get('type')}: {result.error.get('message')}")
        if result.status in ("budget_exceeded", "interrupted"):
            _err(f"baton: resume with: baton resume {result.run_id}"
                 + (" --budget-usd X" if result.status == "budget_exceeded" else ""))
    return EXIT_BY_STATUS.get(result.status, 1)


def _load_workflow(ref: str) -> Any:
    """A YAML file, or a Python workflow given as ``module:function``."""
    from baton.runtime.budget import Limits
    from baton.runtime.engine import load_workflow
    from baton.spec import load_workflow_file

    if Path(ref).suffix in (".yaml", ".yml") or Path(ref).is_file():
        return load_workflow_file(ref), None
    if ":" in ref:
        sys.path.insert(0, os.getcwd())
        try:
            return load_workflow(f"py:{ref}"), Limits()
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"cannot import workflow {ref!r}: {exc}") from exc
    raise UsageError(f"workflow {ref!r} is neither a YAML file nor module:function")


def _engine(args: argparse.Namespace, sinks: _Sinks) -> Any:
    """The engine for run/resume: provider, store, sinks, result cache, shared rate governor."""
    from baton.runtime.engine import Engine

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
                  cache_ttl_s=getattr(args, "cache_ttl", None), governor=governor)


async def _cmd_run(args: argparse.Namespace) -> int:
    workflow, default_limits = _load_workflow(args.workflow)
    input_value = _read_input(args)
    base = default_limits or workflow.limits
    limits = base.merged(budget_usd=args.budget_usd, budget_tokens=args.budget_tokens)
    sinks = _Sinks(args)
    engine = _engine(args, sinks)
    try:
        result = await engine.run(workflow, input_value, run_id=args.run_id, limits=limits)
    finally:
        sinks.close()
        await _close(engine)
    return _finish(result, args, sinks.tally)


async def _cmd_resume(args: argparse.Namespace) -> int:
    sinks = _Sinks(args)
    engine = _engine(args, sinks)
    try:
        result = await engine.resume(args.run_id, force=args.force, budget_usd=args.budget_usd,
                                     budget_tokens=args.budget_tokens)
    finally:
        sinks.close()
        await _close(engine)
    return _finish(result, args, sinks.tally)


async def _open(args: argparse.Namespace) -> Any:
    from baton.stores import open_store

    store = open_store(args.store)
    await store.open()
    return store


async def _cmd_runs(args: argparse.Namespace) -> int:
    from baton.cli.views import runs_text

    store = await _open(args)
    try:
        runs = await store.list_runs(args.limit)
    finally:
        await store.close()
    if args.json:
        _print_json([{k: v for k, v in r.to_dict().items() if k not in ("owner", "input", "output")} for r in runs])
    else:
        print(runs_text(runs))
    return 0


async def _cmd_show(args: argparse.Namespace) -> int:
    from baton.cli.views import show_json, show_text
    from baton.observe.redact import redact

    store = await _open(args)
    try:
        run = await store.get_run(args.run_id)
        steps = await store.load_steps(args.run_id)
        transitions = await store.transitions(args.run_id)
    finally:
        await store.close()
    if args.json:
        _print_json(redact(show_json(run, steps, transitions)))
    else:
        print(show_text(run, steps, transitions))
    return 0


async def _cmd_stats(args: argparse.Namespace) -> int:
    from baton.cli.views import stats_json, stats_text

    store = await _open(args)
    try:
        runs = await store.list_runs(args.limit)
        steps = {r.run_id: await store.load_steps(r.run_id) for r in runs}
    finally:
        await store.close()
    stats = stats_json(runs, steps)
    if args.json:
        _print_json(stats)
    else:
        print(stats_text(stats))
    return 0


async def _cmd_validate(args: argparse.Namespace) -> int:
    from baton.spec import load_workflow_file
    from baton.spec.cost import workflow_bound

    wf = load_workflow_file(args.workflow)
    bound = workflow_bound(wf, args.assume_input_tokens)
    report = {"file": wf.file, "name": wf.name, "pattern": wf.spec["workflow"]["pattern"], "valid": True,
              "agents": sorted(wf.agents), "worst_case": {
                  "model_calls": round(bound.calls), "usd": round(bound.usd, 4), "per_input_item": bound.per_item,
                  "unpriced_models": sorted(bound.unpriced), "assumed_input_tokens_per_call": args.assume_input_tokens}}
    if args.json:
        _print_json(report)
    else:
        per = " per input item" if bound.per_item else ""
        print(f"{args.workflow}: valid ({report['pattern']}, {len(wf.agents)} agents)")
        print(f"worst case: {round(bound.calls)} model calls, ${bound.usd:.4f}{per} "
              f"(assuming <= {args.assume_input_tokens} input tokens per call; capped by the file's limits)")
        if bound.unpriced:
            print(f"unpriced models (not in the price table): {', '.join(sorted(bound.unpriced))}")
    return 0


async def _cmd_approve(args: argparse.Namespace) -> int:
    from baton.runtime.engine import decide

    edit: Any = args.edit
    if edit is not None:
        with contextlib.suppress(ValueError):
            edit = json.loads(edit)
    await decide(args.run_id, args.step, approved=not args.reject, edit=edit, by=args.by or os.environ.get("USER"),
                 note=args.note, store=args.store)
    _err(f"baton: recorded {'rejection' if args.reject else 'approval'} of {args.step} for run {args.run_id}")
    if args.resume:
        ns = argparse.Namespace(**vars(args), force=False, budget_usd=None, budget_tokens=None, provider=None,
                                log_jsonl=None, metrics_port=None, trace=None, capture="metadata", quiet=False,
                                cache=None, cache_ttl=None)
        return await _cmd_resume(ns)
    _err(f"baton: continue with: baton resume {args.run_id}")
    return 0


async def _cmd_cancel(args: argparse.Namespace) -> int:
    from baton.runtime.engine import Engine

    record = await Engine(store=args.store).cancel(args.run_id, force=args.force, reason=args.reason)
    if args.json:
        _print_json({"run_id": record.run_id, "status": record.status})
    else:
        print(f"run {record.run_id} cancelled")
    return 0


async def _cmd_replay(args: argparse.Namespace) -> int:
    from baton.runtime.engine import Engine

    result = await Engine(store=args.store).replay(args.run_id)
    if args.json:
        _print_json({"run_id": args.run_id, "status": "replayed", "diverged": False, "output": result.output})
    else:
        print(f"run {args.run_id}: replay matches the journal (no model or tool calls made)")
    return 0


async def _close(engine: Any) -> None:
    """Release model connections, the result cache and a Redis-shared governor."""
    with contextlib.suppress(Exception):
        from baton.models.resolve import close_models

        await close_models()
    for part in (engine.cache, engine.governor):
        close = getattr(part, "close", None) or getattr(part, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


# --- parser ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baton", description="Run teams of Claude agents: durable, budgeted, observable.")
    sub = p.add_subparsers(dest="command", required=True)

    def store(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", help="store URL (default: $BATON_STORE or sqlite:///.baton/baton.db)")
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    def observe(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--provider", help="anthropic | local | openai (default: $BATON_PROVIDER, then "
                                           "anthropic if ANTHROPIC_API_KEY is set, else local)")
        sp.add_argument("--log-jsonl", metavar="PATH", help="append every event as one JSON line")
        sp.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics while running")
        sp.add_argument("--trace", choices=["console", "otlp"], help="export OpenTelemetry spans")
        sp.add_argument("--capture", choices=["none", "metadata", "full"], default="metadata",
                        help="how much prompt/output content logs and spans keep (default: metadata)")
        sp.add_argument("--quiet", action="store_true", help="no live progress on stderr")
        sp.add_argument("--cache", metavar="URL", help="exact-match result cache: sqlite:///PATH, redis://... "
                                                       "or memory:// (default: $BATON_CACHE, else none)")
        sp.add_argument("--cache-ttl", type=float, metavar="S", help="result cache entry lifetime in seconds")
        sp.add_argument("--budget-usd", type=float, metavar="X")
        sp.add_argument("--budget-tokens", type=int, metavar="N")

    r = sub.add_parser("run", help="run a workflow file (or a Python workflow as module:function)")
    r.add_argument("workflow")
    r.add_argument("--input")
    r.add_argument("--input-file")
    r.add_argument("--run-id")
    store(r)
    observe(r)
    r.set_defaults(fn=_cmd_run)

    rs = sub.add_parser("resume", help="continue a stopped run from its journal")
    rs.add_argument("run_id")
    rs.add_argument("--force", action="store_true", help="take the run over even if its owner looks alive")
    store(rs)
    observe(rs)
    rs.set_defaults(fn=_cmd_resume)

    ls = sub.add_parser("runs", help="list runs")
    ls.add_argument("--limit", type=int, default=50)
    store(ls)
    ls.set_defaults(fn=_cmd_runs)

    sh = sub.add_parser("show", help="a run's steps: status, durations, tokens, cost, retries, prompt versions")
    sh.add_argument("run_id")
    store(sh)
    sh.set_defaults(fn=_cmd_show)

    st = sub.add_parser("stats", help="trace analysis over many runs")
    st.add_argument("--limit", type=int, default=500)
    store(st)
    st.set_defaults(fn=_cmd_stats)

    v = sub.add_parser("validate", help="check a workflow file and print its worst-case cost")
    v.add_argument("workflow")
    v.add_argument("--json", action="store_true")
    v.add_argument("--assume-input-tokens", type=int, default=8000)
    v.set_defaults(fn=_cmd_validate)

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
    store(a)
    a.set_defaults(fn=_cmd_approve)

    c = sub.add_parser("cancel", help="mark a stopped run cancelled (it will not be resumed)")
    c.add_argument("run_id")
    c.add_argument("--force", action="store_true", help="even if a live process seems to own it")
    c.add_argument("--reason")
    store(c)
    c.set_defaults(fn=_cmd_cancel)

    rp = sub.add_parser("replay", help="re-execute against the journal only and report divergence")
    rp.add_argument("run_id")
    store(rp)
    rp.set_defaults(fn=_cmd_replay)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage already; keep its code
        return int(exc.code or 0)
    as_json = bool(getattr(args, "json", False))
    try:
        code: int = asyncio.run(args.fn(args))
        return code
    except BatonError as exc:
        return _report_error(exc, as_json)
    except KeyboardInterrupt:
        _err("baton: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
