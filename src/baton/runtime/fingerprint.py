"""What a model call asked for, recorded with its journaled result so a replay can tell
when the workflow now asks for something else (another model, system prompt, prompt,
tool set or output schema), and say which.

Each part is hashed on its own (BLAKE2b, 8 bytes, over canonical JSON), once per call and
only when the run is journaled. The model id is kept as is: it is short and says the most.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from baton.messages import ModelRequest, message_to_dict

PARTS = ("model", "system", "messages", "tools", "output_schema")


def _digest(value: Any) -> str:
    blob = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def request_fingerprint(request: ModelRequest) -> dict[str, str]:
    """The fingerprint of a request, part by part (stored in the step's ``meta["request"]``)."""
    return {
        "model": request.model,
        "system": _digest(request.system),
        "messages": _digest([message_to_dict(m) for m in request.messages]),
        "tools": _digest([[t.name, t.description, t.input_schema] for t in request.tools]),
        "output_schema": _digest(request.output_schema),
    }


def differences(recorded: Any, now: dict[str, str]) -> list[str]:
    """The parts in which ``now`` differs from a recorded fingerprint, described for an error.
    A step journaled before fingerprints existed (no record) differs in nothing."""
    if not isinstance(recorded, dict):
        return []
    out = []
    for part in PARTS:
        before = recorded.get(part)
        if before is None or before == now[part]:
            continue
        out.append(f"model (journal {before!r}, now {now[part]!r})" if part == "model" else part)
    return out
