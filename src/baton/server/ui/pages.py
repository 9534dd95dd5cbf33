"""Server-rendered HTML of the UI's pages. Every value from a run is escaped here; content
(inputs, outputs, errors) arrives already redacted and cut to the capture mode."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from baton.observe.events import trace_id_for
from baton.observe.redact import Capture, redact
from baton.server.ui import shape
from baton.server.ui.charts import dag_svg, timeline_svg
from baton.server.ui.forms import Field, fields
from baton.server.ui.source import Detail, workflow_name
from baton.stores.base import RunRecord, StepRecord

STATUSES = ("pending", "running", "awaiting_approval", "succeeded", "failed", "budget_exceeded", "interrupted",
            "cancelled")
MARK = {"succeeded": "✓", "failed": "✗", "cancelled": "⊘", "running": "▶", "pending": "…", "awaiting_approval": "⏸",
        "interrupted": "⏹", "budget_exceeded": "$", "completed": "✓", "started": "▶", "done": "✓", "waiting": "…"}


@dataclass(frozen=True)
class Ctx:
    """What every page needs to know about who looks and what they may do."""

    csrf: str | None
    read_only: bool
    tenant: str | None
    capture: Capture


def e(value: Any) -> str:
    return escape(str(value), quote=True)


def status(s: str) -> str:
    """A run or step status as a mark and words; the colour only repeats it."""
    return f'<span class="status s-{e(s)}">{MARK.get(s, "")} {e(s.replace("_", " "))}</span>'


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def secs(s: float | None) -> str:
    return "" if s is None else (f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s")


def page(title: str, body: str, ctx: Ctx, signed_out: bool = False) -> str:
    nav = [] if signed_out else ['<a href="/ui/">Runs</a>']
    if not ctx.read_only and not signed_out:
        nav.append('<a href="/ui/start">Start a run</a>')
    who = ""
    if ctx.tenant is not None:
        who = (f'<form method="post" action="/ui/logout" class="inline">{_csrf(ctx)}<span>tenant '
               f'<strong>{e(ctx.tenant)}</strong></span> <button type="submit">Sign out</button></form>')
    elif ctx.read_only and not signed_out:
        who = '<span class="ro">read-only view of the store</span>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} · baton</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            '<link rel="stylesheet" href="/ui/static/ui.css"><script src="/ui/static/ui.js" defer></script>'
            '</head><body><a class="skip" href="#main">Skip to content</a>'
            f'<header><span class="brand">baton</span><nav aria-label="Main">{" ".join(nav)}</nav>{who}</header>'
            f'<main id="main" tabindex="-1">{body}</main></body></html>')


def _csrf(ctx: Ctx) -> str:
    return f'<input type="hidden" name="csrf" value="{e(ctx.csrf)}">' if ctx.csrf else ""


def login(error: str | None = None) -> str:
    msg = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    body = ('<h1>Sign in</h1><p>Use an API key of this service (the same keys as the <code>/v1</code> API); '
            'you will see your tenant\'s runs only.</p>' + msg +
            '<form method="post" action="/ui/login"><label for="key">API key</label> '
            '<input id="key" name="key" type="password" autocomplete="off" required autofocus> '
            '<button type="submit">Sign in</button></form>')
    return page("Sign in", body, Ctx(None, True, None, "none"), signed_out=True)


# --- runs list -----------------------------------------------------------------------------------


def _select(name: str, label: str, options: list[str], chosen: str | None) -> str:
    opts = "".join(f'<option value="{e(o)}"{" selected" if o == chosen else ""}>{e(o) or "any"}</option>'
                   for o in ["", *options])
    return f'<label for="f-{name}">{e(label)}</label> <select id="f-{name}" name="{name}">{opts}</select>'


def runs_table(runs: list[RunRecord]) -> str:
    """The table body the page polls for (the same markup the page starts with)."""
    if not runs:
        return '<p id="runs-empty">No runs yet.</p>'
    rows = []
    for r in runs:
        t = shape.totals(r)
        rows.append(
            f'<tr data-run="{e(r.run_id)}" data-status="{e(r.status)}">'
            f'<td><input type="checkbox" name="run" value="{e(r.run_id)}" id="c-{e(r.run_id)}" '
            f'aria-label="select run {e(r.run_id)} to compare"></td>'
            f'<td><a href="/ui/runs/{quote(r.run_id, safe="")}">{e(r.run_id)}</a></td><td>{status(r.status)}</td>'
            f'<td>{e(workflow_name(r))}</td><td>{e(r.metadata.get("tenant") or "")}</td>'
            f'<td class="num">${t["cost_usd"]:.4f}</td><td class="num">{t["input_tokens"] + t["output_tokens"]}</td>'
            f'<td class="num">{t["model_calls"]}</td><td class="num">{secs(t["duration_s"])}</td>'
            f'<td>{e(when(r.created_at))}</td></tr>')
    return ('<table class="runs"><caption>Runs, newest first</caption><thead><tr><th scope="col">Compare</th>'
            '<th scope="col">Run</th><th scope="col">Status</th><th scope="col">Workflow</th><th scope="col">Tenant'
            '</th><th scope="col">Cost</th><th scope="col">Tokens</th><th scope="col">Calls</th><th scope="col">'
            'Duration</th><th scope="col">Started</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def runs_page(runs: list[RunRecord], ctx: Ctx, chosen_status: str | None, chosen_wf: str | None,
              workflows: list[str]) -> str:
    filters = ('<form method="get" action="/ui/" class="filters" aria-label="Filter runs">'
               + _select("status", "Status", list(STATUSES), chosen_status) + " "
               + _select("workflow", "Workflow", workflows, chosen_wf)
               + ' <button type="submit">Filter</button></form>')
    query = urlencode({k: v for k, v in (("status", chosen_status), ("workflow", chosen_wf)) if v})
    body = ('<h1>Runs</h1>' + filters +
            '<form method="get" action="/ui/compare" aria-label="Compare runs">'
            f'<div id="runs" data-poll="/ui/runs-table?{e(query)}" aria-live="polite">{runs_table(runs)}</div>'
            '<button type="submit">Compare two selected runs</button></form>')
    return page("Runs", body, ctx)


# --- run page ------------------------------------------------------------------------------------


def _facts(d: Detail) -> str:
    r = d.run
    t = shape.totals(r)
    items = [("Status", status(r.status)), ("Workflow", e(workflow_name(r))),
             ("Tenant", e(r.metadata.get("tenant") or "")), ("Trace id", f"<code>{e(_trace(r.run_id))}</code>"),
             ("Started", e(when(r.created_at))), ("Duration", e(secs(t["duration_s"]))),
             ("Cost", f"${t['cost_usd']:.4f}"), ("Tokens", f"{t['input_tokens']} in, {t['output_tokens']} out"),
             ("Model calls", str(t["model_calls"]))]
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _trace(run_id: str) -> str:
    return trace_id_for(run_id)


def _action(run_id: str, verb: str, label: str, ctx: Ctx) -> str:
    return (f'<form method="post" action="/ui/runs/{quote(run_id, safe="")}/{verb}" class="inline">{_csrf(ctx)}'
            f'<button type="submit" class="act-{verb}">{e(label)}</button></form>')


def _actions(r: RunRecord, ctx: Ctx) -> str:
    if ctx.read_only:
        return ""
    acts = []
    if r.status in shape.CANCELLABLE:
        acts.append(_action(r.run_id, "cancel", "Cancel run", ctx))
    if r.status in shape.RESUMABLE:
        acts.append(_action(r.run_id, "resume", "Resume run", ctx))
    return f'<div class="actions" role="group" aria-label="Run actions">{"".join(acts)}</div>' if acts else ""


def _approval(d: Detail, key: str, ctx: Ctx) -> str:
    req = next((s.result for s in d.steps if s.key == key and isinstance(s.result, dict)), {}) or {}
    shown = shape.captured(req.get("request"), ctx.capture)
    request = f"<pre>{e(shown)}</pre>" if shown else ""
    if ctx.read_only:
        return f'<section class="approval"><h3>Step <code>{e(key)}</code> waits for a decision</h3>{request}</section>'
    fid = "a" + hashlib.sha256(key.encode()).hexdigest()[:10]  # stable across requests: focus survives a refresh
    return (f'<section class="approval" aria-labelledby="{fid}-h"><h3 id="{fid}-h">Step <code>{e(key)}</code> waits '
            f'for a decision</h3>{request}<form method="post" action="/ui/runs/{quote(d.run.run_id, safe="")}'
            f'/approvals/{quote(key, safe="")}">{_csrf(ctx)}<label for="{fid}-edit">Edited value (optional, text or '
            f'JSON)</label><textarea id="{fid}-edit" name="edit" rows="3"></textarea><label for="{fid}-note">Note '
            f'(optional)</label><input id="{fid}-note" name="note" type="text"><div class="actions">'
            '<button type="submit" name="decision" value="approve" class="act-approve">Approve</button> '
            '<button type="submit" name="decision" value="reject" class="act-reject">Reject</button></div>'
            '</form></section>')


def _error(r: RunRecord) -> str:
    if not r.error:
        return ""
    err = redact(r.error)
    return (f'<div class="error" role="alert"><strong>Error: {e(err.get("type", "error"))}</strong> '
            f'{e(err.get("message", ""))}</div>')


def _cost_table(title: str, rows: dict[str, shape.Usage]) -> str:
    body = "".join(f'<tr><th scope="row">{e(k)}</th><td class="num">{u.calls}</td><td class="num">{u.input_tokens}'
                   f'</td><td class="num">{u.output_tokens}</td><td class="num">{u.cache_read}</td>'
                   f'<td class="num">${u.cost_usd:.4f}</td></tr>' for k, u in rows.items())
    return (f'<table class="cost"><caption>{e(title)}</caption><thead><tr><th scope="col">{e(title.split()[-1])}'
            '</th><th scope="col">Calls</th><th scope="col">Input tokens</th><th scope="col">Output tokens</th>'
            f'<th scope="col">Cached</th><th scope="col">Cost</th></tr></thead><tbody>{body}</tbody></table>')


def _content(label: str, value: Any, ctx: Ctx) -> str:
    shown = shape.captured(value, ctx.capture)
    return f'<div class="content"><span class="clabel">{e(label)}</span><pre>{e(shown)}</pre></div>' if shown else ""


def _step_row(s: StepRecord, d: Detail, inputs: dict[str, Any], retries: dict[str, list[str]], ctx: Ctx) -> str:
    u = s.usage or {}
    err = (s.error or {}).get("message") or (s.error or {}).get("type") or ""
    notes = retries.get(s.key, [])
    problems = "".join(f"<li>{e(n)}</li>" for n in notes)
    problems += f'<li class="failed">{e(redact(str(err)))}</li>' if err else ""
    content = _content("input", inputs.get(s.key), ctx) + _content("output", shape.step_output(s), ctx)
    more = f"<details><summary>content</summary>{content}</details>" if content else ""
    took = secs(s.ended_at - s.started_at) if s.ended_at else ""
    return (f'<tr data-step="{e(s.key)}"><td><code>{e(s.key)}</code></td><td>{e(s.kind)}</td><td>{e(s.name)}</td>'
            f'<td>{status(s.status)}</td><td class="num">{e(took)}</td>'
            f'<td class="num">{int(u.get("input_tokens", 0) or 0) + int(u.get("output_tokens", 0) or 0) or ""}</td>'
            f'<td class="num">{f"${s.cost_usd:.4f}" if s.cost_usd else ""}</td>'
            f'<td class="num">{max(0, s.attempts - 1) or ""}</td>'
            f'<td>{f"<ul>{problems}</ul>" if problems else ""}{more}</td></tr>')


def _steps_table(d: Detail, ctx: Ctx) -> str:
    inputs, retries = shape.inputs_by_key(d.events), shape.retries_by_key(d.events)
    rows = "".join(_step_row(s, d, inputs, retries, ctx)
                   for s in sorted(d.steps, key=lambda s: (s.started_at, shape.natural(s.key))))
    return ('<table class="steps"><caption>Steps</caption><thead><tr><th scope="col">Key</th><th scope="col">Kind'
            '</th><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Duration</th><th scope="col">'
            'Tokens</th><th scope="col">Cost</th><th scope="col">Retries</th><th scope="col">Errors, content</th>'
            f'</tr></thead><tbody>{rows}</tbody></table>')


def _plans(d: Detail) -> str:
    out: list[str] = []
    for p in shape.plans(d.steps):
        where = f" (under <code>{e(p.prefix.rstrip('/'))}</code>)" if p.prefix else ""
        items = "".join(f'<li data-node="{e(n.id)}"><code>{e(n.id)}</code> {e(n.worker)}: {status(n.state)} '
                        f'{"after " + e(", ".join(n.depends_on)) if n.depends_on else "no dependencies"} - '
                        f'{e(n.instruction[:160])}</li>' for n in p.nodes)
        out.append(f'<section class="plan" aria-labelledby="plan-h{len(out)}"><h2 id="plan-h{len(out)}">Plan'
                   f'{where}</h2><div class="scroll">{dag_svg(p)}</div><ul class="plan-list">{items}</ul></section>')
    return "".join(out)


def run_main(d: Detail, ctx: Ctx, now: float) -> str:
    """The part of the run page that changes while the run goes (the page swaps it in live)."""
    r = d.run
    t = shape.timeline(r, d.steps, now)
    by_agent, by_model = shape.costs(d.steps)
    approvals = "".join(_approval(d, k, ctx) for k in d.awaiting)
    output = _content("Run output", r.output, ctx) if r.status == "succeeded" else ""
    return (f'{_facts(d)}{_actions(r, ctx)}{_error(r)}{approvals}{output}{_plans(d)}'
            f'<section aria-labelledby="tl-h"><h2 id="tl-h">Timeline</h2><p>{len(t.rows)} steps over '
            f'{e(secs(t.span_s))}; up to <strong id="peak">{t.peak_parallel}</strong> agents at once.</p>'
            f'<div class="scroll tall">{timeline_svg(t)}</div></section>'
            f'<section aria-labelledby="cost-h"><h2 id="cost-h">Cost and tokens</h2>'
            f'{_cost_table("Cost by agent", by_agent)}{_cost_table("Cost by model", by_model)}</section>'
            f'<section aria-labelledby="steps-h"><h2 id="steps-h">Steps</h2>{_steps_table(d, ctx)}</section>'
            f'<section aria-labelledby="hist-h"><h2 id="hist-h">History</h2><ol class="history">'
            + "".join(f"<li>{e(when(x.at))} {status(x.status)}</li>" for x in d.transitions) + "</ol></section>")


def run_page(d: Detail, ctx: Ctx, live: bool, now: float) -> str:
    r = d.run
    active = r.status in shape.WATCHED
    body = (f'<h1>Run <code>{e(r.run_id)}</code></h1>'
            f'<p><a href="/ui/compare?run={quote(r.run_id, safe="")}">Compare with another run</a></p>'
            f'<div id="run" data-run="{e(r.run_id)}" data-active="{int(active)}" data-live="{int(live)}" '
            f'data-status="{e(r.status)}" data-seq="{max((x[0] for x in d.events), default=0)}" aria-live="polite">'
            f'{run_main(d, ctx, now)}</div>'
            '<section aria-labelledby="live-h" id="live-section" hidden><h2 id="live-h">Live output</h2>'
            '<pre id="live-text"></pre></section>')
    return page(f"Run {r.run_id}", body, ctx)


# --- compare, start, errors ----------------------------------------------------------------------


def compare_page(a: Detail, b: Detail, ctx: Ctx) -> str:
    ta, tb = shape.totals(a.run), shape.totals(b.run)
    pa, pb = shape.prompt_versions(a.steps), shape.prompt_versions(b.steps)
    ca, cb = shape.costs(a.steps)[0], shape.costs(b.steps)[0]
    rows = [("Status", status(a.run.status), status(b.run.status), ""),
            ("Workflow", e(workflow_name(a.run)), e(workflow_name(b.run)), "")]
    for key, label, fmt in (("cost_usd", "Cost", "${:.4f}"), ("input_tokens", "Input tokens", "{}"),
                            ("output_tokens", "Output tokens", "{}"), ("model_calls", "Model calls", "{}"),
                            ("duration_s", "Duration (s)", "{:.2f}")):
        diff = tb[key] - ta[key]
        rows.append((label, fmt.format(ta[key]), fmt.format(tb[key]), ("+" if diff > 0 else "") + fmt.format(diff)
                     .replace("$-", "-$")))
    for agent in sorted(set(pa) | set(pb)):
        same = "same" if pa.get(agent) == pb.get(agent) else "changed"
        rows.append((f"Prompt version: {e(agent)}", e(pa.get(agent, "-")), e(pb.get(agent, "-")), same))
    for agent in sorted(set(ca) | set(cb)):
        ua, ub = ca.get(agent, shape.Usage()), cb.get(agent, shape.Usage())
        rows.append((f"Cost: {e(agent)}", f"${ua.cost_usd:.4f}", f"${ub.cost_usd:.4f}",
                     f"{ub.cost_usd - ua.cost_usd:+.4f}"))
    head = (f'<tr><th scope="col"></th><th scope="col"><a href="/ui/runs/{quote(a.run.run_id, safe="")}">'
            f'{e(a.run.run_id)}</a></th><th scope="col"><a href="/ui/runs/{quote(b.run.run_id, safe="")}">'
            f'{e(b.run.run_id)}</a></th><th scope="col">Difference</th></tr>')
    body = "".join(f'<tr><th scope="row">{x}</th><td>{y}</td><td>{z}</td><td>{w}</td></tr>' for x, y, z, w in rows)
    note = "" if workflow_name(a.run) == workflow_name(b.run) else \
        '<p class="warn" role="note">These runs are of different workflows.</p>'
    return page("Compare runs", f'<h1>Compare runs</h1>{note}<table class="compare"><caption>Run A against run B'
                f'</caption><thead>{head}</thead><tbody>{body}</tbody></table>', ctx)


def pick_page(run_id: str, runs: list[RunRecord], ctx: Ctx) -> str:
    opts = "".join(f'<option value="{e(r.run_id)}">{e(r.run_id)} · {e(r.status)} · {e(when(r.created_at))}</option>'
                   for r in runs if r.run_id != run_id)
    body = (f'<h1>Compare run <code>{e(run_id)}</code></h1><form method="get" action="/ui/compare">'
            f'<input type="hidden" name="run" value="{e(run_id)}"><label for="other">Other run of the same '
            f'workflow</label> <select id="other" name="run">{opts}</select> <button type="submit">Compare</button>'
            '</form>')
    return page("Compare runs", body, ctx)


def _field(wf: str, f: Field, value: Any) -> str:
    fid = f"in-{e(wf)}-{e(f.name)}"
    req = " required" if f.required else ""
    label = f'<label for="{fid}">{e(f.label)}{" (required)" if f.required else ""}</label>'
    hint = f'<small id="{fid}-help">{e(f.help)}</small>' if f.help else ""
    described = f' aria-describedby="{fid}-help"' if f.help else ""
    shown = "" if value is None else e(value if isinstance(value, str) else _json(value))
    if f.control == "checkbox":
        checked = " checked" if value else ""
        return (f'<div class="field"><input type="checkbox" id="{fid}" name="{e(f.name)}"{checked}{described}> '
                f'{label}{hint}</div>')
    if f.control == "select":
        opts = "".join(f'<option{" selected" if o == value else ""}>{e(o)}</option>' for o in f.options)
        control = f'<select id="{fid}" name="{e(f.name)}"{req}{described}>{opts}</select>'
    elif f.control in ("textarea", "json"):
        control = f'<textarea id="{fid}" name="{e(f.name)}" rows="4"{req}{described}>{shown}</textarea>'
    else:
        kind = {"integer": 'number" step="1', "number": 'number" step="any'}.get(f.control, "text")
        control = f'<input id="{fid}" name="{e(f.name)}" type="{kind}" value="{shown}"{req}{described}>'
    return f'<div class="field">{label}{control}{hint}</div>'


def _json(value: Any) -> str:
    return json.dumps(value)


def start_page(workflows: list[Any], ctx: Ctx, chosen: str | None = None, error: str | None = None,
               values: dict[str, str] | None = None) -> str:
    """Every registered workflow with a form made from its input schema."""
    parts = ["<h1>Start a run</h1>"]
    for reg in workflows:
        if chosen is not None and reg.name != chosen:
            continue
        msg = f'<p class="error" role="alert">{e(error)}</p>' if error and reg.name == chosen else ""
        controls = "".join(_field(reg.name, f, (values or {}).get(f.name, f.default)) for f in fields(reg.input_schema))
        parts.append(f'<section class="start" aria-labelledby="wf-{e(reg.name)}"><h2 id="wf-{e(reg.name)}">'
                     f'{e(reg.name)}</h2><p>{e(reg.description or "")}</p>{msg}<form method="post" '
                     f'action="/ui/start/{quote(reg.name, safe="")}">{_csrf(ctx)}{controls}<button type="submit">'
                     f'Start {e(reg.name)}</button></form></section>')
    return page("Start a run", "".join(parts), ctx)


def problem_page(title: str, message: str, ctx: Ctx) -> str:
    return page(title, f'<h1>{e(title)}</h1><p role="alert">{e(message)}</p><p><a href="/ui/">Back to runs</a></p>',
                ctx)
