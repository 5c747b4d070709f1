"""How well an alignment carries responses from one subject to another."""

from __future__ import annotations

import numpy as np

from brainpipe.metrics import pearson_r


def cross_subject_r(
    estimator: object,
    X_source: np.ndarray,
    source: int,
    X_target: np.ndarray,
    target: int,
) -> np.ndarray:
    """Per-voxel Pearson r of subject ``target``'s responses predicted from ``source``.

    The source's responses go into the shared space (``transform``) and back out into
    the target's voxels (``inverse_transform``); the prediction is correlated, voxel by
    voxel, across samples with the target's measured responses.

    Parameters
    ----------
    estimator : fitted alignment estimator
    X_source : ndarray, shape (n_samples, n_voxels_source)
    source : int
    X_target : ndarray, shape (n_samples, n_voxels_target)
        The same samples (stimuli), in the same order.
    target : int

    Returns
    -------
    ndarray of float64, shape (n_voxels_target,)
    """
    Z = estimator.transform(X_source, source)  # type: ignore[attr-defined]
    pred = estimator.inverse_transform(Z, target)  # type: ignore[attr-defined]
    return pearson_r(np.asarray(X_target, dtype=np.float64), pred)
