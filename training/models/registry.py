"""Model registry: each variant is a small ``@register_model`` entrypoint; everyone calls ``create_model``."""
from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model.

    Raises:
        ValueError: ``name`` is not registered.
    """
    import training.models  # noqa: F401  (registers the entrypoints)

    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {list_models()}")
    return _MODELS[name](**overrides)
