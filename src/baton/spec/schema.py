"""The JSON Schema of workflow files, version 1.

``schemas/workflow-v1.schema.json`` in the repository is generated from this
(``python -m baton.spec.schema > schemas/workflow-v1.schema.json``); a test keeps the two equal.
"""

from __future__ import annotations

import json
from typing import Any

from baton.patterns._settings import (
    BusSettings,
    CompressorSettings,
    ConsensusSettings,
    FanOutSettings,
    HandoffsSettings,
    OrchestratorSettings,
    RefineSettings,
)
from baton.runtime.breaker import BreakerSettings
from baton.runtime.budget import Limits
from baton.runtime.ratelimit import RateLimits
from baton.runtime.retry import RetryPolicy
from baton.settings import settings_props, settings_schema

NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
POS_INT = {"type": "integer", "minimum": 1}
POS_NUM = {"type": "number", "exclusiveMinimum": 0}

# Settings are declared once, on their dataclasses (``baton.settings``); these derive from them,
# as do the patterns' settings below.
RETRY = settings_schema(RetryPolicy)
LIMITS = settings_schema(Limits)
RATE_LIMIT = settings_schema(RateLimits, min_properties=1)
BREAKER = settings_schema(BreakerSettings)

AGENT_PROPS: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "system": {"type": "string"},
    "description": {"type": "string"},
    "tools": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}(\\.[A-Za-z0-9_./-]{1,128})?$",
                                         "description": "a tool, an MCP server (all its tools) or SERVER.TOOL"},
              "uniqueItems": True},
    "knowledge": {"type": "array", "items": NAME, "uniqueItems": True,
                  "description": "knowledge bases this agent can search (one search_NAME tool each)"},
    "memory": {"type": "string", "pattern": "^[A-Za-z0-9_.:@/-]{1,200}$",
               "description": "a long-term memory namespace: the agent gets remember/recall/forget tools"},
    "output": {"type": "object", "description": "JSON Schema of the agent's structured output"},
    "max_tokens": POS_INT,
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "max_turns": POS_INT,
    "output_retries": {"type": "integer", "minimum": 0},
    "timeout_s": POS_NUM,
    "agent_timeout_s": POS_NUM,
    "retry": {"$ref": "#/$defs/retry"},
    "fallback_models": {"type": "array", "items": {"type": "string"}},
    "cache_prompt": {"type": "boolean"},
    "batch": {"type": "boolean",
              "description": "send this agent's calls through the Message Batches API (half price, not urgent)"},
    "task_type": {"enum": ["classification", "extraction", "formatting", "synthesis", "reasoning"]},
    "tool_choice": {"type": "string", "minLength": 1,
                    "description": "first turn: 'any' (call a tool), a tool's name, or 'auto'"},
    "sections": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[^\n#]{1,60}$"},
                 "description": "the answer's Markdown '## ' headings, in order"},
}

_UNIT = {"type": "number", "minimum": 0, "maximum": 1}
ROUTING = {
    "type": "object", "additionalProperties": False,
    "description": "how agents with model: auto pick a model (by task_type, a heuristic, or an assessor's rating)",
    "properties": {
        "assess": {"type": "boolean", "description": "ask the assessor model to rate each task's complexity"},
        "assessor": {"type": "string", "minLength": 1},
        "cheap": {"type": "string", "minLength": 1},
        "standard": {"type": "string", "minLength": 1},
        "strong": {"type": "string", "minLength": 1},
        "cheap_below": _UNIT, "strong_above": _UNIT, "assess_cheap_below": _UNIT, "assess_strong_above": _UNIT,
    },
}

MCP = {
    "type": "object", "additionalProperties": False,
    "description": "an MCP server: command + args (stdio) or url (streamable HTTP)",
    "oneOf": [{"required": ["command"]}, {"required": ["url"]}],
    "properties": {
        "command": {"type": "string", "minLength": 1},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "cwd": {"type": "string"},
        "url": {"type": "string", "pattern": "^https?://"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "connect_timeout_s": POS_NUM,
        "max_restarts": {"type": "integer", "minimum": 0},
    },
}

KNOWLEDGE = {
    "type": "object", "additionalProperties": False, "required": ["path"],
    "properties": {
        "path": {"oneOf": [{"type": "string", "minLength": 1},
                           {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}],
                 "description": "glob(s) relative to the workflow file, e.g. docs/**/*.md"},
        "description": {"type": "string"},
        "store": {"type": "string", "description": "index store URL (default: BATON_STORE or the default store)"},
        "retrieval": {"enum": ["bm25", "dense", "hybrid"]},
        "embedder": {"type": "string", "description": "module:callable returning an embedder, or 'minilm'"},
        "chunk_chars": {"type": "integer", "minimum": 200},
        "overlap_chars": {"type": "integer", "minimum": 0},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
    },
}

REF = {
    "description": "An agent name, or {workflow: FILE} for a nested workflow",
    "oneOf": [
        NAME,
        {"type": "object", "required": ["workflow"], "additionalProperties": False,
         "properties": {"workflow": {"type": "string", "minLength": 1}}},
    ],
}


def _pattern(name: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "if": {"properties": {"pattern": {"const": name}}, "required": ["pattern"]},
        "then": {
            "properties": {"pattern": {"const": name}, **props},
            "required": ["pattern", *required],
            "additionalProperties": False,
        },
    }


PATTERNS = [
    _pattern("agent", {"agent": {"$ref": "#/$defs/ref"}}, ["agent"]),
    _pattern("pipeline", {"stages": {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"$ref": "#/$defs/ref"},
        {"type": "object", "additionalProperties": False, "properties": {
            "agent": NAME, "workflow": {"type": "string"}, "gate": NAME, "name": NAME},
         "oneOf": [{"required": ["agent"]}, {"required": ["workflow"]}]},
    ]}}}, ["stages"]),
    _pattern("orchestrator", {"planner": NAME, "workers": {"type": "array", "minItems": 1,
                                                           "items": {"$ref": "#/$defs/ref"}},
                              "synthesizer": NAME, **settings_props(OrchestratorSettings),
                              "compress_context": {"type": "object", "additionalProperties": False,
                                                   "properties": {**settings_props(CompressorSettings), "agent": NAME}}},
             ["planner", "workers"]),
    _pattern("fan_out", {"agents": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ref"}},
                         "each": {"type": "object", "additionalProperties": False, "required": ["agent"],
                                  "properties": {"agent": {"$ref": "#/$defs/ref"},
                                                 "over": {"enum": ["lines", "json"]}}},
                         "aggregator": NAME, **settings_props(FanOutSettings),
                         "policy": {"type": "string", "pattern": "^(all|best_effort|quorum:[1-9][0-9]*)$"}},
             []),
    _pattern("router", {"classifier": NAME, "routes": {"type": "object", "minProperties": 1,
                                                       "additionalProperties": {"$ref": "#/$defs/ref"}},
                        "fallback": {"$ref": "#/$defs/ref"}}, ["classifier", "routes"]),
    _pattern("consensus", {"voters": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ref"}},
                           "judge": NAME, "vote": {"enum": ["majority", "weighted"]},
                           "weights": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
                           **settings_props(ConsensusSettings)}, ["voters"]),
    _pattern("refine", {"drafter": NAME, "critics": {"type": "array", "minItems": 1, "items": NAME},
                        "reviser": NAME, **settings_props(RefineSettings)},
             ["drafter", "critics"]),
    _pattern("bus", {"subscriptions": {"type": "object", "minProperties": 1,
                                       "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                     "start": {"type": "object", "required": ["type"], "additionalProperties": False,
                               "properties": {"type": {"type": "string"}, "to": NAME, "payload": {}}},
                     "terminal": {"type": "array", "items": {"type": "string"}},
                     **settings_props(BusSettings)}, ["subscriptions", "start"]),
    _pattern("handoffs", {"agents": {"type": "array", "minItems": 1, "items": NAME}, "start": NAME,
                          **settings_props(HandoffsSettings)}, ["agents", "start"]),
    _pattern("fallback", {"chain": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ref"}},
                          "gate": NAME}, ["chain"]),
]

PATTERN_NAMES = ["agent", "pipeline", "orchestrator", "fan_out", "router", "consensus", "refine", "bus",
                 "handoffs", "fallback"]

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/baton-agents/baton/schemas/workflow-v1.schema.json",
    "title": "baton workflow file, version 1",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "name", "workflow"],
    "properties": {
        "version": {"const": 1},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,100}$"},
        "description": {"type": "string"},
        "input": {"type": "object", "description": "JSON Schema of the workflow's input (baton serve checks it)"},
        "defaults": {"$ref": "#/$defs/agent"},
        "agents": {"type": "object", "propertyNames": NAME, "additionalProperties": {"$ref": "#/$defs/agent"}},
        "tools": {"type": "object", "propertyNames": NAME, "additionalProperties": {"$ref": "#/$defs/tool"}},
        "workflow": {"$ref": "#/$defs/workflow"},
        "limits": {"$ref": "#/$defs/limits"},
        "rate_limits": {"type": "object", "additionalProperties": {"$ref": "#/$defs/rate_limit"}},
        "retry": {"$ref": "#/$defs/retry"},
        "breaker": {"$ref": "#/$defs/breaker"},
        "routing": ROUTING,
        "knowledge": {"type": "object", "propertyNames": NAME, "additionalProperties": {"$ref": "#/$defs/knowledge"}},
    },
    "$defs": {
        "agent": {"type": "object", "additionalProperties": False, "properties": AGENT_PROPS},
        "tool": {"type": "object", "additionalProperties": False,
                 "oneOf": [{"required": ["python"]}, {"required": ["mcp"]}], "properties": {
            "python": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                       "description": "module.path:function"},
            "mcp": MCP,
            "description": {"type": "string"},
            "timeout_s": POS_NUM,
            "idempotent": {"type": "boolean"},
            "retryable": {"type": "boolean"},
            "max_result_chars": POS_INT,
        }},
        "ref": REF,
        "knowledge": KNOWLEDGE,
        "retry": RETRY,
        "limits": LIMITS,
        "rate_limit": RATE_LIMIT,
        "breaker": BREAKER,
        "workflow": {
            "type": "object",
            "required": ["pattern"],
            "properties": {"pattern": {"enum": PATTERN_NAMES}},
            "allOf": PATTERNS,
        },
    },
}


if __name__ == "__main__":
    print(json.dumps(SCHEMA, indent=2))
