"""Registry of stimulus feature models.

A feature model is a callable::

    model(stimuli: pandas.DataFrame, stimuli_dir: Path, train_mask: np.ndarray) -> np.ndarray

returning raw features of shape ``(n_stimuli, n_raw_features)`` (float32), one row per
row of ``stimuli`` in the same order. ``train_mask`` (bool, ``(n_stimuli,)``) marks the
training stimuli: anything a model fits (a vocabulary, a normaliser) must be fitted on
those rows only, so test stimuli never leak into the features.

Adding a model is one function plus the decorator::

    @register_feature_model("my_model", required_columns=("image",))
    def my_model(stimuli, stimuli_dir, train_mask):
        ...

A model may also give its spatial map (before spatial pooling, for readouts that attend
over positions), registered on the same entry::

    @register_spatial_map("my_model")
    def my_model_map(stimuli, stimuli_dir):  # -> (n_stimuli, n_tokens, n_channels)
        ...

PCA fitted on training stimuli and the Zarr feature store live in
:mod:`brainpipe.features.pca`; the spatial store in :mod:`brainpipe.features.spatial`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from brainpipe.errors import BrainpipeInputError

FeatureModel = Callable[[pd.DataFrame, Path, np.ndarray], np.ndarray]
"""Signature of a feature model: ``(stimuli, stimuli_dir, train_mask) -> (n, n_raw) float32``."""

SpatialModel = Callable[[pd.DataFrame, Path], np.ndarray]
"""Signature of a spatial map: ``(stimuli, stimuli_dir) -> (n, n_tokens, n_channels)``."""

FEATURE_MODELS: dict[str, FeatureModel] = {}
"""Registered feature models by name (the one feature registry; a model's spatial map is
its ``spatial`` attribute, :func:`register_spatial_map`)."""


def register_feature_model(
    name: str, required_columns: Sequence[str] = ()
) -> Callable[[FeatureModel], FeatureModel]:
    """Decorator registering a feature model under ``name``.

    Parameters
    ----------
    name : str
        Registry key (the ``{feature_model}`` wildcard of the workflow).
    required_columns : sequence of str, optional
        Columns of the stimuli table the model reads; the store builder checks them up
        front and names the file and the missing column. Stored on the function as
        ``required_columns``.

    Returns
    -------
    decorator : callable
        Returns the function unchanged (apart from the ``required_columns`` attribute).
    """

    def decorator(func: FeatureModel) -> FeatureModel:
        if name in FEATURE_MODELS and FEATURE_MODELS[name] is not func:
            raise ValueError(f"feature model {name!r} is already registered")
        func.required_columns = tuple(required_columns)  # type: ignore[attr-defined]
        FEATURE_MODELS[name] = func
        return func

    return decorator


def get_feature_model(name: str) -> FeatureModel:
    """Return the feature model registered as ``name``.

    Raises
    ------
    BrainpipeInputError
        If ``name`` is unknown; the message lists the known models.
    """
    try:
        return FEATURE_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(FEATURE_MODELS)) or "(none)"
        raise BrainpipeInputError(
            "config", "feature_model", f"unknown feature model {name!r}; known models: {known}"
        ) from None


def register_spatial_map(name: str) -> Callable[[SpatialModel], SpatialModel]:
    """Decorator registering the spatial map of the feature model ``name`` (registered first).

    Raises
    ------
    BrainpipeInputError
        If no feature model ``name`` is registered.
    """

    def decorator(func: SpatialModel) -> SpatialModel:
        get_feature_model(name).spatial = func  # type: ignore[attr-defined]
        return func

    return decorator


def get_spatial_map(name: str) -> SpatialModel:
    """The spatial map of feature model ``name``.

    Raises
    ------
    BrainpipeInputError
        If ``name`` is unknown or has no spatial map; the message lists those that do.
    """
    spatial = getattr(FEATURE_MODELS.get(name), "spatial", None)
    if spatial is None:
        have = sorted(n for n, m in FEATURE_MODELS.items() if getattr(m, "spatial", None))
        raise BrainpipeInputError(
            "config", "features", f"no spatial feature model {name!r} (have {have})"
        )
    return spatial


def required_columns(name: str) -> tuple[str, ...]:
    """Columns of the stimuli table that feature model ``name`` reads."""
    return tuple(getattr(get_feature_model(name), "required_columns", ()))


def check_columns(table: pd.DataFrame, columns: Sequence[str], source: str | Path) -> None:
    """Raise :class:`BrainpipeInputError` naming ``source`` and the first missing column."""
    for col in columns:
        if col not in table.columns:
            raise BrainpipeInputError(
                str(source),
                col,
                f"column is missing (columns present: {', '.join(map(str, table.columns))})",
            )


def table_source(stimuli: pd.DataFrame) -> str:
    """The file a stimuli table was read from (``stimuli.attrs['source']``) for messages."""
    return str(stimuli.attrs.get("source", "<stimuli table>"))


# Built-in models register themselves on import.
from brainpipe.features import caption, gabor  # noqa: E402, F401

__all__ = [
    "FEATURE_MODELS",
    "FeatureModel",
    "SpatialModel",
    "check_columns",
    "get_feature_model",
    "get_spatial_map",
    "register_feature_model",
    "register_spatial_map",
    "required_columns",
    "table_source",
]
