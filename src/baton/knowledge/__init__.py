"""Retrieval over your documents: knowledge bases indexed beside the runs, searched by agents.

    docs = KnowledgeBase("docs", "docs/**/*.md")          # BM25 over SQLite FTS5 / PostgreSQL
    agent = baton.Agent("helper", tools=[docs.search_tool()])

See docs/knowledge.md. Names load on first use, so ``baton index`` registering its
subcommand costs the CLI nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from baton.knowledge.base import KnowledgeBase, Passage, RefreshStats, rrf
    from baton.knowledge.chunking import Chunk, chunk_text
    from baton.knowledge.embed import Embedder, MiniLMEmbedder

_WHERE = {"KnowledgeBase": "base", "Passage": "base", "RefreshStats": "base", "rrf": "base",
          "Chunk": "chunking", "chunk_text": "chunking", "Embedder": "embed", "MiniLMEmbedder": "embed"}

__all__ = ["Chunk", "Embedder", "KnowledgeBase", "MiniLMEmbedder", "Passage", "RefreshStats", "chunk_text", "rrf"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'baton.knowledge' has no attribute {name!r}")
    return getattr(importlib.import_module(f"baton.knowledge.{_WHERE[name]}"), name)
