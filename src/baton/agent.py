"""Agent: configuration of one Claude agent, and its tool-use loop.

The loop is plain: ask the model; if it asked for tools, run them all concurrently
and send every result back in one user message; repeat until it answers or runs out
of turns. Every model turn and tool call goes through the run context, which makes
it a journaled, budgeted, retried and observed step.

Bad model output never passes as an answer. The loop reads ``stop_reason``: a text
answer cut off at ``max_tokens`` is continued (at most ``max_continuations`` journaled
calls; the cut-off text goes back as the start of the reply where the provider
continues it, else with a note asking to continue), a cut-off tool call or structured
answer is re-asked, and a refusal is tried on the fallback models before it fails as
``ModelRefused``. An empty answer, prose
instead of ``final_answer`` and schema-invalid output are re-asked (``output_retries``).
A tool called with the same input ``max_repeats`` times in a row is not run again: the
model is told once, and the next repeat stops the agent with ``ToolLoopDetected``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import orjson

from baton.errors import (
    MaxTurnsExceeded,
    ModelBehaviorError,
    ModelRefused,
    OutputTruncated,
    ToolLoopDetected,
    UsageError,
)
from baton.json_schema import is_pydantic_model, schema_of, validation_errors
from baton.messages import (
    Message,
    ModelRequest,
    ModelResponse,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Usage,
)
from baton.models.base import Model
from baton.tools import Tool


class LoopScope(Protocol):
    """What the tool-use loop needs from the run context it runs in (``baton.RunContext``)."""

    @property
    def chain(self) -> tuple[str, ...]: ...

    def ask_model(self, agent: Agent, key: str,
                  request: ModelRequest) -> Awaitable[tuple[ModelResponse, float | None]]: ...

    def run_tools(self, agent: Agent, prefix: str, uses: list[ToolUseBlock],
                  tools: Mapping[str, Tool]) -> Awaitable[list[ToolResultBlock]]: ...

    def model_adapter(self, model_id: str) -> Model | None: ...

FINAL_TOOL = "final_answer"
"""The tool through which an agent with an output schema returns its structured answer."""


@dataclass(slots=True)
class Agent:
    """An agent: a model, a system prompt, its tools and output schema, and the limits of its
    tool-use loop. Run it with ``ctx.call(agent, input)`` (or ``baton.run`` for one call)."""

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
    """How often bad output is re-asked: schema-invalid, empty, prose instead of final_answer, cut off."""
    max_continuations: int = 2
    """How often a text answer cut off at ``max_tokens`` is continued before ``OutputTruncated``."""
    max_repeats: int = 3
    """A tool call repeated this many times in a row with identical input is not run (0: no check)."""
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
    batch: bool = False
    """Send this agent's model calls through the Message Batches API: half price, not urgent
    (``baton.runtime.batch``); adapters without batches send them normally."""
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
        values = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        values.update(changes)
        return Agent(**values)


@dataclass(slots=True)
class AgentResult:
    """What ``ctx.call`` returns: the agent's output, its usage and cost, turns and messages."""

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


TRUNCATED = ("max_tokens", "model_context_window_exceeded")
"""Stop reasons that mean the answer was cut off."""

ContentList = list[TextBlock | ToolUseBlock | ToolResultBlock]

PREFILL_PROVIDERS = frozenset({"anthropic", "scripted"})
"""Providers whose models continue a trailing assistant message (chat-template models start a new turn)."""
CONTINUE_NOTE = ("Your answer was cut off at the output limit. Continue exactly where it stopped: do not repeat "
                 "anything, do not add a preamble.")


class _Reask(Exception):
    """Internal: the turn's output was bad; ``kind`` and ``detail`` say how."""

    def __init__(self, kind: str, detail: str, errors: list[str] | None = None, raw: Any = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.errors, self.raw = kind, detail, errors or [], raw


def _sanitized(content: list[Any]) -> ContentList:
    """The assistant turn as it can be sent back: no empty text, tool inputs always objects."""
    out: ContentList = []
    for b in content:
        if isinstance(b, TextBlock) and not b.text.strip():
            continue
        if isinstance(b, ToolUseBlock) and not isinstance(b.input, dict):
            b = ToolUseBlock(b.id, b.name, {})
        out.append(b)
    return out


def _signature(uses: list[ToolUseBlock]) -> bytes:
    return orjson.dumps([(u.name, u.input) for u in uses], option=orjson.OPT_SORT_KEYS)


class _Loop:
    """The state of one agent call's tool-use loop."""

    def __init__(self, ctx: LoopScope, key: str, agent: Agent, input: Any, extra_tools: list[Tool] | None) -> None:
        self.ctx, self.key, self.agent = ctx, key, agent
        self.tools = {t.name: t for t in [*agent.tools, *(extra_tools or [])]}
        self.specs = agent.tool_specs() + [t.spec() for t in (extra_tools or [])]
        self.structured = agent.output is not None
        self.choice: ToolChoice | None
        if self.structured:
            # Force a tool call every turn: a real tool, or final_answer when done.
            self.choice = ToolChoice("any") if self.tools else ToolChoice("tool", FINAL_TOOL)
        else:
            self.choice = ToolChoice("auto") if self.specs else None
        self.first = None if self.structured else _first_choice(agent)
        """The first turn's tool_choice when the agent asks for one (``Agent.tool_choice``)."""
        self.messages: list[Message] = [Message.user(render_input(input))]
        self.usage = Usage()
        self.cost = 0.0
        self.reasks = 0
        self.last_bad: _Reask | None = None
        self.repeat_sig = b""
        self.repeats = 0
        self.warned = False

    def request(self, messages: list[Message], *, first_turn: bool = False) -> ModelRequest:
        choice = self.first if first_turn and self.first is not None else self.choice
        return _turn_request(self.agent, messages, self.specs, choice)

    async def ask(self, key: str, request: ModelRequest) -> ModelResponse:
        """One model turn; a refusal is tried again on each fallback model before it fails."""
        response, cost = await self.ctx.ask_model(self.agent, key, request)
        self.usage.add(response.usage)
        self.cost += cost or 0.0
        tried = [request.model]
        for n, fallback in enumerate(self.agent.fallback_models, 1):
            if response.stop_reason != "refusal":
                break
            if fallback in tried:
                continue
            tried.append(fallback)
            response, cost = await self.ctx.ask_model(self.agent, f"{key}r{n}", replace(request, model=fallback))
            self.usage.add(response.usage)
            self.cost += cost or 0.0
        if response.stop_reason == "refusal":
            said = " ".join(response.text.split())[:200]
            raise ModelRefused(f"agent {self.agent.name!r} was refused by the model (stop_reason refusal) on "
                               f"{', '.join(tried)}" + (f": {said}" if said else ""),
                               agent=self.agent.name, models=tried, raw_output=response.text)
        return response

    def result(self, output: Any, turn: int) -> AgentResult:
        return AgentResult(self.agent.name, output, self.usage, self.cost, turn + 1, self.messages)

    async def turn(self, turn: int) -> AgentResult | None:
        """One turn: the final result, or None to go on."""
        response = await self.ask(f"{self.key}/m{turn}", self.request(list(self.messages), first_turn=turn == 0))
        try:
            return await self._judge(response, turn)
        except _Reask as bad:
            self._reask(response, bad)
            return None

    async def _judge(self, response: ModelResponse, turn: int) -> AgentResult | None:
        agent, uses = self.agent, response.tool_uses
        if response.stop_reason == "model_context_window_exceeded":  # neither continuing nor re-asking fits
            raise OutputTruncated(f"agent {agent.name!r}: the conversation filled the model's context window and "
                                  "the answer was cut off; shorten the input or the agent's tool results",
                                  agent=agent.name, max_tokens=agent.max_tokens, raw_output=response.text)
        cut = response.stop_reason in TRUNCATED
        if cut and (uses or self.structured):
            raise _Reask("truncated", f"the answer was cut off at max_tokens ({agent.max_tokens})",
                         raw=response.text or None)
        final = next((u for u in uses if u.name == FINAL_TOOL), None) if self.structured else None
        if final is not None:
            value, errors = _parse_output(agent, final.input) if isinstance(final.input, dict) else (
                None, [f"(root): the answer must be a JSON object, not {type(final.input).__name__}"])
            if errors:
                raise _Reask("schema", "; ".join(errors), errors, final.input)
            self.messages.append(Message("assistant", _sanitized(response.content)))
            return self.result(value, turn)
        if not uses:
            if self.structured:
                raise _Reask("prose", f"it answered in prose instead of calling {FINAL_TOOL}", raw=response.text)
            text_out = await self._continue(response, turn) if cut else response.text
            if not text_out.strip():
                raise _Reask("empty", "the answer was empty", raw=text_out)
            self.messages.append(Message.assistant(text_out))
            return self.result(text_out, turn)
        return await self._tools(response, turn)

    async def _continue(self, response: ModelResponse, turn: int) -> str:
        """Continue a text answer cut off at max_tokens (the cut-off text is sent back as a prefill)."""
        text_out = response.text
        done = 0
        for n in range(1, self.agent.max_continuations + 1):
            prefix = text_out.rstrip()  # the API refuses a prefill that ends in whitespace
            if not prefix:
                break
            done = n
            tail = [Message.assistant(prefix)] if self._prefills() else [Message.assistant(prefix),
                                                                         Message.user(CONTINUE_NOTE)]
            more = await self.ask(f"{self.key}/m{turn}c{n}", self.request([*self.messages, *tail]))
            text_out = prefix + more.text
            if more.stop_reason not in TRUNCATED:
                return text_out
        a = self.agent
        raise OutputTruncated(
            f"agent {a.name!r} stopped at its max_tokens ({a.max_tokens}) and was still cut off after "
            f"{done} continuation(s); raise max_tokens for this agent",
            agent=a.name, max_tokens=a.max_tokens, raw_output=text_out)

    def _prefills(self) -> bool:
        """Whether the agent's model continues a cut-off answer sent back as a trailing assistant message."""
        model = self.ctx.model_adapter(self.agent.model)
        if model is None:  # e.g. model "auto" or a replay: the journaled continuation is used either way
            return False
        flag = getattr(model, "supports_prefill", None)
        return bool(flag) if flag is not None else model.provider in PREFILL_PROVIDERS

    async def _tools(self, response: ModelResponse, turn: int) -> AgentResult | None:
        uses = response.tool_uses
        self.messages.append(Message("assistant", _sanitized(response.content)))
        self.last_bad = None
        repeated = self._repeated(uses)
        if repeated is not None:
            self.messages.append(Message("user", [ToolResultBlock(u.id, repeated, is_error=True) for u in uses]))
            return None
        results = await self.ctx.run_tools(self.agent, f"{self.key}/t{turn}", uses, self.tools)
        self.messages.append(Message("user", list(results)))
        ended = any(getattr(self.tools.get(u.name), "ends_turn", False) and not r.is_error
                    for u, r in zip(uses, results, strict=True))
        if ended:  # e.g. a handoff: the agent's turn is over, no further model call
            return self.result(None if self.structured else response.text, turn)
        return None

    def _repeated(self, uses: list[ToolUseBlock]) -> str | None:
        """The note for a repeated identical call (not run), or None; raises once the model was told."""
        limit = self.agent.max_repeats
        sig = _signature(uses)
        self.repeats = self.repeats + 1 if sig == self.repeat_sig else 1
        self.repeat_sig = sig
        if not limit or self.repeats < limit:
            return None
        name = uses[0].name
        if self.warned:
            raise ToolLoopDetected(
                f"agent {self.agent.name!r} is looping: it called tool {name!r} with the same input "
                f"{self.repeats} times in a row, and again after being told (max_repeats {limit})",
                agent=self.agent.name, tool=name)
        self.warned = True
        return (f"Not run: you called {name} with exactly the same input {self.repeats} times in a row; the "
                "result will not change. Use the results you already have, try something different, or give "
                "your final answer. Repeating this call again stops you.")

    def _reask(self, response: ModelResponse, bad: _Reask) -> None:
        """Send the bad turn back with what was wrong, or give up after ``output_retries`` re-asks."""
        self.reasks += 1
        self.last_bad = bad
        if self.reasks > self.agent.output_retries:
            raise self.give_up(f"after {self.reasks} attempts")
        content = _sanitized(response.content)
        uses = [b for b in content if isinstance(b, ToolUseBlock)]
        note = self._feedback(bad)
        if content:
            self.messages.append(Message("assistant", content))
            blocks: ContentList = [ToolResultBlock(u.id, note if u.name == FINAL_TOOL or bad.kind == "truncated"
                                                   else "Not run: fix the final answer first.", is_error=True)
                                   for u in uses]
            if not any(u.name == FINAL_TOOL for u in uses):
                blocks.append(TextBlock(note))
            self.messages.append(Message("user", blocks))
        else:  # nothing to send back (an empty answer): add the note to the last user turn
            last = self.messages[-1]
            self.messages[-1] = Message("user", [*last.content, TextBlock(note)])

    def _feedback(self, bad: _Reask) -> str:
        if bad.kind == "schema":
            return ("Your answer does not match the required schema:\n- " + "\n- ".join(bad.errors)
                    + f"\nCall {FINAL_TOOL} again with a corrected answer.")
        if bad.kind == "truncated":
            return (f"Your answer was cut off at the output limit ({self.agent.max_tokens} tokens), so it was not "
                    "used. Give a shorter, complete answer.")
        if bad.kind == "prose":
            return f"Call the {FINAL_TOOL} tool with your answer."
        return "Your answer was empty. Reply with your complete answer."

    def give_up(self, when: str) -> ModelBehaviorError:
        bad, a = self.last_bad, self.agent
        assert bad is not None
        if bad.kind == "truncated":
            return OutputTruncated(f"agent {a.name!r}: the answer was cut off at its max_tokens ({a.max_tokens}) "
                                   f"{when}; raise max_tokens for this agent", agent=a.name,
                                   max_tokens=a.max_tokens, raw_output=bad.raw)
        what = {"schema": "returned output that does not match its schema",
                "prose": f"never called {FINAL_TOOL}", "empty": "gave an empty answer"}[bad.kind]
        tail = f": {bad.detail}" if bad.kind == "schema" else ""
        return ModelBehaviorError(f"agent {a.name!r} {what} {when}{tail}", raw_output=bad.raw, errors=bad.errors)


async def run_agent_loop(ctx: LoopScope, key: str, agent: Agent, input: Any,
                         extra_tools: list[Tool] | None = None) -> AgentResult:
    """The tool-use loop of one agent call. ``key`` is the call's journal key."""
    loop = _Loop(ctx, key, agent, input, extra_tools)
    for turn in range(agent.max_turns):
        result = await loop.turn(turn)
        if result is not None:
            return result
    if loop.last_bad is not None:  # the last turns were re-asks: say what was wrong with them
        raise loop.give_up(f"in all {agent.max_turns} turns (max_turns)")
    raise MaxTurnsExceeded(f"agent {agent.name!r} used all {agent.max_turns} turns without a final answer "
                           f"(chain: {' > '.join(ctx.chain) or agent.name})")
