"""Which code a stored run may run again.

Stored data is inert: a run row's workflow reference never selects a module to import.
``resume`` and ``replay`` run the workflow the caller passes, or one this process
registered: a Python entry point given to ``register_workflow``, or the workflow file
the row names if that file still has the content hash recorded when the run started.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from baton.errors import UsageError

Workflow = Callable[..., Awaitable[Any]]

_lock = threading.Lock()
_by_ref: dict[str, Any] = {}
_ref_of: dict[int, str] = {}  # id(workflow) -> ref; the objects stay alive in _by_ref
SHA_KEY = "workflow_sha256"
"""The run metadata key holding the workflow file's content hash at start."""


def workflow_ref(workflow: Any) -> str:
    """What a run records about its workflow (shown by ``baton runs``; a key, never an import path to follow)."""
    with _lock:
        registered = _ref_of.get(id(workflow))
    if registered is not None:
        return registered
    ref = getattr(workflow, "baton_ref", None)
    if isinstance(ref, str):
        return ref
    module, qualname = getattr(workflow, "__module__", None), getattr(workflow, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module == "__main__":
        return f"unresolvable:{qualname or workflow!r}"
    return f"py:{module}:{qualname}"


def register_workflow(workflow: Any, *, name: str | None = None) -> Any:
    """Let ``resume``/``replay`` in this process find ``workflow`` from a run's record.

    Runs started after registration record ``registered:NAME`` when ``name`` is given
    (needed for functions defined in ``__main__`` or inside other functions), else the
    function's ``py:module:qualname``. Returns ``workflow``, so it works as a decorator.
    """
    check_signature(workflow, str(name or getattr(workflow, "__qualname__", workflow)))
    ref = f"registered:{name}" if name else workflow_ref(workflow)
    if ref.startswith("unresolvable:"):
        raise UsageError(f"cannot register {workflow!r} by its module path (it is defined in __main__ or inside "
                         f"a function): give it a name, baton.register_workflow(fn, name='...')")
    with _lock:
        existing = _by_ref.get(ref)
        if existing is not None and existing is not workflow:
            raise UsageError(f"another workflow is already registered as {ref!r}")
        _by_ref[ref] = workflow
        _ref_of[id(workflow)] = ref
    return workflow


def registered(ref: str) -> Any | None:
    with _lock:
        return _by_ref.get(ref)


_checked: dict[int, Any] = {}  # id -> workflow whose signature passed (inspect.signature costs ~0.1 ms)


def check_signature(workflow: Any, shown: str) -> None:
    """Refuse, before any run is recorded, what cannot be called as ``workflow(ctx, input)``."""
    if _checked.get(id(workflow)) is workflow:
        return
    _check_signature(workflow, shown)
    if len(_checked) >= 1024:
        _checked.clear()
    _checked[id(workflow)] = workflow


def _check_signature(workflow: Any, shown: str) -> None:
    if not callable(workflow):
        raise UsageError(f"workflow {shown} is a {type(workflow).__name__}, not a function: "
                         f"a workflow is 'async def name(ctx, input)'")
    try:
        signature = inspect.signature(workflow)
    except (TypeError, ValueError):
        return  # builtins and some callables have none: the call itself will tell
    try:
        signature.bind(None, None)
    except TypeError:
        raise UsageError(f"workflow {shown} has the signature {shown.rsplit(':', 1)[-1]}{signature}; "
                         f"a workflow takes two arguments: 'async def name(ctx, input)'") from None


FileLoader = Callable[[str, str, Any, str], Any]
"""(run_id, path, recorded sha256, command) -> the workflow file, checked against its recorded hash."""


def for_record(run_id: str, ref: str, metadata: dict[str, Any], command: str,
               files: FileLoader | None = None) -> Any:
    """The workflow to resume or replay a run with when the caller named none.

    ``files`` loads a ``yaml:PATH`` ref (the spec layer provides it; the runtime does not
    import the spec); without it such a run must be given its workflow explicitly.
    """
    found = registered(ref)
    if found is not None:
        return found
    kind, _, rest = ref.partition(":")
    how = (f"pass the workflow explicitly (baton {command} {run_id} --workflow FILE_OR_MODULE:FUNCTION; "
           f"in Python baton.{command}(run_id, workflow))")
    if kind == "yaml" and rest and files is not None:
        return files(run_id, rest, metadata.get(SHA_KEY), command)
    if kind == "py":
        raise UsageError(f"run {run_id} was started from the Python workflow {rest!r}; baton never imports code "
                         f"named by stored data: {how.replace('FILE_OR_MODULE:FUNCTION', rest)}, or register it "
                         f"in this process with baton.register_workflow")
    raise UsageError(f"run {run_id} names the workflow {ref!r}, which is not registered in this process: {how}")
