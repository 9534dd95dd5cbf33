"""The patterns' forced schemas and handoff tools over real HTTP: AnthropicModel -> FakeAnthropicServer."""

from __future__ import annotations

import baton
from baton.models.anthropic import AnthropicModel
from baton.stores.memory import MemoryStore
from baton.testing import FakeAnthropicServer
from test_pattern_bus import newsroom, newsroom_rules
from test_pattern_router import _desk


async def test_bus_and_handoffs_over_the_messages_api_wire() -> None:
    async with FakeAnthropicServer(newsroom_rules()) as server:
        model = AnthropicModel(api_key="test-key", base_url=server.url)
        try:
            bus_run = await baton.run(newsroom(), "battery market", store=MemoryStore(), model=model)
            assert bus_run.status == "succeeded", bus_run.error
            assert bus_run.output == "report on R: cells are cheaper"
            assert server.completed_count == 5 and all(r.status == 200 for r in server.requests)
            server.reset()
            desk, scripted = _desk()
            for rule in scripted.rules:
                server.add_rule(rule.match, reply=rule.reply, times=rule.times)
            desk_run = await baton.run(desk, "charged twice", store=MemoryStore(), model=model)
            assert desk_run.status == "succeeded", desk_run.error
            assert desk_run.output["chain"] == ["triage", "billing"]
            assert [r.status for r in server.requests] == [200, 200]  # the transfer ends triage's turn
        finally:
            await model.aclose()
