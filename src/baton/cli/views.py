"""Text and JSON views of stored runs: ``baton show``, ``baton runs``, ``baton stats``."""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from typing import Any

from baton.masking import printable
from baton.stores.base import RunRecord, StepRecord, Transition


def _natural(key: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _parent(key: str, keys: set[str]) -> str | None:
    """The nearest enclosing step: strip '/...' segments until a recorded key is found."""
    parts = key.split("/")
    for i in range(len(parts) - 1, 0, -1):
        candidate = "/".join(parts[:i])
        if candidate in keys:
            return candidate
    return None


def step_tree(steps: list[StepRecord]) -> list[dict[str, Any]]:
    """Steps nested by key: an agent call holds its model turns and tool calls."""
    keys = {s.key for s in steps}
    nodes = {s.key: {**_step_json(s), "children": []} for s in steps}
    roots: list[dict[str, Any]] = []
    for s in sorted(steps, key=lambda s: (s.started_at, _natural(s.key))):
        parent = _parent(s.key, keys)
        (nodes[parent]["children"] if parent else roots).append(nodes[s.key])
    return roots


def _step_json(s: StepRecord) -> dict[str, Any]:
    d: dict[str, Any] = {
        "key": s.key, "kind": s.kind, "name": s.name, "status": s.status,
        "duration_s": round(s.ended_at - s.started_at, 3) if s.ended_at else None,
        "usage": s.usage or {}, "cost_usd": round(s.cost_usd, 6), "retries": max(0, s.attempts - 1),
    }
    for k in ("prompt_version", "model", "cache_hit", "stop_reason", "forked_from", "edited"):
        if k in s.meta:
            d[k] = s.meta[k]
    if s.error:
        d["error"] = s.error
    return d


def show_json(run: RunRecord, steps: list[StepRecord], transitions: list[Transition]) -> dict[str, Any]:
    d = run.to_dict()
    d.pop("owner", None)
    d["warnings"] = list(run.metadata.get("warnings") or [])
    if run.metadata.get("fork"):  # {"parent", "at", "edited"}: a run made by baton fork
        d["fork"] = run.metadata["fork"]
    d["steps"] = step_tree(steps)
    d["transitions"] = [{"status": t.status, "at": t.at, "detail": t.detail} for t in transitions]
    d["prompt_versions"] = sorted({s.meta["prompt_version"] for s in steps if "prompt_version" in s.meta})
    d["awaiting"] = [s.key for s in steps if s.kind == "approval" and s.status == "started"
                     and not any(o.key == s.key and o.status == "completed" for o in steps)]
    return d


def _fmt_tokens(usage: dict[str, int]) -> str:
    if not usage:
        return ""
    parts = [f"{usage.get('input_tokens', 0)}in", f"{usage.get('output_tokens', 0)}out"]
    if usage.get("cache_read_input_tokens"):
        parts.append(f"{usage['cache_read_input_tokens']}cached")
    if usage.get("cache_creation_input_tokens"):
        parts.append(f"{usage['cache_creation_input_tokens']}cache-write")
    return " ".join(parts)


def show_text(run: RunRecord, steps: list[StepRecord], transitions: list[Transition]) -> str:
    u = run.usage
    lines = [
        f"run {run.run_id}  {run.status}  workflow {run.workflow}",
        f"  created {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run.created_at))}"
        f"  model calls {run.model_calls}  tokens {_fmt_tokens(u) or '0'}  cost ${run.cost_usd:.4f}",
    ]
    fork = run.metadata.get("fork")
    if isinstance(fork, dict):
        lines.append(f"  forked from run {fork.get('parent')} at step {fork.get('at')}"
                     f" ({'edited result' if fork.get('edited') else 'executed again'})")
    if run.error:
        lines.append(f"  error: {run.error.get('type')}: {run.error.get('message')}")
    for warning in run.metadata.get("warnings") or []:
        lines.append(f"  warning: {warning.get('message')}")

    def walk(nodes: list[dict[str, Any]], depth: int) -> None:
        for n in nodes:
            bits = [f"{'  ' * depth}{n['key']:<10}", f"{n['kind']:<8}", f"{n['name']:<18}", f"{n['status']:<9}"]
            if n["duration_s"] is not None:
                bits.append(f"{n['duration_s']:.2f}s")
            if n["usage"]:
                bits.append(_fmt_tokens(n["usage"]))
            if n["cost_usd"]:
                bits.append(f"${n['cost_usd']:.4f}")
            if n["retries"]:
                bits.append(f"retries={n['retries']}")
            if n.get("prompt_version"):
                bits.append(f"v={n['prompt_version']}")
            if n.get("stop_reason"):
                bits.append(f"stop={n['stop_reason']}")
            if n.get("cache_hit"):
                bits.append("cache-hit")
            if n.get("edited"):
                bits.append("edited")
            elif n.get("forked_from"):
                bits.append("from-parent")
            lines.append("  " + "  ".join(bits))
            walk(n["children"], depth + 1)

    lines.append("  steps:")
    walk(step_tree(steps), 1)
    awaiting = show_json(run, steps, transitions)["awaiting"]
    if awaiting:
        lines.append(f"  awaiting approval: {', '.join(awaiting)}  (baton approve {run.run_id} STEP --approve)")
    lines.append("  history: " + " -> ".join(t.status for t in transitions))
    return "\n".join(lines)


def runs_text(runs: list[RunRecord]) -> str:
    if not runs:
        return "no runs"
    lines = [f"{'RUN ID':<18} {'STATUS':<18} {'CALLS':>5} {'COST':>9}  CREATED              WORKFLOW"]
    for r in runs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        # Stored text is shown escaped: a row cannot drive the terminal or forge a line.
        run_id, status, workflow = (printable(str(v), keep_newlines=False) for v in (r.run_id, r.status, r.workflow))
        lines.append(f"{run_id:<18} {status:<18} {r.model_calls:>5} {r.cost_usd:>9.4f}  {created}  {workflow}")
    return "\n".join(lines)


def stats_json(runs: list[RunRecord], steps_by_run: dict[str, list[StepRecord]]) -> dict[str, Any]:
    """Trace analysis over many runs: failure rate, slow agents, cost by model/agent/prompt version.

    Agent calls and failures come from the agent steps themselves (a failed agent call is
    journaled as ``failed`` with its prompt version), so a failure is counted against the
    agent and version that failed, never against every agent that ran in a failed run.
    """
    by_status: dict[str, int] = defaultdict(int)
    for r in runs:
        by_status[r.status] += 1
    agents: dict[str, dict[str, Any]] = {}
    model_cost: dict[str, float] = defaultdict(float)
    model_calls: dict[str, int] = defaultdict(int)
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    for run_id, steps in steps_by_run.items():
        for s in steps:
            if s.kind == "model":
                model = str(s.meta.get("model", "?"))
                model_cost[model] += s.cost_usd
                model_calls[model] += 1
                _agent_row(agents, s.name)["cost_usd"] += s.cost_usd
                _version_row(versions, s.name, s.meta)["model_calls"] += 1
            elif s.kind == "agent" and s.status in ("completed", "failed"):
                failed = s.status == "failed"
                row = _agent_row(agents, s.name)
                row["durations"].append(max(0.0, s.ended_at - s.started_at))
                row["failures"] += failed
                v = _version_row(versions, s.name, s.meta)
                v["calls"] += 1
                v["failures"] += failed
                v["runs"].add(run_id)
                if failed:
                    v["failed_runs"].add(run_id)
    total = len(runs)
    return {
        "runs": total,
        "by_status": dict(by_status),
        "failure_rate": round(by_status.get("failed", 0) / total, 4) if total else 0.0,
        "model_calls": sum(r.model_calls for r in runs),
        "cost_usd": round(sum(r.cost_usd for r in runs), 6),
        "agents": sorted((_agent_json(name, row) for name, row in agents.items() if row["durations"]),
                         key=lambda a: float(a["mean_s"]), reverse=True),
        "cost_by_model": {m: {"calls": model_calls[m], "cost_usd": round(c, 6)} for m, c in model_cost.items()},
        "prompt_versions": [
            {"agent": v["agent"], "prompt_version": v["prompt_version"], "calls": v["calls"],
             "failures": v["failures"], "model_calls": v["model_calls"], "runs": len(v["runs"]),
             "failed_runs": len(v["failed_runs"]),
             "failure_rate": round(v["failures"] / v["calls"], 4) if v["calls"] else 0.0}
            for v in versions.values()
        ],
    }


def _agent_row(agents: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return agents.setdefault(name, {"durations": [], "failures": 0, "cost_usd": 0.0})


def _version_row(versions: dict[tuple[str, str], dict[str, Any]], agent: str,
                 meta: dict[str, Any]) -> dict[str, Any]:
    pv = str(meta.get("prompt_version", "?"))
    return versions.setdefault((agent, pv), {"agent": agent, "prompt_version": pv, "calls": 0, "failures": 0,
                                             "model_calls": 0, "runs": set(), "failed_runs": set()})


def _agent_json(name: str, row: dict[str, Any]) -> dict[str, Any]:
    d = row["durations"]
    return {"agent": name, "calls": len(d), "failures": row["failures"],
            "failure_rate": round(row["failures"] / len(d), 4), "mean_s": round(statistics.fmean(d), 3),
            "max_s": round(max(d), 3), "cost_usd": round(row["cost_usd"], 6)}


def stats_text(stats: dict[str, Any]) -> str:
    lines = [f"runs {stats['runs']}  failure rate {stats['failure_rate']:.1%}  model calls {stats['model_calls']}"
             f"  cost ${stats['cost_usd']:.4f}",
             "  by status: " + ", ".join(f"{k}={v}" for k, v in sorted(stats["by_status"].items()))]
    if stats["agents"]:
        lines.append("  agents (slowest first):")
        for a in stats["agents"]:
            lines.append(f"    {a['agent']:<20} calls {a['calls']:>4}  failed {a['failures']:>4}  mean {a['mean_s']:.2f}s"
                         f"  max {a['max_s']:.2f}s  ${a['cost_usd']:.4f}")
    if stats["cost_by_model"]:
        lines.append("  cost by model:")
        for m, c in stats["cost_by_model"].items():
            lines.append(f"    {m:<28} calls {c['calls']:>5}  ${c['cost_usd']:.4f}")
    if stats["prompt_versions"]:
        lines.append("  prompt versions:")
        for v in sorted(stats["prompt_versions"], key=lambda v: (v["agent"], v["prompt_version"])):
            lines.append(f"    {v['agent']:<20} {v['prompt_version']}  calls {v['calls']:>4}  failed {v['failures']:>4}  "
                         f"failure rate {v['failure_rate']:.1%}  runs {v['runs']:>4}")
    return "\n".join(lines)
