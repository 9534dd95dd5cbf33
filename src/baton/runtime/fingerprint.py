"""What a model call asked for, recorded with its journaled result so a replay can tell
when the workflow now asks for something else (another model, system prompt, prompt,
tool set or output schema), and say which.

Each part is hashed on its own (CRC-32 of its JSON: a change detector, cheap enough for
every journaled call; the journal is not a place an attacker is kept out of by a hash),
once per call and only when the run is journaled. The model id is kept as is: it is short
and says the most.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from baton.messages import ModelRequest, message_to_dict

PARTS = ("model", "system", "messages", "tools", "output_schema")


_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_NONE = f"{zlib.crc32(b'null'):08x}"


def _digest(value: Any, option: int = 0) -> str:
    if value is None:
        return _NONE
    return f"{zlib.crc32(orjson.dumps(value, option=option, default=str)):08x}"


def request_fingerprint(request: ModelRequest) -> dict[str, str]:
    """The fingerprint of a request, part by part (stored in the step's ``meta["request"]``).
    Schemas are hashed with sorted keys (the same schema built in another order is the same);
    messages are baton's own dicts, whose order is fixed."""
    return {
        "model": request.model,
        "system": _digest(request.system),
        "messages": _digest([message_to_dict(m) for m in request.messages]),
        "tools": _digest([[t.name, t.description, t.input_schema] for t in request.tools], _SORTED)
        if request.tools else _digest([]),
        "output_schema": _digest(request.output_schema, _SORTED),
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
