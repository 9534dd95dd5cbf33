"""Knowledge bases: structure-aware chunks, real SQLite and PostgreSQL indexes, the agent's search tool."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

import baton
from _services import PG_URL, postgres_problem
from baton.errors import UsageError
from baton.knowledge import KnowledgeBase
from baton.knowledge.base import rrf
from baton.knowledge.chunking import chunk_text
from baton.models.anthropic import AnthropicModel
from baton.spec.build import load_workflow_file
from baton.testing import FakeAnthropicServer, Rule, text, tool_call

ROOT = Path(__file__).resolve().parents[1]

GUIDE = """# Guide

Intro paragraph about the project.

## Install

Run the installer. It takes a minute.

```bash
# not a heading: a comment inside a fence
pip install thing
```

## Operations

### Backups

Backups run nightly at 02:00 and keep fourteen copies.

### Launch

The launch code is tangerine. Nobody else knows it.
"""

FAQ = """# FAQ

## Pricing

The price is forty dollars a month, billed yearly.

## Support

Support answers within one business day.
"""


def _docs(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "guide.md").write_text(GUIDE)
    (docs / "sub" / "faq.md").write_text(FAQ)
    (docs / "skip.txt").write_text("not matched by the glob: tangerine")
    return docs


# --- chunking -----------------------------------------------------------------------------


def test_chunks_follow_headings_and_keep_line_ranges() -> None:
    chunks = chunk_text(GUIDE, "guide.md")
    lines = GUIDE.splitlines()
    by_heading = {c.heading: c for c in chunks}
    assert set(by_heading) == {"Guide", "Guide > Install", "Guide > Operations > Backups",
                               "Guide > Operations > Launch"}
    # A '#' inside a code fence is not a heading, and the fence stays in its section.
    assert "pip install thing" in by_heading["Guide > Install"].text
    assert "# not a heading" in by_heading["Guide > Install"].text
    for c in chunks:
        span = "\n".join(lines[c.line_start - 1:c.line_end])
        first = c.text.splitlines()[0]
        assert first in span and c.text.splitlines()[-1] in span, (c, span)
    launch = by_heading["Guide > Operations > Launch"]
    assert lines[launch.line_start - 1] == "The launch code is tangerine. Nobody else knows it."


def test_long_sections_are_packed_with_overlap_and_size_cap() -> None:
    paragraphs = [f"Paragraph {i} says " + ("word " * 30).strip() + "." for i in range(20)]
    doc = "# Long\n\n" + "\n\n".join(paragraphs) + "\n"
    chunks = chunk_text(doc, "long.md", max_chars=600, overlap_chars=200)
    assert len(chunks) > 3
    assert all(len(c.text) <= 600 for c in chunks)
    for a, b in zip(chunks, chunks[1:], strict=False):
        # The next passage starts with the previous one's last paragraph.
        assert a.text.split("\n\n")[-1] == b.text.split("\n\n")[0]
    seen = {p for c in chunks for p in c.text.split("\n\n")}
    assert seen == set(paragraphs)


def test_huge_line_is_cut_hard() -> None:
    chunks = chunk_text("x" * 5000, "blob.txt", max_chars=1000)
    assert [len(c.text) for c in chunks] == [1000] * 5
    assert all(c.line_start == c.line_end == 1 for c in chunks)


def test_rrf_rewards_agreement() -> None:
    fused = [i for i, _ in rrf([1, 2, 3], [3, 1, 4])]
    assert fused[:2] == [1, 3] and set(fused) == {1, 2, 3, 4}


# --- indexes --------------------------------------------------------------------------------


def _index_roundtrip(tmp_path: Path, store: str, name: str = "docs") -> None:
    docs = _docs(tmp_path)
    kb = KnowledgeBase(name, "docs/**/*.md", base_dir=str(tmp_path), store=store)
    first = kb.refresh()
    assert (first.files, first.indexed, first.unchanged, first.removed) == (2, 2, 0, 0)
    total = kb.index().count(name)
    assert total == first.chunks > 0
    again = kb.refresh()
    assert (again.indexed, again.unchanged, again.chunks) == (0, 2, 0)

    (hit,) = kb.search("what is the launch code", 1)
    assert hit.cite.startswith("docs/guide.md:") and "tangerine" in hit.text
    assert hit.heading == "Guide > Operations > Launch"
    start, end = map(int, hit.cite.rsplit(":", 1)[1].split("-"))
    assert "tangerine" in "\n".join(GUIDE.splitlines()[start - 1:end])
    assert kb.search("how much does it cost per month", 1)[0].path == "docs/sub/faq.md"
    assert not kb.search("skip", 5) or all("skip" not in p.path for p in kb.search("skip", 5))
    # Query syntax from a model cannot break the index's query language.
    for hostile in ['"unbalanced', "NEAR(a b", "-*^:()", "tangerine OR", "'; DROP TABLE x; --", ""]:
        kb.search(hostile, 3)

    # Incremental: one changed file is re-indexed, a removed one is dropped.
    (docs / "sub" / "faq.md").write_text(FAQ.replace("forty", "fifty"))
    changed = kb.refresh()
    assert (changed.indexed, changed.unchanged, changed.removed) == (1, 1, 0)
    assert "fifty" in kb.search("price per month", 1)[0].text
    (docs / "sub" / "faq.md").unlink()
    gone = kb.refresh()
    assert (gone.files, gone.removed) == (1, 1)
    assert all(p.path != "docs/sub/faq.md" for p in kb.search("price support business day", 5))
    kb.close()

    # A second process (a fresh object) finds the index already built.
    other = KnowledgeBase(name, "docs/**/*.md", base_dir=str(tmp_path), store=store)
    assert other.refresh().indexed == 0
    (docs / "guide.md").unlink()
    assert other.refresh().removed == 1 and other.index().count(name) == 0
    other.close()


def test_sqlite_index(tmp_path: Path) -> None:
    _index_roundtrip(tmp_path, f"sqlite:///{tmp_path / 'runs.db'}")


@pytest.mark.postgres
def test_postgres_index(tmp_path: Path) -> None:
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    # A name of its own: the database outlives the test and other runs may share it.
    _index_roundtrip(tmp_path, PG_URL, name=f"docs-{uuid.uuid4().hex[:8]}")


def test_two_bases_in_one_store_stay_apart(tmp_path: Path) -> None:
    _docs(tmp_path)
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    guide = KnowledgeBase("guide", "docs/guide.md", base_dir=str(tmp_path), store=store)
    faq = KnowledgeBase("faq", "docs/sub/*.md", base_dir=str(tmp_path), store=store)
    assert all(p.path == "docs/guide.md" for p in guide.search("price launch support backups", 10))
    assert all(p.path == "docs/sub/faq.md" for p in faq.search("price launch support backups", 10))


class BagOfWords:
    """A small deterministic embedder (hashed word counts, normalised): exercises the dense path offline."""

    name = "bag-of-words-64"
    dim = 64

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for t in texts:
            v = [0.0] * self.dim
            for w in re.findall(r"[a-z]+", t.lower()):
                v[int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
            norm = sum(x * x for x in v) ** 0.5 or 1.0
            out.append([x / norm for x in v])
        return out


def test_dense_and_hybrid_retrieval_with_a_pluggable_embedder(tmp_path: Path) -> None:
    _docs(tmp_path)
    kb = KnowledgeBase("docs", "docs/**/*.md", base_dir=str(tmp_path), store=f"sqlite:///{tmp_path / 'r.db'}",
                       embedder=BagOfWords())
    assert kb.retrieval == "hybrid"
    assert "tangerine" in kb.search("launch code tangerine", 1, mode="dense")[0].text
    assert "tangerine" in kb.search("launch code tangerine", 1)[0].text
    assert kb.search("price month", 1, mode="bm25")[0].path == "docs/sub/faq.md"
    # Changing the embedder changes the content hash: everything is re-embedded.
    kb2 = KnowledgeBase("docs", "docs/**/*.md", base_dir=str(tmp_path), store=f"sqlite:///{tmp_path / 'r.db'}")
    assert kb2.refresh().indexed == 2


def test_bad_configuration_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs an embedder"):
        KnowledgeBase("docs", "*.md", retrieval="dense")
    with pytest.raises(UsageError, match="must match"):
        KnowledgeBase("bad name", "*.md")
    kb = KnowledgeBase("docs", "*.md", base_dir=str(tmp_path), store="redis://127.0.0.1:6379/0")
    with pytest.raises(UsageError, match="sqlite"):
        kb.search("x")


# --- the agent's tool, over the fake Messages API ----------------------------------------------


async def test_agent_searches_and_cites_over_the_fake_messages_api(tmp_path: Path) -> None:
    _docs(tmp_path)
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "version: 1\nname: rag\n"
        "agents:\n  helper: {model: claude-haiku-4-5, system: 'Answer from the docs and cite.', knowledge: [docs]}\n"
        f"knowledge:\n  docs: {{path: 'docs/**/*.md', store: 'sqlite:///{tmp_path / 'kb.db'}', top_k: 2}}\n"
        "workflow: {pattern: agent, agent: helper}\n")
    async with FakeAnthropicServer(rules=[
        Rule(r"tangerine", reply=text("The code is tangerine [docs/guide.md].")),
        Rule(None, reply=tool_call("search_docs", {"query": "launch code"})),
    ]) as server:
        model = AnthropicModel(api_key="sk-test", base_url=server.url)
        try:
            result = await baton.run(load_workflow_file(wf), "What is the launch code?",
                                     store=f"sqlite:///{tmp_path / 'runs.db'}", model=model)
        finally:
            await model.aclose()
        assert result.status == "succeeded", result.error
        assert result.output == "The code is tangerine [docs/guide.md]."
        first, second = server.requests[0].body, server.requests[1].body
    assert first is not None and second is not None
    (tool,) = first["tools"]
    assert tool["name"] == "search_docs" and tool["input_schema"]["required"] == ["query"]
    results = [b for m in second["messages"] for b in m["content"] if isinstance(b, dict)
               and b.get("type") == "tool_result"]
    payload = orjson.loads(results[0]["content"] if isinstance(results[0]["content"], str)
                           else results[0]["content"][0]["text"])
    top = payload["passages"][0]
    assert top["cite"].startswith("docs/guide.md:") and "tangerine" in top["text"]
    assert len(payload["passages"]) <= 2


def test_unknown_knowledge_base_is_a_workflow_error(tmp_path: Path) -> None:
    from baton.errors import WorkflowError

    wf = tmp_path / "wf.yaml"
    wf.write_text("version: 1\nname: x\nagents:\n  a: {knowledge: [nope]}\nworkflow: {pattern: agent, agent: a}\n")
    with pytest.raises(WorkflowError, match="unknown knowledge base 'nope'"):
        load_workflow_file(wf)


def test_baton_index_cli_is_incremental(tmp_path: Path) -> None:
    docs = _docs(tmp_path)
    wf = tmp_path / "wf.yaml"
    wf.write_text("version: 1\nname: idx\nagents:\n  a: {knowledge: [docs]}\n"
                  "knowledge:\n  docs: {path: 'docs/**/*.md'}\nworkflow: {pattern: agent, agent: a}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "BATON_STORE": f"sqlite:///{tmp_path / 'runs.db'}"}

    def index(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "baton", "index", str(wf), *extra], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    first = index("--json")
    assert first.returncode == 0, first.stderr
    assert orjson.loads(first.stdout)["docs"]["indexed"] == 2
    assert "indexing docs:" in first.stderr and "2/2" in first.stderr
    (docs / "guide.md").write_text(GUIDE + "\nA new line.\n")
    second = index()
    assert second.returncode == 0 and "1 indexed, 1 unchanged" in second.stdout
    bad = index("--only", "missing")
    assert bad.returncode == 2 and "no knowledge base 'missing'" in bad.stderr
    assert "Traceback" not in bad.stderr
    none = subprocess.run([sys.executable, "-m", "baton", "index", str(tmp_path / "absent.yaml")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "Traceback" not in none.stderr


def _has_dense() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "all_minilm_l6_v2"))


@pytest.mark.skipif(_has_dense(), reason="the dense extra is installed here")
def test_minilm_without_the_dense_extra_is_one_clear_error(tmp_path: Path) -> None:
    _docs(tmp_path)
    kb = KnowledgeBase("docs", "docs/**/*.md", base_dir=str(tmp_path), store="memory://", embedder="minilm")
    with pytest.raises(UsageError, match=r"baton-agents\[dense\]"):
        kb.refresh()


@pytest.mark.skipif(not _has_dense(), reason="needs the dense extra: pip install 'baton-agents[dense]'")
@pytest.mark.timeout(600)
def test_minilm_embeds_offline_and_ranks_by_meaning(tmp_path: Path) -> None:
    from baton.knowledge.embed import MiniLMEmbedder

    car, auto, fruit = MiniLMEmbedder().embed(["a fast car", "a quick automobile", "a ripe banana"])
    assert len(car) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(car, auto) > dot(car, fruit) + 0.2
    _docs(tmp_path)
    kb = KnowledgeBase("docs", "docs/**/*.md", base_dir=str(tmp_path), store="memory://", embedder="minilm")
    # No shared keyword: only meaning connects the question to the pricing passage.
    assert kb.search("what is the subscription fee", 1, mode="dense")[0].path == "docs/sub/faq.md"


def test_a_new_sqlite_index_file_is_private(tmp_path: Path) -> None:
    _docs(tmp_path)
    db = tmp_path / "private" / "kb.db"
    KnowledgeBase("docs", "docs/**/*.md", base_dir=str(tmp_path), store=f"sqlite:///{db}").refresh()
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700
