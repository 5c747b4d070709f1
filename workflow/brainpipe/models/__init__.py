"""The model zoo: registered encoding and decoding models (see :mod:`.registry`)."""

from brainpipe.models import decoders, encoders  # noqa: F401  (register built-ins)
from brainpipe.models.registry import (
    MODELS,
    FitResult,
    ModelSpec,
    get_model,
    model_params,
    register_model,
)

__all__ = ["MODELS", "FitResult", "ModelSpec", "get_model", "model_params", "register_model"]
