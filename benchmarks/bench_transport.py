"""CPU cost per model call of the transport, at high concurrency.

Starts the fake Messages API in a separate process (zero latency) and measures, in this
process, CPU milliseconds per call for:

  a. bare aiohttp POST + orjson decode (the floor any aiohttp client pays)
  b. baton's AnthropicModel.complete (request encoding, headers, response mapping)
  c. the official anthropic SDK, AsyncAnthropic(max_retries=0), for comparison

    python benchmarks/bench_transport.py                  # 5,000 calls at concurrency 1,000
    python benchmarks/bench_transport.py --calls 20000 --concurrency 200 --no-sdk
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from _harness import FakeServerProcess, Result, measure, print_table

from baton.messages import Message, ModelRequest
from baton.models.anthropic import AnthropicModel

MODEL = "claude-sonnet-4-6"
SYSTEM = "You are a terse assistant."
PROMPT = "Say hello in one word."
HEADERS = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "content-type": "application/json"}


def bare_aiohttp(url: str, max_connections: int) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_connections))
    endpoint = url + "/v1/messages"
    body = {"model": MODEL, "max_tokens": 64, "system": SYSTEM, "messages": [{"role": "user", "content": PROMPT}]}

    async def call() -> Any:
        async with session.post(endpoint, data=orjson.dumps(body), headers=HEADERS) as resp:
            data = orjson.loads(await resp.read())
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {data}")
            return data

    return call, session.close


def baton_model(url: str, max_connections: int) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    model = AnthropicModel(api_key="sk-bench", base_url=url, max_connections=max_connections)
    request = ModelRequest(MODEL, [Message.user(PROMPT)], system=SYSTEM, max_tokens=64)
    return (lambda: model.complete(request)), model.aclose


def anthropic_sdk(url: str, max_connections: int) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    from anthropic import AsyncAnthropic

    client = AsyncAnthropic(api_key="sk-bench", base_url=url, max_retries=0)
    messages = [{"role": "user", "content": PROMPT}]

    def call() -> Awaitable[Any]:
        return client.messages.create(model=MODEL, max_tokens=64, system=SYSTEM, messages=messages)  # type: ignore[arg-type]

    return call, client.close


async def run(url: str, args: argparse.Namespace) -> list[Result]:
    variants: list[tuple[str, Any]] = [("bare aiohttp + orjson", bare_aiohttp), ("baton AnthropicModel", baton_model)]
    if not args.no_sdk:
        variants.append(("anthropic SDK (max_retries=0)", anthropic_sdk))
    results = []
    for name, factory in variants:
        call, close = factory(url, max(args.concurrency, 1))
        # The SDK costs ~20x more CPU per call; fewer calls keep the default run short.
        calls = args.sdk_calls if factory is anthropic_sdk else args.calls
        try:
            results.append(await measure(name, call, calls=calls, concurrency=args.concurrency))
        finally:
            await close()
        print(f"  measured {name}", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--sdk-calls", type=int, default=1000, help="calls for the (slow) SDK row")
    parser.add_argument("--no-sdk", action="store_true", help="skip the official SDK row")
    args = parser.parse_args()
    with FakeServerProcess() as url:
        results = asyncio.run(run(url, args))
    print(f"\nconcurrency {args.concurrency}, zero-latency fake server in another process\n")
    print_table(results, baseline="bare aiohttp + orjson")


if __name__ == "__main__":
    main()
