// baton web UI: live updates for the runs list and the run page. Hand-written, no
// dependencies. Pages work without it (forms post, links navigate); it only refreshes.
"use strict";
(function () {
  const ACTIVE = new Set(["pending", "running"]);
  // Awaiting a decision: polled slowly (a decision made elsewhere continues the run), and the
  // forms are not swapped while the status stays, so nothing typed into them is lost.
  const WATCHED = new Set(["pending", "running", "awaiting_approval"]);
  const KINDS = ["run.start", "run.end", "agent.start", "agent.end", "model.request", "model.response",
    "model.error", "tool.call", "tool.result", "tool.denied", "step.start", "step.end", "retry",
    "rate_limit.wait", "approval.requested", "approval.decided", "handoff", "plan.invalid",
    "plan.repaired", "state.change", "run.warning", "text.delta"];

  // Swap new markup in, keeping what the person was doing: focus, open details, ticked boxes.
  function swap(el, markup) {
    const focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement.id : null;
    const open = new Set([...el.querySelectorAll("details[open]")].map((d) => d.closest("[data-step]")?.dataset.step));
    const ticked = new Set([...el.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value));
    el.innerHTML = markup;
    el.querySelectorAll("[data-step]").forEach((row) => {
      if (open.has(row.dataset.step)) row.querySelector("details")?.setAttribute("open", "");
    });
    el.querySelectorAll("input[type=checkbox]").forEach((c) => { c.checked = ticked.has(c.value); });
    if (focused) document.getElementById(focused)?.focus();
  }

  async function fetchInto(el, url, unlessStatus) {
    const resp = await fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}});
    if (resp.redirected || resp.status === 401) { window.location.reload(); return null; }
    if (!resp.ok) return null;
    const markup = await resp.text();
    if (!unlessStatus || resp.headers.get("X-Run-Status") !== unlessStatus) swap(el, markup);
    return resp;
  }

  function pollList(el) {
    const tick = async () => {
      if (!document.hidden) { try { await fetchInto(el, el.dataset.poll); } catch (e) { /* next tick */ } }
      setTimeout(tick, 3000);
    };
    setTimeout(tick, 3000);
  }

  function watchRun(el) {
    const id = encodeURIComponent(el.dataset.run);
    let timer = null;
    let polling = false;
    const refresh = async () => {
      timer = null;
      const keep = el.dataset.status === "awaiting_approval";
      const resp = await fetchInto(el, `/ui/runs/${id}/main`, keep ? "awaiting_approval" : null).catch(() => null);
      const st = resp ? resp.headers.get("X-Run-Status") : null;
      if (st) { el.dataset.status = st; el.dataset.active = WATCHED.has(st) ? "1" : "0"; }
      return st;
    };
    const soon = () => { if (!timer) timer = setTimeout(refresh, 300); };
    const poll = async () => {
      if (polling) return;
      polling = true;
      while (true) {
        const st = await refresh();
        if (st && !WATCHED.has(st)) break;
        await new Promise((r) => setTimeout(r, st === "awaiting_approval" ? 3000 : 1500));
      }
      polling = false;
    };
    if (el.dataset.live !== "1" || !window.EventSource || !ACTIVE.has(el.dataset.status)) { poll(); return; }
    const es = new EventSource(`/ui/runs/${id}/events?last_event_id=${el.dataset.seq || 0}`);
    const text = document.getElementById("live-text");
    KINDS.forEach((kind) => es.addEventListener(kind, (msg) => {
      if (kind === "text.delta") {
        document.getElementById("live-section").hidden = false;
        try { text.textContent += JSON.parse(msg.data).text || ""; } catch (e) { /* not JSON */ }
        return;
      }
      if (kind === "run.end") { es.close(); refresh().then((st) => { if (!st || ACTIVE.has(st)) poll(); }); return; }
      soon();
    }));
    es.onerror = () => { es.close(); poll(); };
  }

  document.addEventListener("DOMContentLoaded", () => {
    const list = document.getElementById("runs");
    if (list && list.dataset.poll) pollList(list);
    const run = document.getElementById("run");
    if (run && run.dataset.active === "1") watchRun(run);
  });
})();
