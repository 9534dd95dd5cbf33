"""Validate a workflow file and build the same objects the Python API builds.

Validation reports every problem at once, each with file, line and field: schema
violations, references to agents/tools/files that do not exist, nested workflows
that include each other, patterns that could not terminate.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from baton.agent import Agent
from baton.errors import BatonError, UsageError, WorkflowError
from baton.json_schema import check_schema
from baton.memory import memory_tools
from baton.runtime.breaker import BreakerSettings
from baton.runtime.budget import Limits
from baton.runtime.retry import RetryPolicy
from baton.runtime.routing import ModelRouter
from baton.spec.loader import MAX_FILE_BYTES, Located, Path, decode_text, dotted, load_yaml
from baton.spec.schema import SCHEMA
from baton.tools import Tool, tool

Problems = list[dict[str, Any]]

DEFAULT_MAX_MODEL_CALLS = 1000
"""A workflow file's ceiling on model calls per run when ``limits.max_model_calls`` is not set."""


@dataclass
class YamlWorkflow:
    """A workflow built from a file: call it like any workflow, ``await wf(ctx, input)``."""

    name: str
    file: str
    root: Callable[..., Any]
    agents: dict[str, Agent]
    limits: Limits
    rate_limits: dict[str, Any] = field(default_factory=dict)
    retry: Any = None
    breaker: dict[str, Any] | None = None
    """Default circuit-breaker settings of the run (the YAML ``breaker:`` mapping)."""
    spec: dict[str, Any] = field(default_factory=dict)
    nested: dict[str, YamlWorkflow] = field(default_factory=dict)
    sha256: str = ""
    """The file's content hash: a run records it, and resume refuses the file once it changed."""
    mcp: Any = None
    """A ``baton.tools_mcp.McpBinding`` when agents use MCP servers: their tools are listed when a run starts."""
    knowledge: dict[str, Any] = field(default_factory=dict)
    """The workflow's knowledge bases by name (``baton.knowledge.KnowledgeBase``)."""
    router: Any = None
    """The ``routing:`` mapping as a ``baton.runtime.routing.ModelRouter`` (None: the defaults)."""

    @property
    def baton_ref(self) -> str:
        return f"yaml:{self.file}"

    async def __call__(self, ctx: Any, input: Any) -> Any:
        if self.mcp is None:
            return await self.root(ctx, input)
        await self.mcp.open()
        try:
            return await self.root(ctx, input)
        finally:
            await self.mcp.close()


def _schema_problems(doc: Located) -> Problems:
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems: Problems = []
    seen: set[tuple[str, str]] = set()
    for err in validator.iter_errors(doc.data):
        leaf = jsonschema.exceptions.best_match([err, *err.context]) if err.context else err
        path: Path = tuple(leaf.absolute_path)
        message = leaf.message
        if leaf.validator == "additionalProperties" and isinstance(leaf.instance, dict):
            # Name the unknown field itself, with its own line.
            extra = sorted(set(leaf.instance) - set(leaf.schema.get("properties", {})))
            for key in extra:
                item = (dotted((*path, key)), "unknown field")
                if item not in seen:
                    seen.add(item)
                    allowed = ", ".join(sorted(leaf.schema.get("properties", {})))
                    problems.append(doc.error((*path, key), f"unknown field {key!r} (allowed: {allowed})"))
            continue
        item = (dotted(path), message)
        if item not in seen:
            seen.add(item)
            problems.append(doc.error(path, message))
    return problems


def _given(section: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The keys the file sets: what it leaves out takes the Python default, which is stated
    once, on the pattern or tool itself."""
    return {k: section[k] for k in keys if k in section}


def import_callable(spec: str) -> Any:
    """The object ``module:attr`` names. Any failure while importing the module (its own
    exceptions, a syntax error, even ``sys.exit``) is reported as an ImportError."""
    module, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except (ImportError, ValueError):
        raise
    except (Exception, SystemExit) as exc:
        raise ImportError(f"importing module {module!r} failed: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _allow_imports_from(folder: FsPath) -> None:
    """Tools may live beside the workflow file; the folder goes last on ``sys.path`` so a file
    there (json.py, os.py, ...) never shadows a standard or installed module."""
    if str(folder) not in sys.path:
        sys.path.append(str(folder))


class _Builder:
    def __init__(self, doc: Located, stack: tuple[str, ...]) -> None:
        self.doc = doc
        self.data: dict[str, Any] = doc.data
        self.problems: Problems = []
        self.stack = stack
        self.base = FsPath(doc.file).parent
        self.tools: dict[str, Tool] = {}
        self.agents: dict[str, Agent] = {}
        self.nested: dict[str, YamlWorkflow] = {}
        self.mcp_servers: dict[str, Any] = {}
        self.mcp: Any = None
        self.knowledge: dict[str, Any] = {}

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(self.doc.error(path, message))

    # --- tools and agents ---------------------------------------------------------

    def build_tools(self) -> None:
        _allow_imports_from(self.base)
        for name, cfg in (self.data.get("tools") or {}).items():
            if "mcp" in cfg:
                from baton.tools_mcp import McpServer

                self.mcp_servers[name] = McpServer.from_config(name, {**cfg, **cfg["mcp"]}, cwd=str(self.base))
                continue
            try:
                fn = import_callable(cfg["python"])
            except (ImportError, AttributeError, ValueError) as exc:
                self.problem(("tools", name, "python"), f"cannot import {cfg['python']!r}: {exc}")
                continue
            if isinstance(fn, Tool):
                self.tools[name] = fn
                continue
            try:
                self.tools[name] = tool(fn, name=name, **_given(cfg, "description", "timeout_s", "idempotent",
                                                                 "retryable", "max_result_chars"))
            except Exception as exc:
                self.problem(("tools", name, "python"), f"cannot build a tool from {cfg['python']!r}: {exc}")

    def build_agents(self) -> None:
        defaults = dict(self.data.get("defaults") or {})
        for name, cfg in (self.data.get("agents") or {}).items():
            merged = {**defaults, **cfg}
            tools = []
            mcp_refs: list[tuple[str, str | None]] = []
            for i, tname in enumerate(merged.pop("tools", []) or []):
                server, _, remote = tname.partition(".")
                if tname in self.tools:
                    tools.append(self.tools[tname])
                elif server in self.mcp_servers:
                    mcp_refs.append((server, remote or None))
                elif tname not in (self.data.get("tools") or {}):
                    self.problem(("agents", name, "tools", i), f"agent {name!r} uses unknown tool {tname!r}")
            for i, kb in enumerate(merged.pop("knowledge", []) or []):
                if kb in self.knowledge:
                    tools.append(self.knowledge[kb].search_tool())
                else:
                    self.problem(("agents", name, "knowledge", i), f"agent {name!r} uses unknown knowledge base {kb!r}")
            memory = merged.pop("memory", None)
            if memory is not None:
                tools.extend(memory_tools(memory))
            retry = merged.pop("retry", None)
            try:
                if "output" in merged:
                    bad = check_schema(merged["output"])
                    if bad:
                        self.problem(("agents", name, "output"), f"invalid JSON Schema: {bad[0]}")
                        continue
                self.agents[name] = Agent(name=name, tools=tools,
                                          retry=RetryPolicy.from_dict(retry) if retry else None, **merged)
                if mcp_refs:
                    from baton.tools_mcp import McpBinding

                    self.mcp = self.mcp or McpBinding(self.mcp_servers)
                    self.mcp.add(self.agents[name], mcp_refs)
            except WorkflowError as exc:
                self.problem(("agents", name, "retry"), str(exc))
            except Exception as exc:
                self.problem(("agents", name), str(exc))

    def build_knowledge(self) -> None:
        if not self.data.get("knowledge"):
            return
        from baton.knowledge import KnowledgeBase

        for name, cfg in self.data["knowledge"].items():
            try:
                self.knowledge[name] = KnowledgeBase.from_config(name, cfg, base_dir=str(self.base))
            except BatonError as exc:
                self.problem(("knowledge", name), str(exc))

    # --- references ------------------------------------------------------------------

    def agent(self, name: Any, path: Path) -> Agent | None:
        if not isinstance(name, str):
            return None
        if name not in self.agents:
            if name not in (self.data.get("agents") or {}):
                known = ", ".join(sorted(self.data.get("agents") or {})) or "none defined"
                self.problem(path, f"unknown agent {name!r} (agents: {known})")
            return None
        return self.agents[name]

    def ref(self, value: Any, path: Path) -> Any:
        """An agent name or {workflow: FILE} -> Agent or nested YamlWorkflow."""
        if isinstance(value, dict) and "workflow" in value:
            return self.workflow_file(value["workflow"], (*path, "workflow"))
        if isinstance(value, dict) and "agent" in value:
            return self.agent(value["agent"], (*path, "agent"))
        return self.agent(value, path)

    def workflow_file(self, rel: str, path: Path) -> YamlWorkflow | None:
        target = (self.base / rel).resolve()
        if str(target) in self.stack:
            chain = " -> ".join([*self.stack, str(target)])
            self.problem(path, f"nested workflows include each other: {chain}")
            return None
        if not target.is_file():
            self.problem(path, f"nested workflow file {rel!r} not found (looked in {target.parent})")
            return None
        try:
            wf = _build_file(target, (*self.stack, str(target)))
        except WorkflowError as exc:
            self.problems.extend(exc.problems)
            return None
        self.nested[str(target)] = wf
        return wf

    # --- patterns ----------------------------------------------------------------------

    def pattern(self) -> Callable[..., Any] | None:
        w = self.data["workflow"]
        p: Path = ("workflow",)
        kind = w["pattern"]
        build = getattr(self, f"_p_{kind}")
        try:
            result: Callable[..., Any] | None = build(w, p)
        except (BatonError, ValueError, TypeError) as exc:
            # A pattern refusing its arguments matters only if nothing upstream was reported.
            if not self.problems:
                self.problem(p, str(exc))
            return None
        return result

    def _p_agent(self, w: dict[str, Any], p: Path) -> Any:
        target = self.ref(w["agent"], (*p, "agent"))
        if isinstance(target, Agent):
            agent = target

            async def single(ctx: Any, input: Any) -> Any:
                return (await ctx.call(agent, input)).output

            single.__name__ = agent.name
            return single
        return target

    def _gate(self, name: str | None, path: Path) -> Any:
        if name is None:
            return None
        from baton.patterns.gates import Gate

        agent = self.agent(name, path)
        return Gate(agent, name=name) if agent else None

    def _p_pipeline(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.pipeline import Pipeline, Stage

        stages: list[Any] = []
        for i, s in enumerate(w["stages"]):
            sp = (*p, "stages", i)
            if isinstance(s, dict) and ("gate" in s or "name" in s):
                target = self.ref({k: v for k, v in s.items() if k in ("agent", "workflow")}, sp)
                stages.append(Stage(target, gate=self._gate(s.get("gate"), (*sp, "gate")), name=s.get("name")))
            else:
                stages.append(self.ref(s, sp))
        return Pipeline(stages, name=self.data["name"])

    def _p_orchestrator(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.orchestrator import Orchestrator

        planner = self.agent(w["planner"], (*p, "planner"))
        workers = {}
        for i, ref in enumerate(w["workers"]):
            target = self.ref(ref, (*p, "workers", i))
            if target is not None:
                workers[ref if isinstance(ref, str) else target.name] = target
        synth = self.agent(w.get("synthesizer"), (*p, "synthesizer")) if w.get("synthesizer") else None
        if planner is None or len(workers) != len(w["workers"]):
            return None
        compress = None
        if "compress_context" in w:
            from baton.patterns.compress import SUMMARIZER, Compressor

            cc = w["compress_context"]
            agent = self.agent(cc["agent"], (*p, "compress_context", "agent")) if "agent" in cc else SUMMARIZER
            if agent is None:
                return None
            compress = Compressor(summarizer=agent, **_given(cc, "over_chars"))
        return Orchestrator(planner, workers, synth, compress=compress, name=self.data["name"],
                            **_given(w, "max_subtasks", "max_replans", "concurrency", "repair_plan", "min_subtasks"))

    def _p_fan_out(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.fan_out import FanOut

        if ("agents" in w) == ("each" in w):
            self.problem(p, "fan_out needs exactly one of 'agents' (same task to each) or 'each' (one per item)")
            return None
        agg = self.agent(w["aggregator"], (*p, "aggregator")) if w.get("aggregator") else None
        if "agents" in w:
            agents = [self.ref(a, (*p, "agents", i)) for i, a in enumerate(w["agents"])]
            return FanOut(agents=agents, aggregator=agg, name=self.data["name"], **_given(w, "policy", "batch"))
        each = self.ref(w["each"]["agent"], (*p, "each", "agent"))
        return FanOut(each=each, aggregator=agg, name=self.data["name"], **_given(w["each"], "over"),
                      **_given(w, "policy", "max_items", "batch"))

    def _p_router(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.router import Router

        classifier = self.agent(w["classifier"], (*p, "classifier"))
        routes = {k: self.ref(v, (*p, "routes", k)) for k, v in w["routes"].items()}
        fallback = self.ref(w["fallback"], (*p, "fallback")) if "fallback" in w else None
        return Router(classifier, routes, fallback, name=self.data["name"]) if classifier else None

    def _p_consensus(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.consensus import Consensus

        if ("judge" in w) == ("vote" in w):
            self.problem(p, "consensus needs exactly one of 'judge: AGENT' or 'vote: majority|weighted'")
            return None
        voters = [self.ref(v, (*p, "voters", i)) for i, v in enumerate(w["voters"])]
        for name in w.get("weights") or {}:
            if name not in [v if isinstance(v, str) else None for v in w["voters"]]:
                self.problem((*p, "weights", name), f"weight for {name!r}, which is not a voter")
        judge = self.agent(w["judge"], (*p, "judge")) if "judge" in w else None
        return Consensus(voters, judge=judge, name=self.data["name"], **_given(w, "vote", "weights", "shuffle"))

    def _p_refine(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.refine import Refine

        drafter = self.agent(w["drafter"], (*p, "drafter"))
        critics = [self.agent(c, (*p, "critics", i)) for i, c in enumerate(w["critics"])]
        reviser = self.agent(w["reviser"], (*p, "reviser")) if "reviser" in w else None
        if drafter is None or any(c is None for c in critics):
            return None
        return Refine(drafter, [c for c in critics if c is not None], reviser=reviser, name=self.data["name"],
                      **_given(w, "max_rounds", "require_approval"))

    def _p_bus(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.bus import Bus

        agents = {name: self.agent(name, (*p, "subscriptions", name)) for name in w["subscriptions"]}
        start = w["start"]
        if start.get("to") is not None and start["to"] not in w["subscriptions"]:
            self.problem((*p, "start", "to"), f"start.to {start['to']!r} has no subscription entry")
        subscribed = {t for types in w["subscriptions"].values() for t in types}
        if start["type"] not in subscribed:
            self.problem((*p, "start", "type"), f"no agent subscribes to the start type {start['type']!r}")
        if any(a is None for a in agents.values()):
            return None
        return Bus({k: a for k, a in agents.items() if a is not None}, w["subscriptions"], start=start,
                   name=self.data["name"], **_given(w, "terminal", "max_messages"))

    def _p_handoffs(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.handoff import Handoffs

        agents = {n: self.agent(n, (*p, "agents", i)) for i, n in enumerate(w["agents"])}
        if w["start"] not in agents:
            self.problem((*p, "start"), f"start agent {w['start']!r} is not in agents")
        if any(a is None for a in agents.values()):
            return None
        return Handoffs({k: a for k, a in agents.items() if a is not None}, w["start"], name=self.data["name"],
                        **_given(w, "max_handoffs"))

    def _p_fallback(self, w: dict[str, Any], p: Path) -> Any:
        from baton.patterns.gates import FallbackChain

        chain = [self.ref(t, (*p, "chain", i)) for i, t in enumerate(w["chain"])]
        return FallbackChain(chain, gate=self._gate(w.get("gate"), (*p, "gate")), name=self.data["name"])


def _summary(problems: Problems) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0]['message']}{more}"


def _build_located(doc: Located, stack: tuple[str, ...]) -> YamlWorkflow:
    from baton.runtime.ratelimit import RateLimits

    if not isinstance(doc.data, dict):
        raise WorkflowError("a workflow file must be a mapping with version, name, agents and workflow",
                            file=doc.file, line=1)
    problems = _schema_problems(doc)
    if problems:
        raise WorkflowError(_summary(problems), file=doc.file,
                            line=problems[0]["line"], field=problems[0]["field"], problems=problems)
    b = _Builder(doc, stack)
    b.build_tools()
    b.build_knowledge()
    b.build_agents()
    root = b.pattern()
    data = doc.data
    if b.problems or root is None:
        problems = b.problems or [doc.error(("workflow",), "the workflow could not be built")]
        first = problems[0]
        raise WorkflowError(_summary(problems), file=first["file"],
                            line=first["line"], field=first["field"], problems=problems)
    try:  # bounds the schema cannot say (NaN, infinities) are checked by the settings themselves
        limits = Limits.from_dict({"max_model_calls": DEFAULT_MAX_MODEL_CALLS, **(data.get("limits") or {})})
        rate_limits = {k: RateLimits.from_dict(v, where=f"rate_limits.{k}")
                       for k, v in (data.get("rate_limits") or {}).items()}
        retry = RetryPolicy.from_dict(data["retry"]) if data.get("retry") else None
        breaker = dict(data["breaker"]) if data.get("breaker") else None
        if breaker is not None:
            BreakerSettings.from_dict(breaker)
        router = None
        if data.get("routing"):
            router = ModelRouter.from_dict(data["routing"])
    except WorkflowError as exc:
        problem = doc.error(tuple((exc.field or "").split(".")), exc.problems[0]["message"])
        raise WorkflowError(problem["message"], file=problem["file"], line=problem["line"],
                            field=problem["field"]) from None
    return YamlWorkflow(name=data["name"], file=doc.file, root=root, agents=b.agents, limits=limits,
                        rate_limits=rate_limits, retry=retry, breaker=breaker, spec=data, nested=b.nested,
                        mcp=b.mcp, knowledge=b.knowledge, router=router)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_workflow_bytes(path: str | FsPath) -> bytes:
    """The file's bytes, refusing (fast, before reading) a file over ``MAX_FILE_BYTES``."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow file: {exc.strerror or exc}", file=str(path)) from exc
    if max(size, len(data)) > MAX_FILE_BYTES:
        raise WorkflowError(f"the file is larger than {MAX_FILE_BYTES // 1024} KiB, the limit for a workflow file",
                            file=str(path))
    return data


def _build_file(path: FsPath, stack: tuple[str, ...], expect_sha256: str | None = None) -> YamlWorkflow:
    data = read_workflow_bytes(path)
    digest = sha256_hex(data)
    if expect_sha256 is not None and digest != expect_sha256:  # read once: what is checked is what is built
        raise WorkflowError("the file changed while it was being loaded", file=str(path))
    wf = _build_located(load_yaml(decode_text(data, str(path)), str(path)), stack)
    wf.sha256 = digest
    return wf


def load_workflow_file(path: str | FsPath, *, expect_sha256: str | None = None) -> YamlWorkflow:
    """Load, validate and build a workflow file; ``WorkflowError`` lists every problem.

    ``expect_sha256``: refuse the file unless its content has this hash (resume of a run
    that recorded it).
    """
    resolved = FsPath(path).resolve()
    return _build_file(resolved, (str(resolved),), expect_sha256)


def load_recorded_file(run_id: str, path: str, recorded: Any, command: str) -> YamlWorkflow:
    """The workflow file a run names, only if its content is what the run started with.

    A row is data, not an instruction: without a recorded hash, or with a file that has
    changed since, the caller must name the workflow explicitly.
    """
    if not isinstance(recorded, str) or not recorded:
        raise UsageError(f"run {run_id} names the workflow file {path} but recorded no content hash for it, so "
                         f"baton will not load it on the run's word: pass it explicitly "
                         f"(baton {command} {run_id} --workflow {path})")
    if not path.endswith((".yaml", ".yml")):
        raise UsageError(f"run {run_id} names {path!r} as its workflow file, which is not a .yaml/.yml file: "
                         f"pass the workflow explicitly (baton {command} {run_id} --workflow FILE)")
    current = sha256_hex(read_workflow_bytes(path))
    if current != recorded:
        raise UsageError(f"workflow file {path} has changed since run {run_id} started (sha256 {recorded[:12]}... "
                         f"recorded, {current[:12]}... now); running other code could redo or skip steps. To use "
                         f"the file as it is now, pass it explicitly: baton {command} {run_id} --workflow {path}")
    return load_workflow_file(path, expect_sha256=recorded)
