"""A Python workflow with a human approval step, run through the CLI in tests."""

import baton

drafter = baton.Agent("drafter", system="You draft announcements.", model="claude-haiku-4-5")


async def announce(ctx: baton.RunContext, topic: str):
    draft = await ctx.call(drafter, topic)
    decision = await ctx.approve("publish", {"draft": draft.output})
    return {"published": decision.approved, "text": decision.edit or draft.output}
