"""The layer order of DESIGN.md, checked on every import in ``src/baton``.

Each module's imports are read with ``ast``: top-level ones, those under ``if TYPE_CHECKING:``
and those inside functions alike. The test fails on an import that points up the layer
order (or across the independent columns of a layer), on any import cycle, and on a
function-level import that defers nothing worth deferring: only modules that ``import baton``
does not load may be imported inside a function, and each needs a reason in ``DEFERRED``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

LAYERS: list[tuple[str, list[str], bool]] = [
    # (layer, its module groups, whether the groups may import each other), bottom first.
    ("foundation", ["baton.errors", "baton.messages", "baton.masking", "baton.json_schema", "baton.settings"],
     True),
    ("adapters | stores | observability", ["baton.models", "baton.stores", "baton.observe"], False),
    ("shipped test doubles", ["baton.testing"], True),
    ("runtime", ["baton.runtime"], True),
    ("agents, tools, context", ["baton.agent", "baton.tools", "baton.context", "baton.memory", "baton.tools_mcp",
                                "baton.sample_tools", "baton.toolbox", "baton.knowledge"], True),
    ("patterns", ["baton.patterns"], True),
    ("entry points", ["baton.spec", "baton.cli", "baton.server", "baton.temporal", "baton.api", "baton.streaming",
                      "baton.__main__"], True),
    ("the package's public names", ["baton"], True),
]

DEFERRED: dict[str, str] = {
    # Imported inside functions on purpose: what each defers, and why.
    "baton.masking": "error messages only: an error path loads it, `import baton` does not",
    "baton.memory": "long-term memory loads on the first ctx.memory(), not on `import baton`",
    "baton.models.resolve": "provider resolution: only for a run given no model",
    "baton.runtime.ratelimit": "the rate governor (~8 ms) loads on a run's first call, not on `import baton`",
    "baton.runtime.tool_calls": "the tool call path loads on a run's first tool call, not on `import baton`",
    "baton.runtime.cache": "the result cache loads only for runs that use one",
    "baton.runtime.ratelimit_redis": "cross-process rate limits need redis: only when configured",
    "baton.runtime.fork": "`baton fork` / `baton.fork` only",
    "baton.temporal": "the Temporal engine (temporalio) loads only for --engine temporal and baton worker",
    "temporalio": "optional extra `temporal`",
    "baton.runtime.batch": "batch mode loads only for runs with `batch: true` agents (or to cancel their batches)",
    "baton.spec": "workflow files (PyYAML, pattern builders) load only when a file is read",
    "baton.patterns": "the YAML builder loads only the patterns a file uses",
    "baton.server": "the HTTP service (starlette, uvicorn) loads only for `baton serve`",
    "baton.cli": "each CLI subcommand loads its implementation on use (start-up time of `baton`)",
    "baton.knowledge": "retrieval (FTS index, embeddings) loads only for workflows with knowledge bases",
    "baton.tools_mcp": "MCP tool sources (the mcp SDK) load only for workflows that name one",
    "baton.observe.jsonl": "event sinks load when a run asks for them",
    "baton.observe.otel": "event sinks load when a run asks for them (OpenTelemetry SDK)",
    "baton.observe.otlp": "the OTLP exporter loads with the OpenTelemetry sink",
    "baton.observe.metrics": "event sinks load when a run asks for them (prometheus_client)",
    "baton.observe.progress": "the live progress line: CLI runs only",
    "baton.observe.redact": "redaction rules compile when a sink or the service first needs them",
    "baton.observe.capture": "content-capture settings: sinks only",
    "baton.models.anthropic": "adapters load when a provider is chosen (aiohttp)",
    "baton.models.openai_compat": "adapters load when a provider is chosen (aiohttp)",
    "baton.models.local": "the embedded model loads when chosen (llama.cpp)",
    "baton.models.grammar_mask": "grammar-constrained decoding: embedded model only (llama.cpp)",
    "baton.stores.sqlite": "store backends load by URL",
    "baton.stores.postgres": "store backends load by URL (psycopg)",
    "baton.stores.redis": "store backends load by URL (redis)",
    "baton.stores.memory": "store backends load by URL",
    "baton.testing.fake_anthropic": "a module that is also a CLI: importing it eagerly makes runpy warn",
    "tomllib": "~25 ms: the price table is parsed on the first priced call",
    "pydantic": "heavy (~60 ms): only for pydantic output types and tool signatures",
    "jsonschema": "heavy: only when a schema is checked or a value validated",
    "llama_cpp": "optional extra `local`",
    "sentence_transformers": "optional dense embeddings",
    "all_minilm_l6_v2": "optional dense embeddings (bundled model package)",
    "numpy": "optional dense embeddings",
    "prometheus_client": "optional extra: metrics",
    "opentelemetry": "optional extra: tracing",
    "redis": "optional extra: Redis store, queue, limits",
    "fastapi": "optional extra `server`: `baton ui` loads it on start",
    "psycopg": "optional extra: PostgreSQL",
    "mcp": "optional extra: MCP tool sources",
    "cryptography": "optional: encryption at rest",
    "uvicorn": "the service only",
    "starlette": "the service only",
    "pytest": "the store conformance suite runs under pytest only",
}

OWNED_ELSEWHERE: set[tuple[str, str]] = {
    # Function-level imports in files the `hygiene` branch (issue 14 part 2) rewrites: settings.py
    # and stores/ were left to it. Remove these entries when its settings/store work lands.
    ("baton.settings", "baton.errors"),
    ("baton.settings", "argparse"),
    ("baton.stores.postgres", "baton.masking"),
}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    where: str  # "top", "type-checking" or "function"


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted((SRC / "baton").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(module: str) -> list[Import]:
    found: list[Import] = []

    def walk(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend(Import(module, t, child.lineno, where) for t in _targets(module, child))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                walk(child, "type-checking")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                walk(child, "function")
            else:
                walk(child, where)

    walk(ast.parse(MODULES[module].read_text(encoding="utf-8")), "top")
    return found


ALL_IMPORTS = [imp for module in MODULES for imp in imports_of(module)]
INTERNAL = [imp for imp in ALL_IMPORTS if imp.target == "baton" or imp.target.startswith("baton.")]


def _placement(module: str) -> tuple[int, str]:
    """(layer index, group) of a module: the longest group prefix that matches."""
    best: tuple[int, str] | None = None
    for index, (_, groups, _) in enumerate(LAYERS):
        for group in groups:
            if (module == group or module.startswith(group + ".")) and (best is None or len(group) > len(best[1])):
                best = (index, group)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        (src_layer, src_group), (dst_layer, dst_group) = _placement(imp.source), _placement(imp.target)
        upward = dst_layer > src_layer
        across = dst_layer == src_layer and src_group != dst_group and not LAYERS[src_layer][2]
        if upward or across:
            bad.append(f"{imp.source}:{imp.line} ({LAYERS[src_layer][0]}) imports {imp.target} "
                       f"({LAYERS[dst_layer][0]}){' across columns' if across else ''} [{imp.where}]")
    return bad


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.source != imp.target:
            graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def loaded_by_import_baton() -> set[str]:
    """The modules a fresh ``import baton`` loads (deferring one of these defers nothing)."""
    out = subprocess.run([sys.executable, "-c", "import sys, baton; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True, env=os.environ, timeout=120)
    return set(out.stdout.split())


def _deferral_reason(target: str) -> str | None:
    for prefix, reason in DEFERRED.items():
        if target == prefix or target.startswith(prefix + "."):
            return reason
    return None


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _placement(module)


def test_no_import_points_up_the_layers_or_across_columns() -> None:
    assert layer_violations(INTERNAL) == []


def test_no_import_cycle_not_even_for_type_checking_or_inside_functions() -> None:
    assert cycles(INTERNAL) == []


def test_function_level_imports_only_defer_what_import_baton_does_not_load(
        loaded_by_import_baton: set[str]) -> None:
    bad = []
    for imp in ALL_IMPORTS:
        if imp.where != "function" or (imp.source, imp.target) in OWNED_ELSEWHERE:
            continue
        if imp.target in loaded_by_import_baton:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} inside a function, but `import baton` "
                       "loads it anyway: import it at the top")
        elif _deferral_reason(imp.target) is None:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} inside a function with no reason in DEFERRED")
    assert bad == []


# --- the checker itself catches what it should ------------------------------------------------


def test_the_checker_flags_an_upward_import_a_cross_column_import_and_a_cycle() -> None:
    up = Import("baton.runtime.engine", "baton.context", 1, "function")
    across = Import("baton.stores.sqlite", "baton.observe.events", 1, "top")
    down = Import("baton.context", "baton.runtime.engine", 1, "top")
    assert len(layer_violations([up, across, down])) == 2
    loop = [Import("baton.agent", "baton.context", 1, "type-checking"), down,
            Import("baton.runtime.engine", "baton.agent", 1, "function")]
    assert cycles(loop) == [["baton.agent", "baton.context", "baton.runtime.engine"]]


def test_the_reader_sees_type_checking_and_function_level_imports() -> None:
    wheres = {(imp.target, imp.where) for imp in imports_of("baton.runtime.services")}
    assert ("baton.runtime.ratelimit", "type-checking") in wheres
    assert ("baton.runtime.ratelimit", "function") in wheres
    assert ("baton.errors", "top") in wheres


# --- one error tree ------------------------------------------------------------------------------

LOCAL_EXCEPTIONS = {
    # Exceptions that never reach a caller of baton, kept beside the code that raises and catches them.
    "baton.agent._Reask": "the tool-use loop's own signal: a turn's output is re-asked",
    "baton.tools._Escaped": "carries a tool's SystemExit/KeyboardInterrupt out of its thread",
    "baton.server.http.ApiError": "an HTTP error response under construction (the service's boundary)",
    "baton.server.http._TooLarge": "a request body over the limit, answered 413",
    "baton.server.registry.InputInvalid": "an input that breaks a workflow's schema, answered 422",
    "baton.server.queue.Unusable": "a queue message that cannot become a run: its dead-letter reason",
    "baton.server.ui.forms.FormError": "a web form value that is not its field's type, shown beside the field",
    "baton.server.ui.routes._Redirect": "a UI page answering with a redirect (sign-in), turned into a 303",
}


def exception_classes() -> list[str]:
    """Every class in src/baton (outside errors.py) that derives from an exception class."""
    errors_tree = {n.name for n in ast.parse((SRC / "baton" / "errors.py").read_text()).body
                   if isinstance(n, ast.ClassDef)}
    found = []
    for module, path in MODULES.items():
        if module == "baton.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases}
                if bases & (errors_tree | {"Exception", "BaseException"}) or any(
                        b.endswith(("Error", "Exception")) for b in bases):
                    found.append(f"{module}.{node.name}")
    return found


def test_every_error_class_is_in_errors_py() -> None:
    assert sorted(set(exception_classes()) - set(LOCAL_EXCEPTIONS)) == []


def test_every_deferral_reason_is_still_needed() -> None:
    used = {prefix for imp in ALL_IMPORTS if imp.where == "function" for prefix in DEFERRED
            if imp.target == prefix or imp.target.startswith(prefix + ".")}
    assert sorted(set(DEFERRED) - used) == []
