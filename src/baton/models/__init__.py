"""Model adapters. Heavy ones (local llama.cpp) are imported lazily by ``resolve``."""

from baton.models.base import Model, model_family

__all__ = ["Model", "model_family"]
