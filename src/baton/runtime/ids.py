"""Run ids: checked wherever they enter (CLI, Python API), since they are echoed,
used in keys and file names, and shown in terminals."""

from __future__ import annotations

import re

from baton.errors import UsageError

RUN_ID_PATTERN = r"[A-Za-z0-9._:\-]{1,128}"
_RUN_ID = re.compile(RUN_ID_PATTERN)


def check_run_id(run_id: object, *, source: str = "run id") -> str:
    """``run_id`` if it is 1-128 characters of letters, digits and ``. _ : -``; else ``UsageError``."""
    if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id):
        return run_id
    if not isinstance(run_id, str):
        raise UsageError(f"{source} must be a string, not {type(run_id).__name__}")
    from baton.masking import printable  # deferred: error paths only, not on `import baton`

    shown = printable(run_id[:40], keep_newlines=False) + ("..." if len(run_id) > 40 else "")
    raise UsageError(f"invalid {source} '{shown}' ({len(run_id)} characters): use 1-128 letters, digits "
                     f"and . _ : - only")
