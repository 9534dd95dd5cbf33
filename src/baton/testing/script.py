"""The scripting vocabulary shared by ``ScriptedModel`` and ``FakeAnthropicServer``.

A script is an ordered list of ``Rule``s. Each request is matched (regex, ``re.S``)
against its system text plus all user text (tool results included); the first rule
that matches and is not used up decides the reply, an optional latency and an
optional fault. With no matching rule the reply is ``"ok"``, or, when the request
forces a tool, a schema-valid input for that tool.

    rules = [
        Rule("weather", reply=tool_call("get_weather", {"city": "Paris"}), times=1),
        Rule(r"tool_result.*sunny|sunny", reply=text("It is sunny in Paris.")),
        Rule(fault=Fault.server_error(p=0.2)),      # 20 % of the rest fail with a 500
    ]

Token counts are deterministic (``len(text) // 4`` per block) so tests can assert usage.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

from baton.errors import UsageError
from baton.json_schema import resolve_ref
from baton.messages import (
    ContentBlock,
    Message,
    ModelRequest,
    TextBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)

JSON = dict[str, Any]

# --- token counting -----------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """The fake tokenizer: four characters per token, at least one."""
    return max(1, len(text) // 4)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


class Segment(NamedTuple):
    """One cacheable unit of a prompt, in prefix order (tools, system, messages)."""

    tokens: int
    cache_control: JSON | None
    canon: bytes
    """Canonical bytes of the block, used to hash prefixes for prompt caching."""


def _tool_result_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return "" if content is None else str(content)


def _block_text(block: JSON) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "tool_use":
        return str(block.get("name", "")) + _dumps(block.get("input") or {})
    if kind == "tool_result":
        return _tool_result_text(block.get("content"))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    return _dumps({k: v for k, v in block.items() if k != "cache_control"})


def prompt_segments(body: JSON) -> list[Segment]:
    """Split a Messages-API body into segments: each tool, system block and content block."""
    segs: list[Segment] = []
    for tool in body.get("tools") or []:
        core = {k: v for k, v in tool.items() if k != "cache_control"}
        canon = _dumps(core).encode()
        segs.append(Segment(len(canon) // 4, tool.get("cache_control"), b"tool:" + canon))
    system = body.get("system")
    if isinstance(system, str) and system:
        segs.append(Segment(len(system) // 4, None, b"system:" + system.encode()))
    elif isinstance(system, list):
        for block in system:
            txt = str(block.get("text", "")) if isinstance(block, dict) else str(block)
            cc = block.get("cache_control") if isinstance(block, dict) else None
            segs.append(Segment(len(txt) // 4, cc, b"system:" + txt.encode()))
    for msg in body.get("messages") or []:
        role = str(msg.get("role", ""))
        content = msg.get("content")
        if isinstance(content, str):
            segs.append(Segment(len(content) // 4, None, f"{role}:text:".encode() + content.encode()))
            continue
        for block in content or []:
            if not isinstance(block, dict):
                continue
            core = {k: v for k, v in block.items() if k != "cache_control"}
            segs.append(Segment(len(_block_text(block)) // 4, block.get("cache_control"),
                                f"{role}:".encode() + _dumps(core).encode()))
    return segs


def input_tokens_of(body: JSON) -> int:
    return max(1, sum(s.tokens for s in prompt_segments(body)))


# --- wire <-> neutral request -------------------------------------------------------------


def _block_from_wire(b: Any) -> ContentBlock | None:
    if not isinstance(b, dict):
        return None
    kind = b.get("type")
    if kind == "text":
        return TextBlock(str(b.get("text", "")), b.get("cache_control"))
    if kind == "tool_use":
        raw = b.get("input")
        return ToolUseBlock(str(b.get("id", "")), str(b.get("name", "")), dict(raw) if isinstance(raw, dict) else {})
    if kind == "tool_result":
        return ToolResultBlock(str(b.get("tool_use_id", "")), _tool_result_text(b.get("content")),
                               bool(b.get("is_error")), b.get("cache_control"))
    return None


def request_from_wire(body: JSON) -> ModelRequest:
    """A neutral ``ModelRequest`` from a Messages-API body (unknown block kinds skipped)."""
    messages: list[Message] = []
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            blocks: list[ContentBlock] = [TextBlock(content)]
        else:
            blocks = [blk for blk in (_block_from_wire(b) for b in content or []) if blk is not None]
        messages.append(Message(m.get("role", "user"), blocks))
    tools = [ToolSpec(str(t.get("name", "")), str(t.get("description", "")), dict(t.get("input_schema") or {}),
                      t.get("cache_control")) for t in body.get("tools") or [] if isinstance(t, dict)]
    tc = body.get("tool_choice")
    choice = None
    if isinstance(tc, dict):
        choice = ToolChoice(tc.get("type", "auto"), tc.get("name"), bool(tc.get("disable_parallel_tool_use")))
    return ModelRequest(
        model=str(body.get("model", "")),
        messages=messages,
        system=body.get("system"),
        tools=tools,
        tool_choice=choice,
        max_tokens=int(body.get("max_tokens") or 0),
        temperature=body.get("temperature"),
        stop_sequences=body.get("stop_sequences"),
    )


def match_text(request: ModelRequest) -> str:
    """What rules match against: system text, then every user text and tool result."""
    parts: list[str] = []
    system = request.system
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts.append("\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict)))
    else:
        parts.append("")
    for m in request.messages:
        if m.role != "user":
            continue
        for b in m.content:
            if isinstance(b, TextBlock):
                parts.append(b.text)
            elif isinstance(b, ToolResultBlock):
                parts.append(b.content)
    return "\n".join(parts)


# --- replies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """What the model answers. Build with ``text``, ``tool_call``, ``tool_calls``, ``json_reply``."""

    kind: Literal["text", "tool_calls", "json"]
    text: str = ""
    calls: tuple[tuple[str, JSON], ...] = ()
    data: Any = None
    stop_reason: str | None = None
    """Overrides the natural stop reason (e.g. ``"refusal"``, ``"pause_turn"``)."""
    thinking: str | None = None
    """If set, a thinking block comes first (adapters must skip it without crashing)."""


def text(value: str, *, stop_reason: str | None = None, thinking: str | None = None) -> Reply:
    """A reply with this text (and optionally thinking)."""
    return Reply("text", text=value, stop_reason=stop_reason, thinking=thinking)


def tool_call(name: str, input: JSON, *, text: str = "", stop_reason: str | None = None) -> Reply:  # noqa: A002
    """A reply that calls tool ``name`` with ``input``."""
    return Reply("tool_calls", text=text, calls=((name, dict(input)),), stop_reason=stop_reason)


def tool_calls(calls: list[tuple[str, JSON]], *, text: str = "", stop_reason: str | None = None) -> Reply:
    """Several tool_use blocks in one turn (parallel tool use)."""
    return Reply("tool_calls", text=text, calls=tuple((n, dict(i)) for n, i in calls), stop_reason=stop_reason)


def json_reply(obj: Any, *, stop_reason: str | None = None) -> Reply:
    """Structured output: the forced tool's input, or JSON text when no tool is forced."""
    return Reply("json", data=obj, stop_reason=stop_reason)


DEFAULT_REPLY = text("ok")


# --- faults -------------------------------------------------------------------------------

FaultKind = Literal["status", "connection_reset", "stall", "stream_error", "stream_cut"]

_TOO_LARGE_HTML = ("<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
                   "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
                   "</body>\r\n</html>\r\n")
_DEFAULT_MESSAGES = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    408: ("timeout_error", "Request timed out."),
    409: ("conflict_error", "Conflict."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    422: ("invalid_request_error", "Unprocessable entity."),
    429: ("rate_limit_error", "This request would exceed your organization's rate limit. "
                              "For details, refer to: https://docs.claude.com/en/api/rate-limits."),
    500: ("api_error", "Internal server error"),
    502: ("api_error", "Bad gateway"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Gateway timeout"),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """A failure to inject. ``p`` is the chance it fires (seeded, so runs repeat)."""

    kind: FaultKind
    code: int = 0
    """The HTTP status of a ``status`` or ``stream_error`` fault."""
    error_type: str = ""
    message: str = ""
    retry_after_s: float | None = None
    retry_after_ms: float | None = None
    should_retry: bool | None = None
    error_code: str | None = None
    raw_body: str | None = None
    content_type: str = "application/json"
    seconds: float = 0.0
    extra_headers: tuple[tuple[str, str], ...] = ()
    p: float = 1.0

    @classmethod
    def status(cls, code: int, error_type: str | None = None, *, message: str | None = None,
               retry_after_s: float | None = None, retry_after_ms: float | None = None,
               should_retry: bool | None = None, body: str | None = None, content_type: str | None = None,
               headers: dict[str, str] | None = None, p: float = 1.0) -> Fault:
        """Any HTTP error. ``body`` replaces the JSON error body (e.g. an HTML page from a proxy);
        ``headers`` adds raw response headers (e.g. an HTTP-date ``retry-after``)."""
        default_type, default_msg = _DEFAULT_MESSAGES.get(code, ("api_error", f"HTTP {code}"))
        return cls("status", code=code, error_type=error_type or default_type, message=message or default_msg,
                   retry_after_s=retry_after_s, retry_after_ms=retry_after_ms, should_retry=should_retry,
                   raw_body=body, content_type=content_type or ("text/html" if body else "application/json"),
                   extra_headers=tuple((headers or {}).items()), p=p)

    @classmethod
    def rate_limit(cls, retry_after_s: float | None = 1.0, *, retry_after_ms: float | None = None,
                   should_retry: bool | None = None, p: float = 1.0) -> Fault:
        return cls.status(429, retry_after_s=retry_after_s, retry_after_ms=retry_after_ms,
                               should_retry=should_retry, p=p)

    @classmethod
    def server_error(cls, *, should_retry: bool | None = None, p: float = 1.0) -> Fault:
        return cls.status(500, should_retry=should_retry, p=p)

    @classmethod
    def overloaded(cls, *, retry_after_s: float | None = None, should_retry: bool | None = None,
                   p: float = 1.0) -> Fault:
        return cls.status(529, retry_after_s=retry_after_s, should_retry=should_retry, p=p)

    @classmethod
    def spend_limit(cls, *, p: float = 1.0) -> Fault:
        """The tier spend cap: a 429 without retry-after that must never be retried."""
        return cls("status", code=429, error_type="rate_limit_error",
                   message="You have reached your specified API usage limits. You will regain access on "
                           "the first day of next month.",
                   error_code="enforced_spend_limit_reached", p=p)

    @classmethod
    def too_large(cls, *, p: float = 1.0) -> Fault:
        """A 413 with an HTML body, as the edge proxy sends it before the API sees the request."""
        return cls.status(413, body=_TOO_LARGE_HTML, content_type="text/html", p=p)

    @classmethod
    def connection_reset(cls, *, p: float = 1.0) -> Fault:
        return cls("connection_reset", p=p)

    @classmethod
    def stall(cls, seconds: float, *, p: float = 1.0) -> Fault:
        """Wait ``seconds`` before answering normally (clients with a shorter timeout give up)."""
        return cls("stall", seconds=seconds, p=p)

    @classmethod
    def stream_error(cls, error_type: str = "overloaded_error", *, p: float = 1.0) -> Fault:
        """An SSE ``error`` event after HTTP 200 (a non-streaming request gets the HTTP error)."""
        code = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500}.get(error_type, 500)
        return cls("stream_error", code=code, error_type=error_type,
                   message=_DEFAULT_MESSAGES.get(code, ("", "error"))[1], p=p)

    @classmethod
    def stream_cut(cls, *, p: float = 1.0) -> Fault:
        """The stream stops before ``message_stop`` (a non-streaming request gets a reset)."""
        return cls("stream_cut", p=p)

    def wire_error(self, request_id: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of the HTTP error response this fault produces."""
        headers: dict[str, str] = {"request-id": request_id, "content-type": self.content_type}
        if self.retry_after_s is not None:
            headers["retry-after"] = f"{self.retry_after_s:g}"
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{self.retry_after_ms:g}"
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        headers.update(self.extra_headers)
        if self.raw_body is not None:
            return self.code, headers, self.raw_body.encode()
        err: JSON = {"type": self.error_type, "message": self.message}
        if self.error_code:
            err["details"] = {"error_code": self.error_code}
        return self.code, headers, orjson.dumps({"type": "error", "error": err, "request_id": request_id})


# --- rules --------------------------------------------------------------------------------

ReplySpec = Reply | Callable[[ModelRequest], Reply]


@dataclass(eq=False)
class Rule:
    """Match a request (regex over system + user text) and say how to answer it."""

    match: str | None = None
    reply: ReplySpec | None = None
    times: int | None = None
    """Use this rule at most this many times (``None``: unlimited)."""
    latency_s: float = 0.0
    fault: Fault | None = None
    model: str | None = None
    """Only requests for this model id (exact match)."""
    used: int = field(default=0, init=False)
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.match is not None:
            try:
                self._pattern = re.compile(self.match, re.S)
            except re.error as exc:
                raise UsageError(f"rule match {self.match!r} is not a valid regex: {exc}") from exc

    def matches(self, request: ModelRequest, haystack: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.model is not None and request.model != self.model:
            return False
        return self._pattern is None or self._pattern.search(haystack) is not None

    def resolve(self, request: ModelRequest) -> Reply:
        spec = self.reply
        if spec is None:
            return DEFAULT_REPLY
        if isinstance(spec, Reply):
            return spec
        out: Any = spec(request)
        if isinstance(out, str):
            return text(out)
        if not isinstance(out, Reply):
            raise UsageError(f"rule {self.match!r}: reply function returned {type(out).__name__}, not a Reply")
        return out


class Script:
    """Thread-safe rule selection plus the seeded coin for probabilistic faults."""

    def __init__(self, rules: list[Rule] | None = None, *, seed: int = 0) -> None:
        self.rules: list[Rule] = list(rules or [])
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, rule: Rule) -> int:
        with self._lock:
            self.rules.append(rule)
            return len(self.rules) - 1

    def pick(self, request: ModelRequest) -> tuple[int | None, Rule | None]:
        """The first matching rule (its use is counted), or ``(None, None)``."""
        haystack = match_text(request)
        with self._lock:
            for i, rule in enumerate(self.rules):
                if rule.matches(request, haystack):
                    rule.used += 1
                    return i, rule
        return None, None

    def fires(self, fault: Fault | None) -> bool:
        if fault is None:
            return False
        if fault.p >= 1.0:
            return True
        with self._lock:
            return self._rng.random() < fault.p


# --- schema-valid example inputs ----------------------------------------------------------

_FORMAT_EXAMPLES = {
    "date-time": "2025-01-01T00:00:00Z", "date": "2025-01-01", "time": "00:00:00Z",
    "email": "user@example.com", "uri": "https://example.com", "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000", "hostname": "example.com", "ipv4": "127.0.0.1",
}


def _resolve_ref(ref: str, root: JSON) -> JSON:
    try:
        node = resolve_ref(root, ref)
    except (ValueError, LookupError):
        return {}
    return node if isinstance(node, dict) else {}


def example_for_schema(schema: JSON, root: JSON | None = None, _depth: int = 0) -> Any:
    """A small deterministic value valid for ``schema`` (required properties only)."""
    root = schema if root is None else root
    if _depth > 32 or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return example_for_schema(_resolve_ref(schema["$ref"], root), root, _depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [o for o in schema[key] if not (isinstance(o, dict) and o.get("type") == "null")]
            return example_for_schema((options or schema[key])[0], root, _depth + 1)
    if schema.get("allOf"):
        merged: JSON = {}
        for part in schema["allOf"]:
            part = _resolve_ref(part["$ref"], root) if "$ref" in part else part
            for k, v in part.items():
                if k == "properties":
                    merged.setdefault("properties", {}).update(v)
                elif k == "required":
                    merged.setdefault("required", []).extend(v)
                else:
                    merged.setdefault(k, v)
        return example_for_schema(merged, root, _depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else ("array" if "items" in schema else "string")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: example_for_schema(props.get(name, {}), root, _depth + 1)
                for name in schema.get("required") or []}
    if kind == "array":
        n = max(int(schema.get("minItems", 1)), 1)
        if "maxItems" in schema:
            n = min(n, int(schema["maxItems"]))
        items = schema.get("items")
        if isinstance(items, list):  # tuple form
            return [example_for_schema(s, root, _depth + 1) for s in items]
        if schema.get("prefixItems"):
            return [example_for_schema(s, root, _depth + 1) for s in schema["prefixItems"]]
        item = example_for_schema(items if isinstance(items, dict) else {}, root, _depth + 1)
        if schema.get("uniqueItems") and n > 1:
            return [item] + [f"{item}{i}" if isinstance(item, str) else i for i in range(1, n)]
        return [item] * n
    if kind in ("integer", "number"):
        value: float = 0
        if "minimum" in schema:
            value = schema["minimum"]
        elif "exclusiveMinimum" in schema:
            value = schema["exclusiveMinimum"] + 1
        elif "maximum" in schema and schema["maximum"] < 0:
            value = schema["maximum"]
        elif "exclusiveMaximum" in schema and schema["exclusiveMaximum"] <= 0:
            value = schema["exclusiveMaximum"] - 1
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    fmt = schema.get("format")
    s = _FORMAT_EXAMPLES.get(fmt, "example") if isinstance(fmt, str) else "example"
    min_len = int(schema.get("minLength", 0))
    if len(s) < min_len:
        s = s + "x" * (min_len - len(s))
    if "maxLength" in schema:
        s = s[: int(schema["maxLength"])]
    return s


# --- rendering a reply for a request ------------------------------------------------------


class Rendered(NamedTuple):
    content: list[JSON]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def forced_tool(request: ModelRequest) -> ToolSpec | None:
    """The tool the request forces (``tool_choice`` tool, or ``any`` with its first tool)."""
    tc = request.tool_choice
    if tc is None or tc.type not in ("tool", "any") or not request.tools:
        return None
    if tc.type == "tool":
        return next((t for t in request.tools if t.name == tc.name), None)
    return request.tools[0]


def prefill_of(request: ModelRequest) -> str:
    """The text of a trailing assistant message: the model continues from it, as the API does."""
    if not request.messages or request.messages[-1].role != "assistant":
        return ""
    return request.messages[-1].text


def _cut(blocks: list[JSON], max_tokens: int) -> list[JSON] | None:
    """``blocks`` cut off at ``max_tokens`` (None if they fit): text is cut mid-way, and a tool call
    whose input did not fit is sent with the input parsed so far (``{}``), as the API does."""
    produced = "".join(_block_text(b) for b in blocks)
    if max_tokens <= 0 or count_tokens(produced) <= max_tokens:
        return None
    room = max_tokens * 4
    out: list[JSON] = []
    for b in blocks:
        size = len(_block_text(b))
        if size <= room:
            out.append(b)
            room -= size
            continue
        if b.get("type") == "text" and room > 0:
            out.append({**b, "text": str(b["text"])[:room]})
        elif b.get("type") == "tool_use":
            out.append({**b, "input": {}})
        break
    return out


def render_reply(reply: Reply, request: ModelRequest, new_tool_id: Callable[[], str]) -> Rendered:
    """The wire content blocks, stop reason and output token count for ``reply``.

    Like the API, output stops at ``max_tokens`` (stop reason ``max_tokens``) whatever the
    reply's kind, and a request ending with an assistant message is continued from it: a
    scripted text that starts with that prefill is answered with the rest.
    """
    blocks: list[JSON] = []
    if reply.thinking is not None:
        blocks.append({"type": "thinking", "thinking": reply.thinking, "signature": "fake-signature"})
    forced = forced_tool(request)
    stop_reason = "end_turn"
    stop_sequence: str | None = None
    if reply.kind == "tool_calls":
        if reply.text:
            blocks.append({"type": "text", "text": reply.text})
        for name, args in reply.calls:
            blocks.append({"type": "tool_use", "id": new_tool_id(), "name": name, "input": args})
        stop_reason = "tool_use"
    elif forced is not None:
        args = reply.data if reply.kind == "json" else example_for_schema(forced.input_schema)
        blocks.append({"type": "tool_use", "id": new_tool_id(), "name": forced.name, "input": args})
        stop_reason = "tool_use"
    else:
        out = _dumps(reply.data) if reply.kind == "json" else reply.text
        prefill = prefill_of(request)
        if prefill and out.startswith(prefill):
            out = out[len(prefill):]
        for seq in request.stop_sequences or []:
            at = out.find(seq) if seq else -1
            if at >= 0:
                out, stop_reason, stop_sequence = out[:at], "stop_sequence", seq
                break
        limit = request.max_tokens * 4
        if request.max_tokens > 0 and len(out) > limit + 3:
            out, stop_reason, stop_sequence = out[:limit], "max_tokens", None
        blocks.append({"type": "text", "text": out})
    cut = _cut(blocks, request.max_tokens) if stop_reason == "tool_use" else None
    if cut is not None:
        blocks, stop_reason = cut, "max_tokens"
    if reply.stop_reason is not None:
        stop_reason = reply.stop_reason
    produced = "".join(_block_text(b) for b in blocks)
    tokens = count_tokens(produced)
    if stop_reason == "max_tokens" and request.max_tokens > 0:
        tokens = request.max_tokens
    return Rendered(blocks, stop_reason, stop_sequence, tokens)


# --- rules from JSON data (for the CLI server and other processes) ------------------------


def _fault_from_data(d: Any, where: str) -> Fault:
    if not isinstance(d, dict) or not isinstance(d.get("kind"), str):
        raise UsageError(f"{where}.fault: expected an object with a 'kind'")
    kind = d["kind"]
    p = float(d.get("p", 1.0))
    try:
        if kind == "rate_limit":
            return Fault.rate_limit(d.get("retry_after_s", 1.0), retry_after_ms=d.get("retry_after_ms"),
                                    should_retry=d.get("should_retry"), p=p)
        if kind == "server_error":
            return Fault.server_error(should_retry=d.get("should_retry"), p=p)
        if kind == "overloaded":
            return Fault.overloaded(retry_after_s=d.get("retry_after_s"), should_retry=d.get("should_retry"), p=p)
        if kind == "spend_limit":
            return Fault.spend_limit(p=p)
        if kind == "too_large":
            return Fault.too_large(p=p)
        if kind == "connection_reset":
            return Fault.connection_reset(p=p)
        if kind == "stall":
            return Fault.stall(float(d["seconds"]), p=p)
        if kind == "stream_error":
            return Fault.stream_error(d.get("error_type", "overloaded_error"), p=p)
        if kind == "stream_cut":
            return Fault.stream_cut(p=p)
        if kind == "status":
            return Fault.status(int(d["code"]), d.get("error_type"), message=d.get("message"),
                                     retry_after_s=d.get("retry_after_s"), retry_after_ms=d.get("retry_after_ms"),
                                     should_retry=d.get("should_retry"), body=d.get("body"),
                                     headers=d.get("headers"), p=p)
    except KeyError as exc:
        raise UsageError(f"{where}.fault: kind {kind!r} needs field {exc.args[0]!r}") from exc
    raise UsageError(f"{where}.fault.kind: unknown fault {kind!r} (rate_limit, server_error, overloaded, "
                     "spend_limit, too_large, connection_reset, stall, stream_error, stream_cut, status)")


def rule_from_data(d: Any, where: str = "rules[0]") -> Rule:
    """One rule from JSON data: match, times, latency_s, model and one of text / tool_call /
    tool_calls / json, plus optional stop_reason, thinking and fault."""
    if not isinstance(d, dict):
        raise UsageError(f"{where}: expected an object")
    unknown = set(d) - {"match", "times", "latency_s", "model", "text", "tool_call", "tool_calls", "json",
                        "stop_reason", "thinking", "fault"}
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {sorted(unknown)}")
    stop = d.get("stop_reason")
    reply: Reply | None = None
    if "tool_call" in d:
        tc = d["tool_call"]
        if not isinstance(tc, dict) or "name" not in tc:
            raise UsageError(f"{where}.tool_call: expected {{'name': ..., 'input': {{...}}}}")
        reply = tool_call(tc["name"], tc.get("input") or {}, text=d.get("text", ""), stop_reason=stop)
    elif "tool_calls" in d:
        calls = d["tool_calls"]
        if not isinstance(calls, list) or not all(isinstance(c, dict) and "name" in c for c in calls):
            raise UsageError(f"{where}.tool_calls: expected a list of {{'name': ..., 'input': {{...}}}}")
        reply = tool_calls([(c["name"], c.get("input") or {}) for c in calls], text=d.get("text", ""),
                           stop_reason=stop)
    elif "json" in d:
        reply = json_reply(d["json"], stop_reason=stop)
    elif "text" in d or stop is not None or "thinking" in d:
        reply = text(str(d.get("text", "ok")), stop_reason=stop, thinking=d.get("thinking"))
    fault = _fault_from_data(d["fault"], where) if "fault" in d else None
    return Rule(d.get("match"), reply=reply, times=d.get("times"), latency_s=float(d.get("latency_s", 0.0)),
                fault=fault, model=d.get("model"))


def rules_from_data(data: Any) -> list[Rule]:
    """Rules from a JSON list, or from ``{"rules": [...]}``."""
    items = data.get("rules", []) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UsageError("script: expected a list of rules or {\"rules\": [...]}")
    return [rule_from_data(item, f"rules[{i}]") for i, item in enumerate(items)]


# --- request validation (the checks the real API makes that catch adapter bugs) -----------

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_ROLES = ("user", "assistant")


def _check_cache_control(cc: Any, where: str, found: list[tuple[str, str]]) -> str | None:
    if cc is None:
        return None
    if not isinstance(cc, dict) or cc.get("type") != "ephemeral":
        return f"{where}.cache_control.type: Input should be 'ephemeral'"
    ttl = cc.get("ttl", "5m")
    if ttl not in ("5m", "1h"):
        return f"{where}.cache_control.ttl: Input should be '5m' or '1h'"
    found.append((where, ttl))
    return None


def _check_blocks(i: int, msg: JSON, found: list[tuple[str, str]]) -> str | None:
    content = msg.get("content")
    if isinstance(content, str):
        return None if content else "messages: text content blocks must be non-empty"
    if not isinstance(content, list):
        return f"messages.{i}.content: Input should be a valid string or list"
    for j, b in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            return f"{where}.type: Field required"
        kind = b["type"]
        if kind == "text":
            if not isinstance(b.get("text"), str):
                return f"{where}.text: Field required"
            if not b["text"]:
                return "messages: text content blocks must be non-empty"
            if not b["text"].strip():
                return "messages: text content blocks must contain non-whitespace text"
        elif kind == "tool_use":
            if msg.get("role") != "assistant":
                return f"{where}: `tool_use` blocks can only be in `assistant` messages"
            for key in ("id", "name", "input"):
                if key not in b:
                    return f"{where}.{key}: Field required"
            if not isinstance(b["input"], dict):
                return f"{where}.input: Input should be a valid dictionary"
        elif kind == "tool_result":
            if msg.get("role") != "user":
                return f"{where}: `tool_result` blocks can only be in `user` messages"
            if not isinstance(b.get("tool_use_id"), str):
                return f"{where}.tool_use_id: Field required"
        err = _check_cache_control(b.get("cache_control"), where, found)
        if err:
            return err
    return None


def _blocks_of(msg: JSON) -> list[JSON]:
    content = msg.get("content")
    return content if isinstance(content, list) else []


def _check_tool_pairing(messages: list[JSON]) -> str | None:
    for i, msg in enumerate(messages):
        blocks = _blocks_of(msg)
        if msg.get("role") == "user":
            prev = messages[i - 1] if i > 0 else {}
            prev_ids = {b.get("id") for b in _blocks_of(prev) if b.get("type") == "tool_use"}
            seen_other = False
            for j, b in enumerate(blocks):
                if b.get("type") == "tool_result":
                    if seen_other:
                        return (f"messages.{i}.content.{j}: `tool_result` blocks must come first in the "
                                "content array, before any other content")
                    if prev.get("role") != "assistant" or b.get("tool_use_id") not in prev_ids:
                        return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                                f"blocks: {b.get('tool_use_id')}. Each `tool_result` block must have a "
                                "corresponding `tool_use` block in the previous message.")
                else:
                    seen_other = True
        elif msg.get("role") == "assistant":
            ids = [b.get("id") for b in blocks if b.get("type") == "tool_use"]
            if not ids:
                continue
            nxt = messages[i + 1] if i + 1 < len(messages) else {}
            answered = {b.get("tool_use_id") for b in _blocks_of(nxt) if b.get("type") == "tool_result"}
            missing = [x for x in ids if x not in answered] if nxt.get("role") == "user" else ids
            if missing:
                return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
                        f"after: {', '.join(map(str, missing))}. Each `tool_use` block must have a "
                        "corresponding `tool_result` block in the next message.")
    return None


def validate_body(body: Any) -> str | None:
    """The ``invalid_request_error`` message the real API would give, or ``None`` if valid."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    mt = body["max_tokens"]
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    found: list[tuple[str, str]] = []
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for k, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                return f"tools.{k}.name: Field required"
            if not _TOOL_NAME.match(t["name"]):
                return f"tools.{k}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            if t["name"] in names:
                return "tools: Tool names must be unique."
            names.add(t["name"])
            schema = t.get("input_schema")
            if not isinstance(schema, dict):
                return f"tools.{k}.input_schema: Field required"
            if schema.get("type") != "object":
                return f"tools.{k}.input_schema.type: Input should be 'object'"
            err = _check_cache_control(t.get("cache_control"), f"tools.{k}", found)
            if err:
                return err
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            return "system: Input should be a valid string or list"
        for k, b in enumerate(system):
            if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
                return f"system.{k}: Input should be a text block"
            err = _check_cache_control(b.get("cache_control"), f"system.{k}", found)
            if err:
                return err
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            return f"messages.{i}: Input should be an object"
        if msg.get("role") not in _ROLES:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        err = _check_blocks(i, msg, found)
        if err:
            return err
    err = _check_tool_pairing(messages)
    if err:
        return err
    last = messages[-1]
    if last.get("role") == "assistant":
        tail = last.get("content")
        blocks = [tail] if isinstance(tail, str) else [b.get("text") for b in _blocks_of(last)
                                                        if b.get("type") == "text"]
        if blocks and isinstance(blocks[-1], str) and blocks[-1] != blocks[-1].rstrip():
            return "messages: final assistant content cannot end with trailing whitespace"
    tc = body.get("tool_choice")
    if tc is not None:
        if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "tool", "none"):
            return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
        if tc["type"] in ("any", "tool") and not names:
            return "tool_choice: tool_choice may only be specified while providing tools."
        if tc["type"] == "tool" and tc.get("name") not in names:
            return f"tool_choice.name: Tool '{tc.get('name')}' not found in provided tools"
    temp = body.get("temperature")
    if temp is not None and (not isinstance(temp, int | float) or not 0 <= temp <= 1):
        return "temperature: Input should be less than or equal to 1"
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    err = _check_cache_control(body.get("cache_control"), "cache_control", found)
    if err:
        return err
    if len(found) > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {len(found)}."
    explicit = [ttl for where, ttl in found if where != "cache_control"]
    if "5m" in explicit and "1h" in explicit[explicit.index("5m"):]:
        return "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
    return None
