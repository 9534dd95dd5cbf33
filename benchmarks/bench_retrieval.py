"""Retrieval quality and speed of knowledge bases (issue 19).

The corpus is a frozen copy of the project's docs (``benchmarks/retrieval/corpus``) and
``questions.json`` holds 32 questions, each with the file(s) and a phrase that a
passage must contain to answer it (phrases, not chunk ids, so the chunker can change).

For each retrieval mode (BM25 always; dense and hybrid when an embedder is available:
``--embedder minilm`` needs the ``dense`` extra) it prints recall@5 (share of questions
with an answering passage in the top 5), MRR@10, indexing throughput (passages/s, a
fresh index) and query latency p50/p99 (each question ``--repeats`` times).

    .venv/bin/python benchmarks/bench_retrieval.py                      # BM25 on SQLite
    .venv/bin/python benchmarks/bench_retrieval.py --embedder minilm    # + dense and hybrid
    .venv/bin/python benchmarks/bench_retrieval.py --store postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from baton.knowledge import KnowledgeBase  # noqa: E402
from baton.knowledge.base import Passage  # noqa: E402

HERE = Path(__file__).resolve().parent / "retrieval"


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s)


def relevant(p: Passage, answers: list[dict[str, str]]) -> bool:
    body = _norm(f"{p.heading}\n{p.text}")
    return any(p.path == a["path"] and _norm(a["contains"]) in body for a in answers)


def evaluate(kb: KnowledgeBase, questions: list[dict[str, Any]], mode: str, repeats: int) -> dict[str, float]:
    hits = 0
    rr = 0.0
    latencies: list[float] = []
    misses: list[str] = []
    for q in questions:
        passages: list[Passage] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            passages = kb.search(q["question"], 10, mode=mode)
            latencies.append(time.perf_counter() - t0)
        rank = next((i for i, p in enumerate(passages, start=1) if relevant(p, q["answers"])), None)
        if rank is not None and rank <= 5:
            hits += 1
        else:
            misses.append(q["question"])
        rr += 1.0 / rank if rank else 0.0
    latencies.sort()
    return {"recall@5": hits / len(questions), "mrr@10": rr / len(questions),
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "misses": misses}  # type: ignore[dict-item]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", help="index store URL (default: a fresh SQLite file)")
    ap.add_argument("--embedder", help="minilm or module:factory: adds dense and hybrid rows")
    ap.add_argument("--repeats", type=int, default=5, help="searches per question for the latency figures")
    ap.add_argument("--show-misses", action="store_true")
    args = ap.parse_args()
    questions = json.loads((HERE / "questions.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"sqlite:///{tmp}/bench.db"
        name = f"bench-{uuid.uuid4().hex[:8]}"  # a shared database may hold earlier runs
        kb = KnowledgeBase(name, "corpus/*.md", base_dir=str(HERE), store=store, embedder=args.embedder)
        stats = kb.refresh()
        rate = stats.chunks / stats.seconds if stats.seconds else float("inf")
        print(f"corpus: {stats.files} files, {stats.chunks} passages; indexed in {stats.seconds:.2f}s "
              f"= {rate:,.0f} passages/s ({store.split('://')[0]}"
              f"{', embedder ' + kb.embedder.name if kb.embedder else ''})")
        modes = ["bm25"] + (["dense", "hybrid"] if kb.embedder is not None else [])
        print(f"{len(questions)} questions\n")
        print(f"{'mode':<8} {'recall@5':>9} {'MRR@10':>7} {'p50 ms':>8} {'p99 ms':>8}")
        results = {}
        for mode in modes:
            r = evaluate(kb, questions, mode, args.repeats)
            results[mode] = r
            print(f"{mode:<8} {r['recall@5']:>9.3f} {r['mrr@10']:>7.3f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
            if args.show_misses:
                for m in r["misses"]:  # type: ignore[attr-defined]
                    print(f"   missed: {m}")
        kb.refresh()  # incremental: nothing changed, nothing re-indexed
        again = kb.refresh()
        print(f"\nrefresh with no change: {again.indexed} files re-indexed, {again.seconds * 1000:.1f} ms")
        if args.store:
            for p in kb.files():
                kb.index().remove_file(name, kb._rel(p))
        kb.close()
    best = max(results, key=lambda m: results[m]["recall@5"])
    verdict = "OK" if results["bm25"]["recall@5"] >= 0.8 else "MISSED"
    print(f"\nSUMMARY retrieval: bm25 recall@5 {results['bm25']['recall@5']:.3f} (target >= 0.8: {verdict}), "
          f"best {best} "
          f"{results[best]['recall@5']:.3f}; index {rate:,.0f} passages/s; "
          f"bm25 p50 {results['bm25']['p50_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
