"""Model adapters behind one protocol (``Model``), and the provider choice of ``baton run``.

The adapters load on first use (``baton.models.AnthropicModel`` works as usual): the HTTP
client and llama.cpp are imported only by a process that uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from baton.models.base import Model

if TYPE_CHECKING:
    from baton.models.anthropic import AnthropicModel
    from baton.models.local import LocalModel
    from baton.models.openai_compat import OpenAICompatModel
    from baton.models.resolve import close_models, get_model

_WHERE = {"AnthropicModel": "anthropic", "LocalModel": "local", "OpenAICompatModel": "openai_compat",
          "close_models": "resolve", "get_model": "resolve"}

__all__ = ["AnthropicModel", "LocalModel", "Model", "OpenAICompatModel", "close_models", "get_model"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'baton.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"baton.models.{_WHERE[name]}"), name)
