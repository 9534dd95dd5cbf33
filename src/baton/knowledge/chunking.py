"""Split documents into passages that follow their structure.

Markdown is cut at headings first (each passage knows its heading path, e.g.
``Resume > Budgets``), then packed paragraph by paragraph up to ``max_chars``; a fenced
code block is one paragraph however long it looks. The next passage of a section starts
with the previous one's last paragraph (when it fits in ``overlap_chars``), so a fact
that straddles a cut is whole in at least one passage. Every passage keeps its 1-based
line range, so an answer can cite ``path:start-end``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str
    ord: int
    heading: str
    line_start: int
    line_end: int
    text: str


@dataclass(slots=True)
class _Block:
    heading: str
    start: int
    end: int
    text: str


def _blocks(text: str, markdown: bool) -> list[_Block]:
    """Paragraphs (blank-line separated, fences kept whole) with the heading path above each."""
    blocks: list[_Block] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    start = 0
    in_fence = False

    def flush(end: int) -> None:
        body = "\n".join(lines).strip()
        if body:
            blocks.append(_Block(" > ".join(h for _, h in path), start, end, body))
        lines.clear()

    for n, line in enumerate(text.splitlines(), start=1):
        if markdown and _FENCE.match(line):
            in_fence = not in_fence
        heading = _HEADING.match(line) if markdown and not in_fence else None
        if heading:
            flush(n - 1)
            level = len(heading.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level] + [(level, heading.group(2).strip())]
            continue
        if not line.strip() and not in_fence:
            flush(n - 1)
            continue
        if not lines:
            start = n
        lines.append(line)
    flush(len(text.splitlines()))
    return blocks


def _split_long(block: _Block, max_chars: int) -> list[_Block]:
    """A paragraph longer than a passage: cut between lines (or hard, for one huge line)."""
    out: list[_Block] = []
    cur: list[str] = []
    first = block.start
    for i, line in enumerate(block.text.split("\n")):
        while len(line) > max_chars:
            if cur:
                out.append(_Block(block.heading, first, block.start + i, "\n".join(cur)))
                cur = []
            out.append(_Block(block.heading, block.start + i, block.start + i, line[:max_chars]))
            line = line[max_chars:]
            first = block.start + i
        if cur and sum(len(c) + 1 for c in cur) + len(line) > max_chars:
            out.append(_Block(block.heading, first, block.start + i - 1, "\n".join(cur)))
            cur, first = [], block.start + i
        if not cur:
            first = block.start + i
        cur.append(line)
    if cur:
        out.append(_Block(block.heading, first, block.end, "\n".join(cur)))
    return out


def chunk_text(text: str, path: str, *, max_chars: int = 1200, overlap_chars: int = 200,
               markdown: bool | None = None) -> list[Chunk]:
    """The passages of one document (markdown when ``path`` ends in .md/.markdown, unless told)."""
    if markdown is None:
        markdown = path.lower().endswith((".md", ".markdown", ".mdx"))
    blocks: list[_Block] = []
    for b in _blocks(text, markdown):
        blocks.extend(_split_long(b, max_chars) if len(b.text) > max_chars else [b])
    chunks: list[Chunk] = []
    group: list[_Block] = []

    def emit() -> None:
        body = "\n\n".join(b.text for b in group)
        chunks.append(Chunk(path, len(chunks), group[0].heading, group[0].start, group[-1].end, body))

    for b in blocks:
        size = sum(len(g.text) + 2 for g in group)
        if group and (b.heading != group[0].heading or size + len(b.text) > max_chars):
            emit()
            last = group[-1]
            carry = b.heading == last.heading and len(last.text) <= overlap_chars \
                and len(last.text) + len(b.text) + 2 <= max_chars
            group = [last] if carry else []
        group.append(b)
    if group:
        emit()
    return chunks
