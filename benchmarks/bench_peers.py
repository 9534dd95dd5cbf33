"""The same job on baton and its peers: planner -> N workers -> synthesizer (issue 20).

One planner call, N worker calls in parallel (each gets a subtask and the plan), one
synthesizer call over the N answers, against a fake model API at ``--latency`` seconds in
its own process. Each framework runs in a fresh process of its own; CPU is that process's
user + system time from the kernel (every thread), peak RSS from the same accounting.

  * baton: ``baton.run`` of a Python workflow (``ctx.call`` / ``ctx.gather``), journaled to SQLite;
  * the raw anthropic SDK: ``AsyncAnthropic`` and ``asyncio.gather``;
  * LangGraph: a ``StateGraph`` (planner node, ``Send`` fan-out to a worker node, synthesizer)
    over ``langchain_anthropic.ChatAnthropic``;
  * PydanticAI: three ``Agent``s on its Anthropic model, workers gathered;
  * the OpenAI Agents SDK: three ``Agent``s run by ``Runner.run``, workers gathered. It speaks
    OpenAI Chat Completions, so it runs against baton's fake OpenAI-compatible server (same
    latency) instead of the fake Messages API. Tracing is switched off (it would export to
    OpenAI).

CPU per worker call is marginal: (CPU at ``--n`` - CPU at ``--small``) / (``--n`` - ``--small``),
so interpreter start and imports cancel out; wall time and RSS are those of the ``--n`` run.
The peers are installed on first use into their own virtual environment (default
``~/.cache/baton/peers-venv``, never the project's): ``pip install`` from your package
index, a few minutes once.

    python benchmarks/bench_peers.py                            # N = 500 vs 100, 200 ms latency
    python benchmarks/bench_peers.py --n 2000 --small 500       # the issue's measurement
    python benchmarks/bench_peers.py --only baton,langgraph --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from _harness import FakeServerProcess

MODEL = "claude-sonnet-4-6"
PEERS_VENV = Path.home() / ".cache" / "baton" / "peers-venv"
PEER_PACKAGES = ["anthropic", "langgraph", "langchain-anthropic", "pydantic-ai-slim[anthropic,openai]",
                 "openai-agents"]
FRAMEWORKS = ("baton", "anthropic-sdk", "langgraph", "pydantic-ai", "openai-agents")
PEER_IMPORTS = {"anthropic-sdk": "anthropic", "langgraph": "langgraph, langchain_anthropic",
                "pydantic-ai": "pydantic_ai", "openai-agents": "agents"}


def plan_prompt() -> str:
    return "Plan the work for the report."


def worker_prompt(i: int, plan: str) -> str:
    return f"Subtask {i} of the plan: {plan}"


def synth_prompt(answers: list[str]) -> str:
    return "Combine these results:\n" + "\n".join(answers)


class GraphState(TypedDict):
    """LangGraph's state (at module level: LangGraph resolves its annotations by name)."""

    n: int
    plan: str
    answers: Annotated[list[str], operator.add]
    final: str


# --- the job, one function per framework (each runs in its own process) -------------------------


async def job_baton(url: str, n: int, tmp: str) -> tuple[int, float]:
    import baton
    from baton.models.resolve import close_models

    planner = baton.Agent("planner", system="You plan.", model=MODEL, max_tokens=64)
    worker = baton.Agent("worker", system="You do one subtask.", model=MODEL, max_tokens=64)
    synthesizer = baton.Agent("synthesizer", system="You combine results.", model=MODEL, max_tokens=64)

    async def job(ctx: baton.RunContext, count: int) -> int:
        plan = (await ctx.call(planner, plan_prompt())).text
        answers = await ctx.gather(*(ctx.call(worker, worker_prompt(i, plan)) for i in range(count)))
        await ctx.call(synthesizer, synth_prompt([a.text for a in answers]))
        return len(answers)

    limits = baton.Limits(concurrency=n, max_model_calls=n + 2)
    t0 = time.perf_counter()
    result = await baton.run(job, n, store=f"sqlite:///{tmp}/baton-{n}-{os.getpid()}.db", limits=limits)
    wall = time.perf_counter() - t0
    await close_models()
    if not result.ok:
        raise RuntimeError(f"baton run {result.status}: {result.error}")
    return int(result.output), wall


async def job_anthropic_sdk(url: str, n: int, tmp: str) -> tuple[int, float]:
    from anthropic import AsyncAnthropic

    client = AsyncAnthropic(api_key="sk-bench", base_url=url)

    async def ask(system: str, text: str) -> str:
        message = await client.messages.create(model=MODEL, max_tokens=64, system=system,
                                               messages=[{"role": "user", "content": text}])
        return "".join(block.text for block in message.content if block.type == "text")

    t0 = time.perf_counter()
    plan = await ask("You plan.", plan_prompt())
    answers = await asyncio.gather(*(ask("You do one subtask.", worker_prompt(i, plan)) for i in range(n)))
    await ask("You combine results.", synth_prompt(list(answers)))
    wall = time.perf_counter() - t0
    await client.close()
    return len(answers), wall


async def job_langgraph(url: str, n: int, tmp: str) -> tuple[int, float]:
    from langchain_anthropic import ChatAnthropic
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    llm = ChatAnthropic(model=MODEL, max_tokens=64, api_key="sk-bench", base_url=url)  # type: ignore[call-arg]

    async def planner(state: GraphState) -> dict[str, Any]:
        reply = await llm.ainvoke([("system", "You plan."), ("user", plan_prompt())])
        return {"plan": reply.text}

    def fan_out(state: GraphState) -> list[Any]:  # names LangGraph can resolve at module level
        return [Send("worker", {"i": i, "plan": state["plan"]}) for i in range(state["n"])]

    async def worker(task: dict[str, Any]) -> dict[str, Any]:
        reply = await llm.ainvoke([("system", "You do one subtask."), ("user", worker_prompt(task["i"], task["plan"]))])
        return {"answers": [reply.text]}

    async def synthesizer(state: GraphState) -> dict[str, Any]:
        reply = await llm.ainvoke([("system", "You combine results."), ("user", synth_prompt(state["answers"]))])
        return {"final": reply.text}

    graph = StateGraph(GraphState)
    graph.add_node("planner", planner)
    graph.add_node("worker", worker)
    graph.add_node("synthesizer", synthesizer)
    graph.add_edge(START, "planner")
    graph.add_conditional_edges("planner", fan_out, ["worker"])
    graph.add_edge("worker", "synthesizer")
    graph.add_edge("synthesizer", END)
    compiled = graph.compile()
    t0 = time.perf_counter()
    out = await compiled.ainvoke({"n": n, "answers": []}, {"max_concurrency": n, "recursion_limit": 100})
    return len(out["answers"]), time.perf_counter() - t0


async def job_pydantic_ai(url: str, n: int, tmp: str) -> tuple[int, float]:
    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel, AnthropicModelSettings
    from pydantic_ai.providers.anthropic import AnthropicProvider

    model = AnthropicModel(MODEL, provider=AnthropicProvider(api_key="sk-bench", base_url=url))
    settings = AnthropicModelSettings(max_tokens=64)
    planner = Agent(model, system_prompt="You plan.", model_settings=settings)
    worker = Agent(model, system_prompt="You do one subtask.", model_settings=settings)
    synthesizer = Agent(model, system_prompt="You combine results.", model_settings=settings)
    t0 = time.perf_counter()
    plan = (await planner.run(plan_prompt())).output
    answers = await asyncio.gather(*(worker.run(worker_prompt(i, plan)) for i in range(n)))
    await synthesizer.run(synth_prompt([a.output for a in answers]))
    return len(answers), time.perf_counter() - t0


async def job_openai_agents(url: str, n: int, tmp: str) -> tuple[int, float]:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(api_key="sk-bench", base_url=url)
    model = OpenAIChatCompletionsModel(model="gpt-4o", openai_client=client)
    settings = ModelSettings(max_tokens=64)
    planner = Agent(name="planner", instructions="You plan.", model=model, model_settings=settings)
    worker = Agent(name="worker", instructions="You do one subtask.", model=model, model_settings=settings)
    synthesizer = Agent(name="synthesizer", instructions="You combine results.", model=model, model_settings=settings)
    t0 = time.perf_counter()
    plan = str((await Runner.run(planner, plan_prompt())).final_output)
    answers = await asyncio.gather(*(Runner.run(worker, worker_prompt(i, plan)) for i in range(n)))
    await Runner.run(synthesizer, synth_prompt([str(a.final_output) for a in answers]))
    wall = time.perf_counter() - t0
    await client.close()
    return len(answers), wall


JOBS = {"baton": job_baton, "anthropic-sdk": job_anthropic_sdk, "langgraph": job_langgraph,
        "pydantic-ai": job_pydantic_ai, "openai-agents": job_openai_agents}


def child(framework: str, url: str, n: int, tmp: str) -> None:
    """One job; prints its wall time (from the planner call to the synthesizer's answer, imports and
    client set-up excluded)."""
    done, wall = asyncio.run(JOBS[framework](url, n, tmp))
    if done != n:
        raise RuntimeError(f"{framework}: {done} of {n} workers answered")
    print(json.dumps({"wall_s": wall}))


# --- the driver -------------------------------------------------------------------------------


def ensure_peers(venv: Path) -> Path:
    """The peers' interpreter, after creating the venv and installing them if needed."""
    python = venv / "bin" / "python"
    probe = "import " + ", ".join(PEER_IMPORTS.values())
    if python.exists() and subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0:
        return python
    print(f"  installing peers into {venv} (once; a few minutes)...", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def serve_openai(latency: float) -> None:
    """A child process: baton's fake OpenAI-compatible server answering every request after ``latency``."""
    from baton.testing.fake_openai import FakeOpenAIServer, Rule

    async def main() -> None:
        async with FakeOpenAIServer([Rule(text="ok", delay_s=latency)]) as server:
            print(f"READY {server.url}", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


class OpenAIServerProcess(FakeServerProcess):
    """``serve_openai`` in a child process (the same READY protocol as the Messages API fake)."""

    def __enter__(self) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-openai", *self.args],
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.__exit__(None, None, None)
            raise RuntimeError("fake OpenAI server did not print READY")
        self.url = line.split()[1]
        return self.url


def run_one(python: str, framework: str, url: str, n: int, tmp: str) -> dict[str, float]:
    cmd = [python, __file__, "--child", framework, "--url", url, "--n", str(n), "--tmp", tmp]
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": url, "BATON_PROVIDER": ""}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{framework} at N={n} failed: {err.read()[-1500:]}")
        wall = json.loads(out.read().strip().splitlines()[-1])["wall_s"]
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall, "rss_mb": usage.ru_maxrss / 1024}


def measure(frameworks: list[str], urls: dict[str, str], pythons: dict[str, str], args: argparse.Namespace,
            tmp: str) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {f: {"cpu_ms": [], "wall_s": [], "rss_mb": []} for f in frameworks}
    for r in range(args.rounds):
        for framework in frameworks if r % 2 == 0 else list(reversed(frameworks)):
            url = urls["openai" if framework == "openai-agents" else "anthropic"]
            small = run_one(pythons[framework], framework, url, args.small, tmp)
            big = run_one(pythons[framework], framework, url, args.n, tmp)
            out[framework]["cpu_ms"].append((big["cpu_s"] - small["cpu_s"]) * 1000 / (args.n - args.small))
            out[framework]["wall_s"].append(big["wall_s"])
            out[framework]["rss_mb"].append(big["rss_mb"])
            print(f"  round {r + 1} {framework}: {out[framework]['cpu_ms'][-1]:.2f} ms/call, "
                  f"{big['wall_s']:.2f} s, {big['rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    return out


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    med = {f: {k: statistics.median(v) for k, v in m.items()} for f, m in results.items()}
    base = med.get("baton")
    print(f"\nplanner -> {args.n} workers -> synthesizer, fake API at {args.latency * 1000:.0f} ms in its own process; "
          f"CPU per worker call = (CPU at N={args.n} - CPU at N={args.small}) / {args.n - args.small}, whole process; "
          f"median of {args.rounds} round(s)\n")
    print(f"{'framework':<16} {'CPU ms/call':>11} {'x baton':>7} {'wall s':>7} {'x baton':>7} {'RSS MB':>7} {'x baton':>7}")
    for f, m in med.items():
        ratios = [m[k] / base[k] if base and base[k] else float("nan") for k in ("cpu_ms", "wall_s", "rss_mb")]
        print(f"{f:<16} {m['cpu_ms']:>11.2f} {ratios[0]:>7.1f} {m['wall_s']:>7.2f} {ratios[1]:>7.1f} "
              f"{m['rss_mb']:>7.0f} {ratios[2]:>7.1f}")
    if base:
        others = {f: m for f, m in med.items() if f != "baton"}
        lead = min((m["cpu_ms"] / base["cpu_ms"] for m in others.values()), default=float("nan"))
        print(f"\nSUMMARY peers: baton {base['cpu_ms']:.2f} ms CPU per worker call, {base['wall_s']:.2f} s, "
              f"{base['rss_mb']:.0f} MB at N={args.n}; the nearest peer uses {lead:.1f}x baton's CPU per call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="workers in the measured run")
    parser.add_argument("--small", type=int, default=100, help="workers in the run the marginal cost is taken against")
    parser.add_argument("--latency", type=float, default=0.2, help="fake API latency per call, seconds")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", help="comma-separated subset of " + ", ".join(FRAMEWORKS))
    parser.add_argument("--venv", type=Path, default=PEERS_VENV, help="where the peers are installed")
    parser.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--serve-openai", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_openai is not None:
        serve_openai(args.serve_openai)
        return
    if args.child:
        child(args.child, args.url, args.n, args.tmp)
        return
    frameworks = [f for f in FRAMEWORKS if not args.only or f in args.only.split(",")]
    if args.small >= args.n:
        parser.error("--small must be below --n")
    peers_python = str(ensure_peers(args.venv)) if any(f != "baton" for f in frameworks) else ""
    pythons = {f: sys.executable if f == "baton" else peers_python for f in frameworks}
    with tempfile.TemporaryDirectory() as tmp, FakeServerProcess("--latency", str(args.latency)) as url, \
            OpenAIServerProcess(str(args.latency)) as openai_url:
        results = measure(frameworks, {"anthropic": url, "openai": openai_url}, pythons, args, tmp)
    report(results, args)


if __name__ == "__main__":
    main()
