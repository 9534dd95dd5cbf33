"""The JSON Schema of workflow files, version 1.

``schemas/workflow-v1.schema.json`` in the repository is generated from this
(``python -m baton.spec.schema > schemas/workflow-v1.schema.json``); a test keeps the two equal.
"""

from __future__ import annotations

import json
from typing import Any

NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
POS_INT = {"type": "integer", "minimum": 1}
POS_NUM = {"type": "number", "exclusiveMinimum": 0}

RETRY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_attempts": POS_INT,
        "initial_delay_s": {"type": "number", "minimum": 0},
        "max_delay_s": {"type": "number", "minimum": 0},
        "multiplier": {"type": "number", "minimum": 1},
        "max_retry_after_s": {"type": "number", "minimum": 0},
        "retry_timeouts": {"type": "boolean"},
    },
}

AGENT_PROPS: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1},
    "system": {"type": "string"},
    "description": {"type": "string"},
    "tools": {"type": "array", "items": NAME, "uniqueItems": True},
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
    "task_type": {"enum": ["classification", "extraction", "formatting", "synthesis", "reasoning"]},
    "tool_choice": {"type": "string", "minLength": 1,
                    "description": "first turn: 'any' (call a tool), a tool's name, or 'auto'"},
    "sections": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^[^\n#]{1,60}$"},
                 "description": "the answer's Markdown '## ' headings, in order"},
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
                              "synthesizer": NAME, "max_subtasks": POS_INT, "min_subtasks": POS_INT,
                              "max_replans": {"type": "integer", "minimum": 0}, "concurrency": POS_INT,
                              "repair_plan": {"type": "boolean"},
                              "compress_context": {"type": "object", "additionalProperties": False,
                                                   "properties": {"over_chars": POS_INT, "agent": NAME}}},
             ["planner", "workers"]),
    _pattern("fan_out", {"agents": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ref"}},
                         "each": {"type": "object", "additionalProperties": False, "required": ["agent"],
                                  "properties": {"agent": {"$ref": "#/$defs/ref"},
                                                 "over": {"enum": ["lines", "json"]}}},
                         "aggregator": NAME,
                         "policy": {"type": "string", "pattern": "^(all|best_effort|quorum:[1-9][0-9]*)$"}},
             []),
    _pattern("router", {"classifier": NAME, "routes": {"type": "object", "minProperties": 1,
                                                       "additionalProperties": {"$ref": "#/$defs/ref"}},
                        "fallback": {"$ref": "#/$defs/ref"}}, ["classifier", "routes"]),
    _pattern("consensus", {"voters": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/ref"}},
                           "judge": NAME, "vote": {"enum": ["majority", "weighted"]},
                           "weights": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
                           "shuffle": {"type": "boolean"}}, ["voters"]),
    _pattern("refine", {"drafter": NAME, "critics": {"type": "array", "minItems": 1, "items": NAME},
                        "reviser": NAME, "max_rounds": POS_INT}, ["drafter", "critics"]),
    _pattern("bus", {"subscriptions": {"type": "object", "minProperties": 1,
                                       "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                     "start": {"type": "object", "required": ["type"], "additionalProperties": False,
                               "properties": {"type": {"type": "string"}, "to": NAME, "payload": {}}},
                     "terminal": {"type": "array", "items": {"type": "string"}},
                     "max_messages": POS_INT}, ["subscriptions", "start"]),
    _pattern("handoffs", {"agents": {"type": "array", "minItems": 1, "items": NAME}, "start": NAME,
                          "max_handoffs": POS_INT}, ["agents", "start"]),
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
        "defaults": {"$ref": "#/$defs/agent"},
        "agents": {"type": "object", "propertyNames": NAME, "additionalProperties": {"$ref": "#/$defs/agent"}},
        "tools": {"type": "object", "propertyNames": NAME, "additionalProperties": {"$ref": "#/$defs/tool"}},
        "workflow": {"$ref": "#/$defs/workflow"},
        "limits": {"$ref": "#/$defs/limits"},
        "rate_limits": {"type": "object", "additionalProperties": {"$ref": "#/$defs/rate_limit"}},
        "retry": {"$ref": "#/$defs/retry"},
    },
    "$defs": {
        "agent": {"type": "object", "additionalProperties": False, "properties": AGENT_PROPS},
        "tool": {"type": "object", "additionalProperties": False, "required": ["python"], "properties": {
            "python": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                       "description": "module.path:function"},
            "description": {"type": "string"},
            "timeout_s": POS_NUM,
            "idempotent": {"type": "boolean"},
            "retryable": {"type": "boolean"},
        }},
        "ref": REF,
        "retry": RETRY,
        "limits": {"type": "object", "additionalProperties": False, "properties": {
            "budget_usd": {"type": "number", "minimum": 0},
            "budget_tokens": POS_INT,
            "budget_input_tokens": POS_INT,
            "budget_output_tokens": POS_INT,
            "max_model_calls": POS_INT,
            "max_depth": POS_INT,
            "timeout_s": POS_NUM,
            "concurrency": POS_INT,
        }},
        "rate_limit": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
            "rpm": POS_NUM, "itpm": POS_NUM, "otpm": POS_NUM}},
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
