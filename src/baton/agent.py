"""Agent: configuration of one Claude agent, and its tool-use loop.

The loop is plain: ask the model; if it asked for tools, run them all concurrently
and send every result back in one user message; repeat until it answers or runs out
of turns. Every model turn and tool call goes through the run context, which makes
it a journaled, budgeted, retried and observed step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from baton.errors import MaxTurnsExceeded, ModelBehaviorError, UsageError
from baton.messages import (
    Message,
    ModelRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Usage,
)
from baton.schema import is_pydantic_model, schema_of, validation_errors
from baton.tools import Tool

if TYPE_CHECKING:
    from baton.context import RunContext

FINAL_TOOL = "final_answer"
"""The tool through which an agent with an output schema returns its structured answer."""


@dataclass(slots=True)
class Agent:
    name: str
    system: str = ""
    model: str = "claude-sonnet-4-6"
    tools: list[Tool] = field(default_factory=list)
    output: Any = None
    """A pydantic model class or a JSON Schema dict: enforced through forced tool use."""
    description: str = ""
    """What this agent is for; planners and routers see it."""
    temperature: float | None = None
    max_tokens: int = 1024
    max_turns: int = 10
    output_retries: int = 2
    """How often invalid structured output is re-asked with the validation errors."""
    timeout_s: float | None = None
    """Timeout of one model call (the run's retry policy decides what happens next)."""
    agent_timeout_s: float | None = None
    """Timeout of all of this agent's turns together."""
    retry: Any = None
    """A ``baton.runtime.retry.RetryPolicy`` overriding the run's default."""
    fallback_models: list[str] = field(default_factory=list)
    cache_prompt: bool = False
    """Mark the system prompt and tools as an Anthropic prompt-cache prefix."""
    task_type: str | None = None
    """classification / extraction / formatting / synthesis / reasoning: used by model routing."""
    tool_choice: str | None = None
    """The first turn only: ``any`` (call one of the tools), a tool's name (call that one), or
    ``auto``/None (the model decides). Later turns are free, so the agent can still answer."""
    sections: list[str] | None = None
    """The answer is Markdown with exactly these ``## `` headings, in this order (the system
    prompt says so; the embedded local model decodes it under a grammar)."""
    _version: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tools]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise UsageError(f"agent {self.name!r} has duplicate tools: {sorted(dupes)}")
        if self.output is not None and FINAL_TOOL in names:
            raise UsageError(f"agent {self.name!r}: the tool name {FINAL_TOOL!r} is reserved for structured output")
        if self.output is not None:
            schema_of(self.output)  # fail now, not on first call
        if self.tool_choice not in (None, "auto", "any", *names):
            raise UsageError(f"agent {self.name!r}: tool_choice {self.tool_choice!r} is not 'auto', 'any' "
                             f"or one of its tools ({', '.join(names) or 'it has none'})")

    @property
    def output_schema(self) -> dict[str, Any] | None:
        return None if self.output is None else schema_of(self.output)

    def tool_specs(self) -> list[ToolSpec]:
        specs = [t.spec() for t in self.tools]
        schema = self.output_schema
        if schema is not None:
            specs.append(ToolSpec(FINAL_TOOL, "Return your final answer in this exact structure.", schema))
        if self.cache_prompt and specs:
            last = specs[-1]
            specs[-1] = ToolSpec(last.name, last.description, last.input_schema, {"type": "ephemeral"})
        return specs

    @property
    def prompt_version(self) -> str:
        """Hash of system prompt, tool schemas, output schema and model: what a prompt change changes."""
        if self._version is None:
            fields: dict[str, Any] = {"system": self.system, "model": self.model,
                                      "tools": [(t.name, t.description, t.input_schema) for t in self.tools],
                                      "output": self.output_schema}
            if self.sections:  # only when set: existing agents keep their versions
                fields["sections"] = self.sections
            payload = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
            self._version = hashlib.sha256(payload).hexdigest()[:12]
        return self._version

    def with_(self, **changes: Any) -> Agent:
        """A copy with some fields changed (and a fresh prompt version)."""
        from dataclasses import fields as dc_fields

        values = {f.name: getattr(self, f.name) for f in dc_fields(self) if not f.name.startswith("_")}
        values.update(changes)
        return Agent(**values)


@dataclass(slots=True)
class AgentResult:
    agent: str
    output: Any
    """Text, or the validated structured output (a pydantic instance when ``output`` is a model)."""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    turns: int = 0
    messages: list[Message] = field(default_factory=list)

    @property
    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        if hasattr(self.output, "model_dump_json"):
            return str(self.output.model_dump_json())
        return orjson.dumps(self.output).decode()

    def output_json(self) -> Any:
        """The output as JSON-able data (what the journal stores)."""
        if hasattr(self.output, "model_dump"):
            return self.output.model_dump(mode="json")
        return self.output


def render_input(input: Any) -> str:
    if isinstance(input, str):
        return input
    if hasattr(input, "model_dump"):
        input = input.model_dump(mode="json")
    return orjson.dumps(input, option=orjson.OPT_INDENT_2).decode()


def _system(agent: Agent) -> str | list[dict[str, Any]] | None:
    text = agent.system
    if agent.sections:
        headings = ", ".join(f"## {name}" for name in agent.sections)
        text = f"{text}\n\nFormat: Markdown with exactly these headings, in this order: {headings}.".strip()
    if not text:
        return None
    if agent.cache_prompt:
        return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
    return text


def _turn_request(agent: Agent, messages: list[Message], specs: list[ToolSpec],
                  choice: ToolChoice | None) -> ModelRequest:
    return ModelRequest(
        model=agent.model, messages=list(messages), system=_system(agent), tools=specs, tool_choice=choice,
        max_tokens=agent.max_tokens, temperature=agent.temperature, output_schema=agent.output_schema,
        timeout_s=agent.timeout_s, metadata={"sections": list(agent.sections)} if agent.sections else {},
    )


def _first_choice(agent: Agent) -> ToolChoice | None:
    """The ``tool_choice`` of an agent's first turn when it asks for one."""
    if agent.tool_choice in (None, "auto") or not agent.tools:
        return None
    return ToolChoice("any") if agent.tool_choice == "any" else ToolChoice("tool", agent.tool_choice)


def _parse_output(agent: Agent, raw: Any) -> tuple[Any, list[str]]:
    schema = agent.output_schema
    assert schema is not None
    errors = validation_errors(raw, schema)
    if errors:
        return None, errors
    if is_pydantic_model(agent.output):
        from pydantic import ValidationError

        try:
            return agent.output.model_validate(raw), []
        except ValidationError as exc:
            return None, [f"{'/'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()]
    return raw, []


def output_from_json(agent: Agent, value: Any) -> Any:
    """Rebuild an output from its journaled JSON (pydantic instance when the agent declares one)."""
    if agent.output is not None and is_pydantic_model(agent.output) and value is not None:
        return agent.output.model_validate(value)
    return value


async def run_agent_loop(ctx: RunContext, key: str, agent: Agent, input: Any,
                         extra_tools: list[Tool] | None = None) -> AgentResult:
    """The tool-use loop of one agent call. ``key`` is the call's journal key."""
    tools = {t.name: t for t in [*agent.tools, *(extra_tools or [])]}
    specs = agent.tool_specs() + [t.spec() for t in (extra_tools or [])]
    structured = agent.output is not None
    choice: ToolChoice | None
    if structured:
        # Force a tool call every turn: a real tool, or final_answer when done.
        choice = ToolChoice("any") if tools else ToolChoice("tool", FINAL_TOOL)
    else:
        choice = ToolChoice("auto") if specs else None
    messages: list[Message] = [Message.user(render_input(input))]
    usage = Usage()
    cost = 0.0
    output_errors = 0
    first = None if structured else _first_choice(agent)
    for turn in range(agent.max_turns):
        request = _turn_request(agent, messages, specs, first if turn == 0 and first is not None else choice)
        response, call_cost = await ctx._runtime.model_call(ctx, agent, f"{key}/m{turn}", request)
        usage.add(response.usage)
        cost += call_cost or 0.0
        messages.append(Message("assistant", list(response.content)))
        uses = response.tool_uses
        final = next((u for u in uses if u.name == FINAL_TOOL), None) if structured else None
        if final is not None:
            value, errors = _parse_output(agent, final.input)
            if not errors:
                return AgentResult(agent.name, value, usage, cost, turn + 1, messages)
            output_errors += 1
            if output_errors > agent.output_retries:
                raise ModelBehaviorError(
                    f"agent {agent.name!r} returned output that does not match its schema after "
                    f"{output_errors} attempts: " + "; ".join(errors), raw_output=final.input, errors=errors)
            feedback: list[TextBlock | ToolUseBlock | ToolResultBlock] = [
                ToolResultBlock(u.id, "Not run: fix the final answer first." if u is not final else
                                "Your answer does not match the required schema:\n- " + "\n- ".join(errors)
                                + "\nCall final_answer again with a corrected answer.", is_error=True)
                for u in uses
            ]
            messages.append(Message("user", list(feedback)))
            continue
        if not uses:
            if structured:
                # The model answered in prose; ask for the structured form.
                output_errors += 1
                if output_errors > agent.output_retries:
                    raise ModelBehaviorError(f"agent {agent.name!r} never called {FINAL_TOOL}",
                                             raw_output=response.text)
                messages.append(Message.user(f"Call the {FINAL_TOOL} tool with your answer."))
                continue
            return AgentResult(agent.name, response.text, usage, cost, turn + 1, messages)
        results = await ctx._runtime.run_tools(ctx, agent, f"{key}/t{turn}", uses, tools)
        messages.append(Message("user", list(results)))
    raise MaxTurnsExceeded(f"agent {agent.name!r} used all {agent.max_turns} turns without a final answer "
                           f"(chain: {' > '.join(ctx.chain) or agent.name})")
