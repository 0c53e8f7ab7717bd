"""Registered architectures; importing this package registers them all."""
from training.models import cascade, dpn, efficientnet, ensemble, lung_resunet, manet, mobilenetv2, mobilenetv3  # noqa: F401
from training.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
