"""``baton index WF.yaml``: build or refresh the workflow's knowledge indexes (incremental by content hash)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from baton.errors import UsageError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("index", help="build or refresh a workflow's knowledge indexes (only changed files)")
    p.add_argument("workflow", help="workflow file with a knowledge: section")
    p.add_argument("--store", help="index store URL (default: each base's store:, BATON_STORE, or the default)")
    p.add_argument("--only", action="append", metavar="NAME", help="index only this knowledge base (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    p.set_defaults(fn=cmd_index)


def _progress(name: str) -> Any:
    tty = sys.stderr.isatty()

    def show(n: int, total: int, path: str) -> None:
        width = 24
        filled = width * n // max(total, 1)
        line = f"indexing {name}: [{'#' * filled}{'.' * (width - filled)}] {n}/{total} {path[-40:]}"
        if tty:
            sys.stderr.write("\r\033[K" + line)
        elif n == total or n % 50 == 0:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return show


async def cmd_index(args: argparse.Namespace) -> int:
    from baton.spec.build import load_workflow_file

    wf = load_workflow_file(args.workflow)
    bases = dict(wf.knowledge)
    if not bases:
        raise UsageError(f"{args.workflow} has no knowledge: section; nothing to index")
    for name in args.only or []:
        if name not in bases:
            raise UsageError(f"no knowledge base {name!r} in {args.workflow} (has: {', '.join(sorted(bases))})")
    report: dict[str, Any] = {}
    for name, kb in bases.items():
        if args.only and name not in args.only:
            continue
        if args.store:
            kb.store = args.store
        stats = kb.refresh(progress=_progress(name))
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        report[name] = {"files": stats.files, "indexed": stats.indexed, "unchanged": stats.unchanged,
                        "removed": stats.removed, "chunks": stats.chunks, "seconds": round(stats.seconds, 3),
                        "total_chunks": kb.index().count(name)}
        kb.close()
        if not args.json:
            r = report[name]
            print(f"{name}: {r['files']} files ({r['indexed']} indexed, {r['unchanged']} unchanged, "
                  f"{r['removed']} removed), {r['chunks']} new passages, {r['total_chunks']} in the index, "
                  f"{r['seconds']}s")
    if args.json:
        print(orjson.dumps(report).decode())
    return 0
