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
    from baton.knowledge.base import KnowledgeBase
    from baton.knowledge.embed import Embedder

_WHERE = {"KnowledgeBase": "base", "Embedder": "embed"}

__all__ = ["Embedder", "KnowledgeBase"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'baton.knowledge' has no attribute {name!r}")
    return getattr(importlib.import_module(f"baton.knowledge.{_WHERE[name]}"), name)
