"""A fan-out under real rate limits: baton's governor vs naive retry-on-429 (issue 5).

The fake API (its own process) enforces requests and input tokens per minute with
token buckets, answering 429 + ``retry-after`` when a request would exceed them.
N agent calls are fanned out (``ctx.gather``) through baton with the rate governor set
to the same limits; then, from the same starting state, N naive concurrent calls
(bare ``AnthropicModel``, on 429 sleep ``retry-after`` and try again).

Starting state: the server's buckets hold a whole minute of capacity when it starts,
which no real API promises (Anthropic may enforce 60 RPM as 1 request per second). So
before each variant the buckets are drained (bursts of big and small requests), then
the client waits one second: both variants start from the server's steady state with
one second of capacity, read back from the ``anthropic-ratelimit-*-remaining`` headers.

The minimum time any client could take is then computed from both limits, the exact
tokens of the requests (as the server counted them) and the levels at the start:
``max((N - requests left) / RPM, (input tokens - tokens left) / ITPM)``.

    .venv/bin/python benchmarks/bench_rate_limits.py               # 200 calls, 600 rpm, 100k itpm (~20 s each)
    .venv/bin/python benchmarks/bench_rate_limits.py --calls 1000   # the full run (~100 s each)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

from _harness import FakeServerProcess, UnjournaledEngine

import baton
from baton.errors import ProviderError
from baton.messages import Message, ModelRequest
from baton.models.anthropic import AnthropicModel
from baton.observe.events import Event
from baton.runtime.ratelimit import RateGovernor, RateLimits
from baton.stores.memory import MemoryStore

MODEL = "claude-sonnet-4-6"
TARGET_RATIO = 1.1
TARGET_429_SHARE = 0.01


@dataclass
class Outcome:
    name: str
    seconds: float
    requests: int
    rate_limited: int
    input_tokens: int
    minimum_s: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.minimum_s if self.minimum_s > 0 else float("nan")

    @property
    def share_429(self) -> float:
        return self.rate_limited / max(1, self.requests)


class Count429:
    """An event sink counting the calls the server answered 429, and all model requests."""

    def __init__(self) -> None:
        self.rate_limited = 0
        self.requests = 0

    def handle(self, event: Event) -> None:
        if event.kind == "model.request":
            self.requests += 1
        elif event.kind == "model.error" and event.data.get("status") == 429:
            self.rate_limited += 1

    def close(self) -> None:
        pass


def prompt(i: int, tokens: int) -> str:
    """A user message of ``tokens`` tokens by the fake tokenizer (4 chars each)."""
    head = f"Item {i}: summarise this record. "
    return (head + "x" * (tokens * 4))[: tokens * 4]


SYSTEM = "You summarise records."  # 5 tokens by the fake tokenizer


async def drain(url: str, burst_s: float) -> tuple[dict[str, float], float]:
    """Empty the server's buckets, wait ``burst_s``, return the levels it then holds and when."""
    model = AnthropicModel(api_key="sk-bench", base_url=url)
    tiny = ModelRequest(MODEL, [Message.user("z")], max_tokens=8)  # 1 request, 1 input token

    async def levels() -> dict[str, float]:
        while True:
            try:
                h = (await model.complete(tiny)).headers
            except ProviderError as exc:
                if exc.status != 429:
                    raise
                await asyncio.sleep(0.05)
                continue
            return {"rpm": float(h["anthropic-ratelimit-requests-remaining"]),
                    "itpm": float(h["anthropic-ratelimit-input-tokens-remaining"])}

    async def send(req: ModelRequest) -> None:
        try:
            await model.complete(req)
        except ProviderError as exc:  # a 429 here only means that bucket is already empty
            if exc.status != 429:
                raise

    try:
        left = await levels()
        for _ in range(5):
            if left["rpm"] < 5 and left["itpm"] < 200:
                break
            if left["itpm"] >= 200:  # one request taking (almost) every token left
                await send(ModelRequest(MODEL, [Message.user("y" * int(left["itpm"] - 20) * 4)], max_tokens=8))
            for start in range(0, int(left["rpm"]), 100):
                await asyncio.gather(*(send(tiny) for _ in range(min(100, int(left["rpm"]) - start))))
            left = await levels()
        await asyncio.sleep(burst_s)
        left = await levels()
        at = time.monotonic()
    finally:
        await model.aclose()
    return left, at


def minimum_seconds(calls: int, tokens: int, rpm: int, itpm: int, levels: dict[str, float], elapsed: float) -> float:
    """The fastest any client could finish from these bucket levels (``elapsed`` s after reading them)."""
    have_req = min(float(rpm), levels["rpm"] + elapsed * rpm / 60.0)
    have_tok = min(float(itpm), levels["itpm"] + elapsed * itpm / 60.0)
    return max((calls - have_req) / (rpm / 60.0), (tokens - have_tok) / (itpm / 60.0), 0.0)


async def baton_run(url: str, args: argparse.Namespace) -> Outcome:
    levels, read_at = await drain(url, args.burst_s)
    model = AnthropicModel(api_key="sk-bench", base_url=url)
    governor = RateGovernor({MODEL: RateLimits(rpm=args.rpm, itpm=args.itpm)}, burst_s=args.burst_s)
    counter = Count429()
    engine = UnjournaledEngine(store=MemoryStore(), model=model, governor=governor, sinks=[counter])
    agent = baton.Agent("summariser", system=SYSTEM, model=MODEL, max_tokens=16)
    n, size = args.calls, args.tokens_per_call

    async def workflow(ctx: baton.RunContext, _: Any) -> int:
        done = await ctx.gather(*(ctx.call(agent, prompt(i, size)) for i in range(n)))
        return len(done)

    t0 = time.monotonic()
    try:
        result = await engine.run(workflow, None, limits=baton.Limits(concurrency=n))
    finally:
        await model.aclose()
    seconds = time.monotonic() - t0
    if result.status != "succeeded":
        raise RuntimeError(f"baton run {result.status}: {result.error}")
    tokens = result.usage.input_tokens
    return Outcome("baton (governor at the same limits)", seconds, counter.requests, counter.rate_limited, tokens,
                   minimum_seconds(n, tokens, args.rpm, args.itpm, levels, t0 - read_at))


async def naive_run(url: str, args: argparse.Namespace) -> Outcome:
    levels, read_at = await drain(url, args.burst_s)
    model = AnthropicModel(api_key="sk-bench", base_url=url, max_connections=args.calls)
    stats = {"requests": 0, "429": 0, "tokens": 0}

    async def call(i: int) -> None:
        request = ModelRequest(MODEL, [Message.user(prompt(i, args.tokens_per_call))], system=SYSTEM, max_tokens=16)
        while True:
            stats["requests"] += 1
            try:
                response = await model.complete(request)
            except ProviderError as exc:
                if exc.status != 429:
                    raise
                stats["429"] += 1
                await asyncio.sleep(exc.retry_after or 1.0)
                continue
            stats["tokens"] += response.usage.input_tokens
            return

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(call(i) for i in range(args.calls)))
    finally:
        await model.aclose()
    seconds = time.monotonic() - t0
    return Outcome("naive concurrent + retry-after", seconds, stats["requests"], stats["429"], stats["tokens"],
                   minimum_seconds(args.calls, stats["tokens"], args.rpm, args.itpm, levels, t0 - read_at))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--itpm", type=int, default=100_000)
    parser.add_argument("--tokens-per-call", type=int, default=170,
                        help="user message size; 170 makes both limits bind about equally at 600 rpm / 100k itpm")
    parser.add_argument("--burst-s", type=float, default=1.0, help="governor bucket size, and the pause after a drain")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive variant")
    args = parser.parse_args()

    with FakeServerProcess("--rpm", str(args.rpm), "--itpm", str(args.itpm)) as url:
        outcomes = [asyncio.run(baton_run(url, args))]
        print("  measured baton", file=sys.stderr, flush=True)
        if not args.no_naive:
            outcomes.append(asyncio.run(naive_run(url, args)))
            print("  measured naive", file=sys.stderr, flush=True)

    per_call = outcomes[0].input_tokens / args.calls
    print(f"\nrate limits: {args.calls} calls of ~{per_call:.0f} input tokens ({args.tokens_per_call} user + "
          f"system), server limits {args.rpm} rpm / {args.itpm:,} itpm, governor set to the same "
          f"(burst {args.burst_s:g} s); each variant starts from drained buckets + {args.burst_s:g} s\n")
    print(f"{'variant':<36} {'seconds':>8} {'minimum':>8} {'ratio':>6} {'requests':>9} {'429s':>6} {'429 %':>6}")
    for o in outcomes:
        print(f"{o.name:<36} {o.seconds:>8.2f} {o.minimum_s:>8.2f} {o.ratio:>6.3f} {o.requests:>9} "
              f"{o.rate_limited:>6} {o.share_429 * 100:>5.1f}%")
    b = outcomes[0]
    ok = b.ratio <= TARGET_RATIO and b.share_429 <= TARGET_429_SHARE
    naive = (f"; naive {outcomes[1].seconds:.1f} s ({outcomes[1].ratio:.2f}x) with {outcomes[1].rate_limited} 429s"
             if len(outcomes) > 1 else "")
    print(f"\nSUMMARY rate_limits: baton {b.seconds:.1f} s vs minimum {b.minimum_s:.1f} s = {b.ratio:.3f}x "
          f"(target <= {TARGET_RATIO}x), {b.share_429 * 100:.1f}% answered 429 (target <= "
          f"{TARGET_429_SHARE * 100:.0f}%): {'OK' if ok else 'MISSED'}{naive}")


if __name__ == "__main__":
    main()
