"""Compression learners: one module per method, a registry, and the shared fine-tune loop."""

from learners.base import Context, Learner, ModelInfo
from learners.registry import get, known, register, unregister

__all__ = ["Context", "Learner", "ModelInfo", "get", "known", "register", "unregister"]
