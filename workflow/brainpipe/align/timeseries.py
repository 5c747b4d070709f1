"""Shared response over time: SRM on time series and its standard evaluation.

For naturalistic movies and stories, subjects are aligned on their time series (one
stimulus clock), not on betas. Two variants of the shared response model (Chen et al.
2015), both from BrainIAK (``brainiak.funcalign.srm``, the reference implementation):

- ``srm``: probabilistic SRM (``SRM``, EM with a Gaussian shared response and
  per-subject noise variances);
- ``detsrm``: deterministic SRM (``DetSRM``); brainpipe's own deterministic SRM
  (:func:`brainpipe.align._solvers.deterministic_srm`, used by the betas alignment) is
  measured against it in ``benchmarks/srm_timeseries.py``.

Evaluation (:func:`time_segment_matching`): fit on the training part of the movie, then
for each left-out subject and each segment of ``window`` time points of the left-out
part, identify the segment among all non-overlapping candidates by correlating the
subject's shared response with the average of the other subjects' (Chen et al. 2015;
the BrainIAK SRM tutorial). Chance is one over the number of candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METHODS = ("srm", "detsrm")


def fit_srm(
    train: Sequence[np.ndarray],
    n_components: int,
    method: str = "srm",
    n_iter: int = 20,
    seed: int = 0,
) -> list[np.ndarray]:
    """Fit an SRM on time series; return each subject's map to the shared space.

    Parameters
    ----------
    train : sequence of ndarray, each (n_timepoints, n_voxels_s)
        The subjects' training time series on one clock (columns z-scored by the caller).
    n_components : int
    method : {"srm", "detsrm"}
    n_iter : int
    seed : int

    Returns
    -------
    transforms : list of ndarray, each (n_voxels_s, n_components)
        ``shared_s = X_s @ W_s`` (orthonormal columns).
    """
    from brainiak.funcalign.srm import SRM, DetSRM

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cls = SRM if method == "srm" else DetSRM
    model = cls(n_iter=int(n_iter), features=int(n_components), rand_seed=int(seed))
    model.fit([np.asarray(x, np.float64).T for x in train])
    return [np.asarray(w) for w in model.w_]


def zscore_time(x: np.ndarray) -> np.ndarray:
    """Each column z-scored over time (sd 0 -> 1)."""
    x = np.asarray(x, np.float64)
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def time_segment_matching(shared: Sequence[np.ndarray], window: int) -> dict[str, float]:
    """Left-out-subject time-segment matching on shared responses of held-out time points.

    Parameters
    ----------
    shared : sequence of ndarray, each (n_timepoints, n_components)
        Every subject's held-out time series in the shared space.
    window : int
        Segment length (time points).

    Returns
    -------
    dict
        ``accuracy`` (mean over subjects and segments), ``chance`` (mean of one over the
        candidates of each query), ``per_subject`` accuracies (list) and ``n_segments``.
    """
    n_sub = len(shared)
    T = shared[0].shape[0]
    n_seg = T - window + 1
    if n_sub < 2 or n_seg < 2:
        raise ValueError(f"need >= 2 subjects and >= 2 segments (got {n_sub}, {n_seg})")
    starts = np.arange(n_seg)
    overlap = (np.abs(starts[:, None] - starts[None, :]) < window) & (
        starts[:, None] != starts[None, :]
    )
    candidates = n_seg - overlap.sum(axis=1)
    per_subject = []
    total = np.sum(shared, axis=0)
    for z in shared:
        others = (total - z) / (n_sub - 1)
        a = _segments(zscore_time(z), window)
        b = _segments(zscore_time(others), window)
        corr = _row_corr(a, b)
        corr[overlap] = -np.inf
        per_subject.append(float(np.mean(np.argmax(corr, axis=1) == starts)))
    return {
        "accuracy": float(np.mean(per_subject)),
        "chance": float(np.mean(1.0 / candidates)),
        "per_subject": per_subject,
        "n_segments": int(n_seg),
    }


def _segments(z: np.ndarray, window: int) -> np.ndarray:
    """Every window of ``window`` time points, flattened: (n_segments, window * n_components)."""
    idx = np.arange(z.shape[0] - window + 1)[:, None] + np.arange(window)[None, :]
    return z[idx].reshape(len(idx), -1)


def _row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def subspace_recovery(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Canonical correlations between an estimated and the true latent time courses.

    Parameters
    ----------
    estimated, true : ndarray, shape (n_timepoints, n_components)

    Returns
    -------
    ndarray, shape (n_components,)
        Cosines of the principal angles between the two column spaces (after centring),
        descending: all near 1 when the shared subspace is recovered.
    """
    qa, _ = np.linalg.qr(estimated - estimated.mean(axis=0))
    qb, _ = np.linalg.qr(true - true.mean(axis=0))
    return np.linalg.svd(qa.T @ qb, compute_uv=False)
