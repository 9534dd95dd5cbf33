"""The top-level entry points: ``baton.run``, ``baton.resume``, ``baton.replay``, ``baton.approve``."""

from __future__ import annotations

import asyncio
from typing import Any

from baton.errors import UsageError
from baton.runtime.budget import Limits
from baton.runtime.engine import Engine, RunResult, Workflow, decide
from baton.runtime.workflows import register_workflow

__all__ = ["approve", "fork", "load_recorded_file", "register_workflow", "replay", "resume", "run", "run_sync"]


def load_recorded_file(run_id: str, path: str, recorded: Any, command: str) -> Any:
    """A run's workflow file, only while its content is what the run recorded (spec loads lazily)."""
    from baton.spec.build import load_recorded_file as load

    return load(run_id, path, recorded, command)


def _engine(kw: dict[str, Any]) -> Engine:
    fields = {"store", "model", "models", "provider", "sinks", "retry", "governor", "breakers", "cache",
              "cache_ttl_s", "sleep", "batch", "router"}
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; expected one of {sorted(fields)}")
    return Engine(**kw, files=load_recorded_file)


async def run(workflow: Workflow, input: Any = None, *, run_id: str | None = None, limits: Limits | None = None,
              metadata: dict[str, Any] | None = None, engine: str = "local", **options: Any) -> RunResult:
    """Run ``workflow(ctx, input)`` durably and return its result.

    Options: ``store`` (URL or Store; default ``BATON_STORE`` or ``sqlite:///.baton/baton.db``),
    ``model`` (one Model for every agent), ``models`` (id -> Model), ``provider``, ``sinks``,
    ``retry``, ``governor``, ``breakers``, ``cache``, ``cache_ttl_s``, ``batch`` (a
    ``baton.runtime.batch.BatchOptions``, e.g. ``detach=True``), ``router`` (a
    ``baton.runtime.routing.ModelRouter`` for ``model: auto``).

    ``engine="temporal"`` runs it on Temporal workers instead (docs/scaling.md); its options are
    ``temporal`` (HOST:PORT), ``namespace``, ``task_queue``, ``store`` and ``call_options``.
    """
    if engine == "temporal":
        from baton.temporal.client import engine_from_options

        return await engine_from_options(options).run(workflow, input, run_id=run_id, limits=limits,
                                                      metadata=metadata)
    if engine != "local":
        raise UsageError(f"unknown engine {engine!r}; expected 'local' or 'temporal'")
    return await _engine(options).run(workflow, input, run_id=run_id, limits=limits, metadata=metadata)


async def resume(run_id: str, workflow: Workflow | None = None, *, force: bool = False,
                 budget_usd: float | None = None, budget_tokens: int | None = None,
                 max_model_calls: int | None = None, timeout_s: float | None = None, **options: Any) -> RunResult:
    """Continue a stopped run from its journal; completed steps are not executed again.

    Without ``workflow``, the run's own workflow is used only if this process registered it
    (``baton.register_workflow``) or it is a workflow file whose content is unchanged since
    the run started: a module path stored in a run is never imported.
    """
    return await _engine(options).resume(run_id, workflow, force=force, budget_usd=budget_usd,
                                         budget_tokens=budget_tokens, max_model_calls=max_model_calls,
                                         timeout_s=timeout_s)


async def replay(run_id: str, workflow: Workflow | None = None, **options: Any) -> RunResult:
    """Re-execute against the journal only; raises ``ReplayDivergence`` at the first differing step.

    ``workflow`` is found as for ``resume`` when not given."""
    return await _engine(options).replay(run_id, workflow)


async def approve(run_id: str, step: str, *, approved: bool = True, edit: Any = None, by: str | None = None,
                  note: str | None = None, store: Any = None) -> None:
    """Record a human decision for a paused step; ``resume`` then continues past it."""
    await decide(run_id, step, approved=approved, edit=edit, by=by, note=note, store=store)


async def fork(run_id: str, *, at: str, edit: Any = None, workflow: Workflow | None = None,
               new_run_id: str | None = None, **options: Any) -> RunResult:
    """A new run that reuses run ``run_id``'s journal before step ``at``, takes ``edit`` as the
    result of ``at`` (a model step: its text) or executes ``at`` again (``edit=None``), and
    continues with the same workflow (found as for ``resume``). The parent run is untouched."""
    from baton.runtime.fork import fork as fork_run

    return await fork_run(_engine(options), run_id, at, edit=edit, workflow=workflow, new_run_id=new_run_id)


def run_sync(workflow: Workflow, input: Any = None, **kwargs: Any) -> RunResult:
    """``run`` for synchronous code. Refuses to run inside an event loop (use ``await baton.run``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run(workflow, input, **kwargs))
    raise UsageError("baton.run_sync was called inside a running event loop; use 'await baton.run(...)' instead")
