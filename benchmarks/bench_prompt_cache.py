"""Prompt caching across a fan-out: input cost with and without it, and the warm-up gate.

50 workers share a 5,000-token context (the agent's system prompt) and each gets its
own short question. The fake API (its own process) does Anthropic's prompt-cache
accounting: a prefix marked ``cache_control`` is written on first use (1.25x input
price) and read by later requests (0.1x) once the writing response has started.

  a. ``cache_prompt=False``: every call pays the full context at the input price
  b. the same prefix marked for caching but sent by 50 concurrent bare adapter calls
     (no warm-up gate): every request arrives before any write is readable
  c. ``cache_prompt=True``: baton marks the prefix and lets the first call go alone
     (warm-up gate), releasing the other 49 once it has answered, so they read the
     cache instead of all writing it at once

Input cost = uncached input + cache writes + cache reads at their prices. The server
log shows the writes, the reads and that no request started before the first ended.

    .venv/bin/python benchmarks/bench_prompt_cache.py              # 50 workers, 5,000-token context
    .venv/bin/python benchmarks/bench_prompt_cache.py --workers 200 --context-tokens 20000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson
from _harness import FakeServerProcess, UnjournaledEngine

import baton
from baton.messages import Message, ModelRequest, Usage
from baton.models.anthropic import AnthropicModel, usage_from_wire
from baton.models.pricing import price_for
from baton.stores.memory import MemoryStore

MODEL = "claude-sonnet-4-6"
TARGET_RATIO = 0.2


def input_cost(usage: Usage) -> float:
    price = price_for(MODEL)
    assert price is not None
    five_min = usage.cache_creation_input_tokens - usage.cache_creation_1h_input_tokens
    return (usage.input_tokens * price.input + five_min * price.cache_write_5m
            + usage.cache_creation_1h_input_tokens * price.cache_write_1h
            + usage.cache_read_input_tokens * price.cache_read) / 1_000_000


def context(tokens: int, tag: str) -> str:
    """A system prompt of ``tokens`` tokens by the fake tokenizer; ``tag`` keeps variants apart."""
    head = f"[{tag}] You answer questions about the attached report.\n"
    body = "The report says that widget sales rose four percent last quarter. " * (tokens * 4 // 66 + 1)
    return (head + body)[: tokens * 4]


async def fan_out(url: str, workers: int, context_tokens: int, cached: bool) -> None:
    model = AnthropicModel(api_key="sk-bench", base_url=url)
    agent = baton.Agent("analyst", system=context(context_tokens, "cached" if cached else "plain"), model=MODEL,
                        max_tokens=64, cache_prompt=cached)

    async def workflow(ctx: baton.RunContext, _: Any) -> int:
        answers = await ctx.gather(*(ctx.call(agent, f"Question {i}: what does the report say?")
                                     for i in range(workers)))
        return len(answers)

    try:
        result = await UnjournaledEngine(store=MemoryStore(), model=model).run(
            workflow, None, limits=baton.Limits(concurrency=workers))
    finally:
        await model.aclose()
    if result.status != "succeeded":
        raise RuntimeError(f"run {result.status}: {result.error}")


async def no_gate(url: str, workers: int, context_tokens: int) -> None:
    """Cache marks without the gate: all requests at once through the bare adapter."""
    model = AnthropicModel(api_key="sk-bench", base_url=url)
    system = [{"type": "text", "text": context(context_tokens, "nogate"), "cache_control": {"type": "ephemeral"}}]
    try:
        await asyncio.gather(*(model.complete(ModelRequest(MODEL, [Message.user(f"Question {i}: what does the "
                                                                                 "report say?")],
                                                           system=system, max_tokens=64))
                               for i in range(workers)))
    finally:
        await model.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--context-tokens", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.2, help="fake server latency per call, seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        log = Path(tmpdir) / "requests.jsonl"
        with FakeServerProcess("--cache-min-tokens", "1024", "--latency", str(args.latency), "--log", str(log)) as url:
            asyncio.run(fan_out(url, args.workers, args.context_tokens, cached=False))
            asyncio.run(no_gate(url, args.workers, args.context_tokens))
            asyncio.run(fan_out(url, args.workers, args.context_tokens, cached=True))
        entries = [orjson.loads(line) for line in log.read_bytes().splitlines()]

    rows: dict[str, list[dict[str, Any]]] = {"plain": [], "nogate": [], "cached": []}
    for e in entries:
        system = e["body"]["system"]
        text = system if isinstance(system, str) else system[0]["text"]
        rows[text[1:text.index("]")]].append(e)
    totals: dict[str, Usage] = {}
    for name, es in rows.items():
        total = Usage()
        for e in es:
            total.add(usage_from_wire(e["usage"]))
        totals[name] = total
    plain, cached = totals["plain"], totals["cached"]
    ratio = input_cost(cached) / input_cost(plain)
    cached_rows = sorted(rows["cached"], key=lambda e: e["time_start"])
    writes = sum(1 for e in cached_rows if e["usage"]["cache_creation_input_tokens"] > 0)
    reads = sum(1 for e in cached_rows if e["usage"]["cache_read_input_tokens"] > 0)
    first = cached_rows[0]
    after_first = sum(1 for e in cached_rows[1:] if e["time_start"] >= first["time_end"])

    print(f"\nprompt cache: {args.workers} workers sharing a {args.context_tokens}-token system prompt, "
          f"{MODEL}, fake server latency {args.latency:g} s\n")
    print(f"{'variant':<22} {'requests':>8} {'input':>8} {'cache write':>11} {'cache read':>10} {'input $':>10}  ratio")
    for name, label in (("plain", "cache_prompt=False"), ("nogate", "marked, no gate"),
                        ("cached", "cache_prompt=True")):
        u = totals[name]
        print(f"{label:<22} {len(rows[name]):>8} {u.input_tokens:>8} {u.cache_creation_input_tokens:>11} "
              f"{u.cache_read_input_tokens:>10} {input_cost(u):>10.5f}  {input_cost(u) / input_cost(plain):.3f}x")
    print(f"\nwarm-up gate: {writes} request wrote the cache, {reads} read it; "
          f"{after_first} of {len(cached_rows) - 1} later requests started after the first one ended")
    gate_ok = writes == 1 and reads == args.workers - 1 and after_first == args.workers - 1
    print(f"\nSUMMARY prompt_cache: input cost cached/uncached {ratio:.3f} (target <= {TARGET_RATIO}: "
          f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}); {writes} write + {reads} reads "
          f"(expected 1 + {args.workers - 1}: {'OK' if gate_ok else 'MISSED'})")


if __name__ == "__main__":
    main()
