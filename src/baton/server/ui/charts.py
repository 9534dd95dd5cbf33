"""The run page's two pictures as inline SVG: the timeline (Gantt) and the plan (DAG).

SVG, not styled boxes: the page's Content-Security-Policy allows no inline styles, and
SVG geometry is attributes. Every bar and node carries a ``<title>`` with its status in
words, and the page lists the same facts as text beside them (not colour only)."""

from __future__ import annotations

from html import escape

from baton.server.ui.shape import Plan, Timeline

WIDTH = 960
LABEL_W = 300
ROW_H = 18
AXIS_H = 22
STATE_MARK = {"completed": "done", "failed": "failed", "started": "running"}


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _axis(span: float) -> list[str]:
    bar_w = WIDTH - LABEL_W - 40
    out = []
    for i in range(5):
        x = LABEL_W + bar_w * i / 4
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{AXIS_H}"/>'
                   f'<text class="axis" x="{x:.1f}" y="12" text-anchor="middle">{escape(_fmt_s(span * i / 4))}</text>')
    return out


def timeline_svg(t: Timeline) -> str:
    """One row per step, indented by nesting; bars that overlap in time ran in parallel."""
    bar_w = WIDTH - LABEL_W - 40
    height = AXIS_H + ROW_H * len(t.rows) + 4
    parts = [f'<svg class="timeline" role="img" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
             f'aria-labelledby="tl-title tl-desc"><title id="tl-title">Timeline of {len(t.rows)} steps</title>'
             f'<desc id="tl-desc">Bars that overlap ran at the same time; up to {t.peak_parallel} agents ran '
             f'at once.</desc>', *_axis(t.span_s)]
    for i, r in enumerate(t.rows):
        y = AXIS_H + i * ROW_H
        end = r.end_s if r.end_s is not None else t.span_s
        x = LABEL_W + bar_w * r.start_s / t.span_s
        w = max(2.0, bar_w * (end - r.start_s) / t.span_s)
        state = STATE_MARK.get(r.status, r.status)
        label = f"{'  ' * r.depth}{r.name} ({r.kind})" + ("" if state == "done" else f" [{state}]")
        extra = (f", {r.retries} retries" if r.retries else "") + (f", error: {r.error}" if r.error else "")
        took = _fmt_s(end - r.start_s)
        parts.append(
            f'<g class="bar k-{escape(r.kind)} st-{escape(state)}" data-key="{escape(r.key)}">'
            f'<title>{escape(r.key)}: {escape(r.name)} {escape(r.kind)}, {escape(state)}, {escape(took)}'
            f'{escape(extra)}</title>'
            f'<text class="lbl" x="4" y="{y + 13}" xml:space="preserve">{escape(label[:48])}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{ROW_H - 6}" rx="2"/></g>')
    parts.append("</svg>")
    return "".join(parts)


NODE_W, NODE_H, COL_GAP, ROW_GAP = 170, 46, 60, 14


def dag_svg(plan: Plan) -> str:
    """Subtasks in columns by dependency depth, arrows from each dependency, state in words."""
    columns: dict[int, list[str]] = {}
    for n in plan.nodes:
        columns.setdefault(n.layer, []).append(n.id)
    pos = {nid: (10 + layer * (NODE_W + COL_GAP), 10 + row * (NODE_H + ROW_GAP))
           for layer, ids in columns.items() for row, nid in enumerate(ids)}
    width = 20 + (max(columns, default=0) + 1) * (NODE_W + COL_GAP)
    height = 20 + max((len(v) for v in columns.values()), default=1) * (NODE_H + ROW_GAP)
    parts = [f'<svg class="dag" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'aria-label="Plan: {len(plan.nodes)} subtasks">'
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
             'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>']
    for n in plan.nodes:
        x2, y2 = pos[n.id]
        for d in n.depends_on:
            if d in pos:
                x1, y1 = pos[d]
                parts.append(f'<path class="edge" d="M{x1 + NODE_W},{y1 + NODE_H / 2} C{x1 + NODE_W + COL_GAP / 2},'
                             f'{y1 + NODE_H / 2} {x2 - COL_GAP / 2},{y2 + NODE_H / 2} {x2},{y2 + NODE_H / 2}" '
                             f'marker-end="url(#arrow)"/>')
    for n in plan.nodes:
        x, y = pos[n.id]
        parts.append(
            f'<g class="node st-{escape(n.state)}" data-node="{escape(n.id)}"><title>{escape(n.id)} '
            f'({escape(n.worker)}): {escape(n.state)}. {escape(n.instruction[:200])}</title>'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + 18}">{escape(n.id[:14])} · {escape(n.worker[:14])}</text>'
            f'<text class="state" x="{x + 8}" y="{y + 36}">{escape(n.state)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
