"""Retrieval over your documents: knowledge bases indexed beside the runs, searched by agents.

    docs = KnowledgeBase("docs", "docs/**/*.md")          # BM25 over SQLite FTS5 / PostgreSQL
    agent = baton.Agent("helper", tools=[docs.search_tool()])

See docs/knowledge.md.
"""

from baton.knowledge.base import KnowledgeBase, Passage, RefreshStats, rrf
from baton.knowledge.chunking import Chunk, chunk_text
from baton.knowledge.embed import Embedder, MiniLMEmbedder

__all__ = ["Chunk", "Embedder", "KnowledgeBase", "MiniLMEmbedder", "Passage", "RefreshStats", "chunk_text", "rrf"]
