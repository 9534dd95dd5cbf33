"""A knowledge base: files (globs) -> passages in the store's index -> cited search results.

Retrieval modes: ``bm25`` (keyword, no model needed: the default), ``dense`` (cosine
over embeddings from a pluggable embedder) and ``hybrid`` (reciprocal rank fusion of
both, the default when an embedder is given). ``refresh()`` re-indexes only files whose
content hash changed (the hash covers the chunking settings and the embedder too) and
drops files that are gone; the first search in a process refreshes once, so an agent
never searches a stale index.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.errors import UsageError
from baton.knowledge.chunking import chunk_text
from baton.knowledge.embed import Embedder, embedder_from_spec
from baton.knowledge.index import Index, StoredChunk, open_index
from baton.stores import store_url_from_env
from baton.tools import Tool

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MODES = ("bm25", "dense", "hybrid")
RRF_K = 60
CANDIDATES = 50


@dataclass(frozen=True, slots=True)
class Passage:
    cite: str
    path: str
    heading: str
    line_start: int
    line_end: int
    text: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"cite": self.cite, "heading": self.heading, "text": self.text}


@dataclass(frozen=True, slots=True)
class RefreshStats:
    files: int
    indexed: int
    removed: int
    unchanged: int
    chunks: int
    seconds: float


def _passage(c: StoredChunk, score: float) -> Passage:
    return Passage(f"{c.path}:{c.line_start}-{c.line_end}", c.path, c.heading, c.line_start, c.line_end,
                   c.text, score)


def rrf(*rankings: list[int], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each list adds 1/(k + rank) to an id's score."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, start=1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


class KnowledgeBase:
    """Documents (globs under ``base_dir``) chunked and indexed in a store, searched by BM25, dense
    vectors or both; ``search_tool()`` gives an agent a tool that searches it."""

    def __init__(self, name: str, paths: str | list[str], *, base_dir: str = ".", store: str | None = None,
                 retrieval: str | None = None, embedder: str | Embedder | None = None, chunk_chars: int = 1200,
                 overlap_chars: int = 200, top_k: int = 5, description: str = "", auto_refresh: bool = True) -> None:
        if not _NAME.match(name):
            raise UsageError(f"knowledge base name {name!r} must match {_NAME.pattern}")
        self.name = name
        self.patterns = [paths] if isinstance(paths, str) else list(paths)
        self.base_dir = Path(base_dir)
        self.store = store
        self.embedder = embedder_from_spec(embedder)
        self.retrieval = retrieval or ("hybrid" if self.embedder is not None else "bm25")
        if self.retrieval not in MODES:
            raise UsageError(f"knowledge base {name!r}: retrieval must be one of {', '.join(MODES)}")
        if self.retrieval != "bm25" and self.embedder is None:
            raise UsageError(f"knowledge base {name!r}: {self.retrieval} retrieval needs an embedder "
                             "(embedder: minilm, or module:factory)")
        self.chunk_chars, self.overlap_chars, self.top_k = chunk_chars, overlap_chars, top_k
        self.description = description
        self.auto_refresh = auto_refresh
        self._index: Index | None = None
        self._fresh = False
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, name: str, cfg: dict[str, Any], *, base_dir: str = ".") -> KnowledgeBase:
        """From a workflow file's ``knowledge: {NAME: {path: GLOB, ...}}`` entry."""
        opts = {k: cfg[k] for k in ("store", "retrieval", "embedder", "chunk_chars", "overlap_chars", "top_k",
                                    "description") if k in cfg}
        return cls(name, cfg["path"], base_dir=base_dir, **opts)

    # --- files and index --------------------------------------------------------------

    def files(self) -> list[Path]:
        found: dict[str, Path] = {}
        for pattern in self.patterns:
            for p in sorted(self.base_dir.glob(pattern)):
                if p.is_file():
                    found.setdefault(str(p.resolve()), p)
        return list(found.values())

    def index(self) -> Index:
        with self._lock:
            if self._index is None:
                self._index = open_index(store_url_from_env(self.store))
            return self._index

    def _rel(self, p: Path) -> str:
        """The path passages cite: relative to the base folder (``../docs/x.md`` when outside it)."""
        try:
            return Path(os.path.relpath(p.resolve(), self.base_dir.resolve())).as_posix()
        except ValueError:  # another drive (Windows)
            return p.resolve().as_posix()

    def _settings_tag(self) -> bytes:
        emb = self.embedder.name if self.embedder is not None else "-"
        return f"{self.chunk_chars}/{self.overlap_chars}/{emb}".encode()

    def refresh(self, progress: Callable[[int, int, str], None] | None = None) -> RefreshStats:
        """Index new and changed files (by content hash), drop removed ones."""
        t0 = time.perf_counter()
        with self._lock:
            index = self.index()
            known = index.file_hashes(self.name)
            files = self.files()
            seen: set[str] = set()
            indexed = unchanged = chunks = 0
            for n, p in enumerate(files, start=1):
                rel = self._rel(p)
                seen.add(rel)
                try:
                    data = p.read_bytes()
                except OSError as exc:
                    raise UsageError(f"knowledge base {self.name!r}: cannot read {rel}: {exc.strerror}") from exc
                sha = hashlib.sha256(self._settings_tag() + b"\0" + data).hexdigest()
                if known.get(rel) == sha:
                    unchanged += 1
                else:
                    made = chunk_text(data.decode("utf-8", "replace"), rel, max_chars=self.chunk_chars,
                                      overlap_chars=self.overlap_chars)
                    vectors = self._vectors([f"{c.heading}\n{c.text}" for c in made]) if made else None
                    index.replace_file(self.name, rel, sha, made, vectors)
                    indexed += 1
                    chunks += len(made)
                if progress is not None:
                    progress(n, len(files), rel)
            gone = [path for path in known if path not in seen]
            for path in gone:
                index.remove_file(self.name, path)
            self._fresh = True
            return RefreshStats(len(files), indexed, len(gone), unchanged, chunks, time.perf_counter() - t0)

    def _vectors(self, texts: list[str]) -> list[bytes] | None:
        if self.embedder is None:
            return None
        return [array("f", v).tobytes() for v in self.embedder.embed(texts)]

    # --- search ------------------------------------------------------------------------

    def search(self, query: str, k: int | None = None, *, mode: str | None = None) -> list[Passage]:
        """The ``k`` best passages for ``query`` (``mode`` overrides the base's retrieval)."""
        k = k or self.top_k
        mode = mode or self.retrieval
        if mode != "bm25" and self.embedder is None:
            raise UsageError(f"knowledge base {self.name!r} has no embedder for {mode} retrieval")
        with self._lock:
            if self.auto_refresh and not self._fresh:
                self.refresh()
            index = self.index()
            if mode == "bm25":
                ranked = index.keyword(self.name, query, k)
            elif mode == "dense":
                ranked = self._dense(index, query, k)
            else:
                keyword = [i for i, _ in index.keyword(self.name, query, CANDIDATES)]
                dense = [i for i, _ in self._dense(index, query, CANDIDATES)]
                ranked = rrf(keyword, dense)[:k]
            stored = index.chunks([i for i, _ in ranked])
        return [_passage(stored[i], score) for i, score in ranked if i in stored]

    def _dense(self, index: Index, query: str, k: int) -> list[tuple[int, float]]:
        assert self.embedder is not None
        ids, blobs = index.vectors(self.name)
        if not ids:
            return []
        q = self.embedder.embed([query])[0]
        try:
            import numpy as np
        except ImportError:
            scores = [sum(a * b for a, b in zip(q, array("f", blob), strict=False)) for blob in blobs]
        else:
            matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
            scores = (matrix @ np.asarray(q, dtype=np.float32)).tolist()
        best = sorted(range(len(ids)), key=lambda j: -scores[j])[:k]
        return [(ids[j], float(scores[j])) for j in best]

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.close()
                self._index = None
                self._fresh = False

    # --- the agent's tool ----------------------------------------------------------------

    def search_tool(self, name: str | None = None) -> Tool:
        """``search_NAME``: input ``{"query": TEXT}``, answer ``{"passages": [{cite, heading, text}]}``."""
        about = f" ({self.description})" if self.description else ""

        def search(query: str, k: int | None = None) -> dict[str, Any]:
            if not query.strip():
                return {"passages": [], "note": "empty query"}
            return {"passages": [p.to_dict() for p in self.search(query, min(k or self.top_k, 20))]}

        schema = {"type": "object", "additionalProperties": False, "required": ["query"], "properties": {
            "query": {"type": "string", "description": "what to look for, in words"},
            "k": {"type": "integer", "minimum": 1, "maximum": 20, "description": "how many passages (default "
                                                                                 f"{self.top_k})"}}}
        return Tool(name=(name or f"search_{self.name}")[:64],
                    description=f"Search the {self.name} knowledge base{about}. Returns passages, each with a "
                                "cite (path:first-last line) to quote in your answer.",
                    input_schema=schema, fn=search, timeout_s=120.0, idempotent=True)
