"""Real MCP servers (written with the official ``mcp`` SDK) that the tests start as subprocesses."""
