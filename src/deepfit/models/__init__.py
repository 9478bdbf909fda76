"""Networks and the factory that builds them by name."""

from deepfit.models.factory import (
    CreatedModel,
    ModelSpec,
    Preprocessing,
    build_model,
    create_model,
    list_models,
)

__all__ = ["CreatedModel", "ModelSpec", "Preprocessing", "build_model", "create_model", "list_models"]
