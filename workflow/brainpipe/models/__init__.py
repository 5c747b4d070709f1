"""The model zoo: registered encoding and decoding models (see :mod:`.registry`)."""

# M/EEG models register themselves in the same registry
from brainpipe.meeg import decoding as _meeg_decoding  # noqa: E402, F401, I001
from brainpipe.models import decoders, encoders, incontext  # noqa: F401  (register built-ins)
from brainpipe.models.registry import (
    MODELS,
    FitResult,
    ModelSpec,
    get_model,
    model_params,
    register_model,
)

__all__ = ["MODELS", "FitResult", "ModelSpec", "get_model", "model_params", "register_model"]
