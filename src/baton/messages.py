"""Provider-neutral messages, content blocks, usage and model requests/responses.

baton owns these types; adapters translate them to and from a vendor's wire format
at the boundary (``baton.models.*``). Everything here converts to and from plain JSON
dicts (``to_dict`` / ``*_from_dict``) because the journal stores data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]
StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]
JSON = dict[str, Any]


@dataclass(slots=True, frozen=True)
class TextBlock:
    text: str
    cache_control: JSON | None = None
    """Passed through to providers that support prompt caching (Anthropic)."""

    @property
    def type(self) -> str:
        return "text"


@dataclass(slots=True, frozen=True)
class ToolUseBlock:
    id: str
    name: str
    input: JSON

    @property
    def type(self) -> str:
        return "tool_use"


@dataclass(slots=True, frozen=True)
class ToolResultBlock:
    tool_use_id: str
    content: str
    is_error: bool = False
    cache_control: JSON | None = None

    @property
    def type(self) -> str:
        return "tool_result"


ContentBlock = TextBlock | ToolUseBlock | ToolResultBlock


@dataclass(slots=True)
class Message:
    role: Role
    content: list[ContentBlock]

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", [TextBlock(text)])

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls("assistant", [TextBlock(text)])

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


@dataclass(slots=True)
class Usage:
    """Token usage of one or more model calls.

    ``input_tokens`` counts only uncached input (after the last cache breakpoint),
    as the Anthropic API reports it; total input is the sum of the three input fields.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    """The part of ``cache_creation_input_tokens`` written with the 1-hour TTL."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cache_creation_1h_input_tokens + other.cache_creation_1h_input_tokens,
        )

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.cache_creation_1h_input_tokens += other.cache_creation_1h_input_tokens

    @property
    def total_input_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def to_dict(self) -> JSON:
        d: JSON = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }
        if self.cache_creation_1h_input_tokens:
            d["cache_creation_1h_input_tokens"] = self.cache_creation_1h_input_tokens
        return d

    @classmethod
    def from_dict(cls, d: JSON | None) -> Usage:
        if not d:
            return cls()
        return cls(
            int(d.get("input_tokens") or 0),
            int(d.get("output_tokens") or 0),
            int(d.get("cache_creation_input_tokens") or 0),
            int(d.get("cache_read_input_tokens") or 0),
            int(d.get("cache_creation_1h_input_tokens") or 0),
        )


@dataclass(slots=True, frozen=True)
class ToolSpec:
    """What a model sees of a tool: name, description and JSON Schema of its input."""

    name: str
    description: str
    input_schema: JSON
    cache_control: JSON | None = None


@dataclass(slots=True, frozen=True)
class ToolChoice:
    type: Literal["auto", "any", "tool", "none"] = "auto"
    name: str | None = None
    disable_parallel_tool_use: bool = False


@dataclass(slots=True)
class ModelRequest:
    model: str
    messages: list[Message]
    system: str | list[JSON] | None = None
    """A string, or Anthropic-style text blocks (``cache_control`` passes through)."""
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    stop_sequences: list[str] | None = None
    output_schema: JSON | None = None
    """Set when the caller wants JSON matching this schema (used by local grammars)."""
    timeout_s: float | None = None
    metadata: JSON = field(default_factory=dict)


@dataclass(slots=True)
class ModelResponse:
    id: str
    model: str
    content: list[ContentBlock]
    stop_reason: str
    usage: Usage
    request_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Provider response headers worth keeping (rate-limit state); never auth headers."""

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        return [b for b in self.content if isinstance(b, ToolUseBlock)]


# --- JSON conversion (journal, cache, wire helpers) ---------------------------------


def block_to_dict(b: ContentBlock) -> JSON:
    if isinstance(b, TextBlock):
        d: JSON = {"type": "text", "text": b.text}
        if b.cache_control:
            d["cache_control"] = b.cache_control
        return d
    if isinstance(b, ToolUseBlock):
        return {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
    d = {"type": "tool_result", "tool_use_id": b.tool_use_id, "content": b.content}
    if b.is_error:
        d["is_error"] = True
    if b.cache_control:
        d["cache_control"] = b.cache_control
    return d


def block_from_dict(d: JSON) -> ContentBlock:
    kind = d.get("type")
    if kind == "text":
        return TextBlock(str(d["text"]), d.get("cache_control"))
    if kind == "tool_use":
        return ToolUseBlock(str(d["id"]), str(d["name"]), dict(d.get("input") or {}))
    if kind == "tool_result":
        content = d.get("content", "")
        if isinstance(content, list):
            content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        return ToolResultBlock(str(d["tool_use_id"]), str(content), bool(d.get("is_error")), d.get("cache_control"))
    raise ValueError(f"unknown content block type {kind!r}")


def message_to_dict(m: Message) -> JSON:
    return {"role": m.role, "content": [block_to_dict(b) for b in m.content]}


def message_from_dict(d: JSON) -> Message:
    content = d.get("content", [])
    if isinstance(content, str):
        return Message(d["role"], [TextBlock(content)])
    return Message(d["role"], [block_from_dict(b) for b in content])


def response_to_dict(r: ModelResponse) -> JSON:
    return {
        "id": r.id,
        "model": r.model,
        "content": [block_to_dict(b) for b in r.content],
        "stop_reason": r.stop_reason,
        "usage": r.usage.to_dict(),
        "request_id": r.request_id,
    }


def response_from_dict(d: JSON) -> ModelResponse:
    return ModelResponse(
        id=str(d.get("id", "")),
        model=str(d.get("model", "")),
        content=[block_from_dict(b) for b in d.get("content", [])],
        stop_reason=str(d.get("stop_reason", "end_turn")),
        usage=Usage.from_dict(d.get("usage")),
        request_id=d.get("request_id"),
    )
