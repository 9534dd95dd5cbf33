"""A low-level MCP server whose one tool declares an output schema and answers outside it.

The high-level ``MCPServer`` checks its own output, so this uses the SDK's low-level ``Server``,
which sends whatever the handler returns: the client side must catch it.
"""

from __future__ import annotations

import anyio
import mcp.types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server

STATS = types.Tool(
    name="stats",
    description="Count lines and words of a text.",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    output_schema={"type": "object", "properties": {"lines": {"type": "integer"}, "words": {"type": "integer"}},
                   "required": ["lines", "words"]},
)


async def list_tools(ctx: object, params: object) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[STATS])


async def call_tool(ctx: object, params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text="many")],
                                structured_content={"lines": "many", "words": None})


server = Server("bad-output", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
