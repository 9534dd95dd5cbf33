"""Model adapters. Heavy ones (local llama.cpp) are imported lazily by ``resolve``."""

from baton.models.base import Model, model_class

__all__ = ["Model", "model_class"]
