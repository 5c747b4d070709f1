"""Banded ridge by random search over band weightings, solved in feature space.

The problem and the search are himalaya's ``BandedRidgeCV``
(``himalaya.ridge.solve_group_ridge_random_search``, the defaults brainpipe calls it
with): band ``k``'s columns are scaled by ``sqrt(gamma_k)``, ``gamma`` a point of the
simplex (``n_iter`` Dirichlet samples, the first one uniform, drawn by himalaya's own
sampler so a seed gives the same weightings); for every weighting, fold and alpha the
ridge fit on the fold's training rows is scored on its validation rows by himalaya's
``l2_neg_loss`` (minus the mean squared error over the validation rows); each voxel keeps
the weighting and alpha with the best score averaged over folds (himalaya's tie rules:
a ``1e-10 log(alpha)`` slope towards larger alphas, a later weighting only when it beats
the best by float32 epsilon), and is refitted on all training rows. ``deltas =
log(gamma / alpha)``.

What differs is how each score is computed. himalaya forms each fold's hat matrix
``(n_validation, n_fit)`` and predicts the validation rows: ``2 n_validation n_fit
n_voxels`` flops per weighting, fold and alpha (~2.4e15 for an NSD subject). Here
everything stays in feature space (``p`` columns, ``p`` much smaller than the trials):
one pass over the targets gives every fold's sufficient statistics
(:func:`fold_statistics`: the validation rows' Gram matrix ``X_vᵀ X_v``, cross-products
``X_vᵀ Y_v`` and sums of squares ``Σ Y_v²``; the fit rows' are all rows' minus those).
Then, per weighting and fold, with ``S`` the column scales, ``A = S X_fᵀ X_f S = Q
diag(λ) Qᵀ`` is decomposed once (``p x p``); for every alpha the coefficients are
``W = S Q diag(1/(λ+α)) Qᵀ S X_fᵀ Y_f`` and the validation loss per voxel is the
quadratic form ``Σ Y_v² - 2 Wᵀ X_vᵀ Y_v + Wᵀ X_vᵀ X_v W``: ``O(p² n_voxels)`` per alpha,
no prediction or hat matrix is ever formed (:func:`banded_ridge_search`). The refit
(:func:`banded_ridge_refit`) decomposes the all-rows Gram matrix once per weighting used.
Statistics and losses are float64 (the losses are differences of large sums); each
fold's score is stored in float32 as himalaya stores it, so equal scores break ties the
same way.

Written against :class:`brainpipe.backend.Backend` (numpy, or torch on the CPU or a GPU);
the per-voxel choices are made on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainpipe.backend import Backend

Fold = tuple[np.ndarray, np.ndarray]

#: himalaya's default Dirichlet concentrations (cycled through the samples).
CONCENTRATION: tuple[float, ...] = (0.1, 1.0)
#: Trials moved to the backend (and to float64) at a time by :func:`fold_statistics`.
ROW_CHUNK = 1024


def sample_band_weights(
    n_iter: int, n_bands: int, seed: int | None, concentration: Sequence[float] = CONCENTRATION
) -> np.ndarray:
    """The band weightings himalaya's random search tries, ``(n_iter, n_bands)``.

    himalaya's own sampler (``generate_dirichlet_samples``) with the same seed, the first
    weighting replaced by the uniform one, rounded to float32 as himalaya holds them for
    float32 features.
    """
    from himalaya.backend import get_backend as himalaya_backend
    from himalaya.kernel_ridge import generate_dirichlet_samples

    gammas = generate_dirichlet_samples(
        n_samples=int(n_iter), n_kernels=int(n_bands), concentration=list(concentration),
        random_state=seed,
    )  # fmt: skip
    gammas = np.array(himalaya_backend().to_numpy(gammas), dtype=np.float64)
    gammas[0] = 1.0 / n_bands
    return gammas.astype(np.float32).astype(np.float64)


@dataclass
class FoldStatistics:
    """Sufficient statistics of every fold of one voxel block (backend arrays, float64).

    Attributes
    ----------
    gram, cross : all training rows' ``Xᵀ X (p, p)`` and ``Xᵀ Y (p, v)``.
    gram_out, cross_out : per fold, the same over the rows outside its fit rows.
    gram_val, cross_val, ss_val : per fold, over its validation rows (``ss_val`` is
        ``Σ Y_v²`` per voxel); the ``*_out`` arrays themselves when the validation rows
        are exactly the rows outside the fit rows (K-fold).
    n_val : validation rows per fold.
    """

    gram: Any
    cross: Any
    gram_out: list[Any]
    cross_out: list[Any]
    gram_val: list[Any]
    cross_val: list[Any]
    ss_val: list[Any]
    n_val: list[int]


def _row_stats(
    X: Any, Y: np.ndarray, offset: Any, rows: np.ndarray, backend: Backend, squares: bool
) -> tuple[Any, Any, Any]:
    """``X_rᵀ X_r``, ``X_rᵀ Y_r`` and (``squares``) ``Σ Y_r²`` of the rows ``rows``
    (``Y - offset``)."""
    p, v = X.shape[1], Y.shape[1]
    Xr = X[rows]  # numpy index arrays index torch tensors too
    gram = Xr.T @ Xr
    cross = backend.zeros((p, v))
    ss = backend.zeros((v,)) if squares else None
    for start in range(0, len(rows), ROW_CHUNK):
        chunk = rows[start : start + ROW_CHUNK]
        Yc = backend.asarray(Y[chunk])
        if offset is not None:
            Yc -= offset
        cross += Xr[start : start + len(chunk)].T @ Yc
        if squares:
            ss += backend.sum(Yc * Yc, axis=0)
        del Yc
    return gram, cross, ss


def fold_statistics(
    X: np.ndarray,
    Y: np.ndarray,
    folds: Sequence[Fold],
    backend: Backend,
    y_offset: np.ndarray | None = None,
) -> FoldStatistics:
    """Every fold's Gram matrices, cross-products and sums of squares, one pass over ``Y``.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_features)
        Features (already centred and scaled as the fit wants them).
    Y : ndarray, shape (n_samples, n_voxels)
        Targets; moved to the backend :data:`ROW_CHUNK` rows at a time (never copied
        whole).
    folds : sequence of (fit_rows, validation_rows)
    backend : Backend
        float64.
    y_offset : ndarray, shape (n_voxels,), optional
        Subtracted from ``Y`` (its training mean, so the targets are centred).

    Returns
    -------
    FoldStatistics
    """
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"X has {n} rows, Y {Y.shape[0]}")
    Xb = backend.asarray(X)
    offset = None if y_offset is None else backend.asarray(y_offset)
    gram_out, cross_out, gram_val, cross_val, ss_val, n_val = [], [], [], [], [], []
    for fit, val in folds:
        fit, val = np.asarray(fit), np.asarray(val)
        if fit.size == 0 or val.size == 0:
            raise ValueError("empty fit or validation rows in a fold")
        outside = np.setdiff1d(np.arange(n), fit)
        gv, cv, sv = _row_stats(Xb, Y, offset, np.sort(val), backend, squares=True)
        if np.array_equal(outside, np.sort(val)):
            go, co = gv, cv
        else:
            go, co, _ = _row_stats(Xb, Y, offset, outside, backend, squares=False)
        gram_out.append(go)
        cross_out.append(co)
        gram_val.append(gv)
        cross_val.append(cv)
        ss_val.append(sv)
        n_val.append(int(val.size))
    # All rows: the validation sets when they partition the rows (K-fold), else one pass.
    vals = np.sort(np.concatenate([np.asarray(v) for _, v in folds]))
    if np.array_equal(vals, np.arange(n)):
        gram, cross = sum(gram_val[1:], gram_val[0]), sum(cross_val[1:], cross_val[0])
    else:
        gram, cross, _ = _row_stats(Xb, Y, offset, np.arange(n), backend, squares=False)
    return FoldStatistics(gram, cross, gram_out, cross_out, gram_val, cross_val, ss_val, n_val)


def _scaled_eigh(gram: Any, s: Any, backend: Backend) -> tuple[Any, Any]:
    """Eigenvalues (clipped at 0) and eigenvectors of ``S gram S`` (``s`` the diagonal)."""
    lam, Q = backend.eigh(s[:, None] * gram * s[None, :])
    return backend.clip(lam, 0.0, None), Q


def banded_ridge_search(
    stats: FoldStatistics,
    band: np.ndarray,
    gammas: np.ndarray,
    alphas: np.ndarray,
    backend: Backend,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per voxel, the band weighting and alpha of the best cross-validated l2 loss.

    Parameters
    ----------
    stats : FoldStatistics
    band : ndarray of int, shape (n_features,)
        Band of each column.
    gammas : ndarray, shape (n_iter, n_bands)
        Band weightings (:func:`sample_band_weights`).
    alphas : ndarray, shape (n_alphas,)
    backend : Backend

    Returns
    -------
    best_iter : ndarray of int, shape (n_voxels,)
        Index of each voxel's weighting in ``gammas``.
    best_alpha : ndarray of float64, shape (n_voxels,)
    updated : ndarray of bool, shape (n_voxels,)
        Whether any weighting scored (False only for non-finite scores; himalaya then
        leaves the voxel's weights at zero).
    cv_scores : ndarray of float32, shape (n_iter, n_voxels)
        Mean validation score over folds of each weighting's best alpha.
    """
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    n_voxels = stats.cross.shape[1]
    n_folds = len(stats.n_val)
    eps = np.finfo(np.float32).eps
    slope = (np.log(alphas) * 1e-10)[:, None]
    best_score = np.full(n_voxels, -np.inf, dtype=np.float32)
    best_iter = np.zeros(n_voxels, dtype=np.int64)
    best_alpha = np.ones(n_voxels)
    updated = np.zeros(n_voxels, dtype=bool)
    cv_scores = np.zeros((len(gammas), n_voxels), dtype=np.float32)
    for i, gamma in enumerate(gammas):
        s = backend.asarray(np.sqrt(gamma.astype(np.float32)).astype(np.float64)[band])
        scores = np.empty((n_folds, alphas.size, n_voxels), dtype=np.float32)
        for f in range(n_folds):
            lam, Q = _scaled_eigh(stats.gram - stats.gram_out[f], s, backend)
            R = Q.T @ (s[:, None] * (stats.cross - stats.cross_out[f]))  # W(α) = S Q R/(λ+α)
            T = Q.T @ (s[:, None] * stats.cross_val[f])
            M = Q.T @ (s[:, None] * stats.gram_val[f] * s[None, :]) @ Q
            shrink = 1.0 / (lam[None, :] + backend.asarray(alphas)[:, None])  # (n_alphas, p)
            cross_term = shrink @ (R * T)  # (n_alphas, v)
            del T
            for a in range(alphas.size):
                W = shrink[a][:, None] * R
                quad = backend.sum(W * (M @ W), axis=0)
                sse = stats.ss_val[f] - 2.0 * cross_term[a] + quad
                scores[f, a] = backend.to_numpy(-sse / stats.n_val[f])
                del W, quad, sse
            del lam, Q, R, M
        mean = scores.mean(axis=0, dtype=np.float64) + slope
        arg = np.argmax(mean, axis=0)
        score = mean[arg, np.arange(n_voxels)]
        cv_scores[i] = score
        mask = score > best_score + eps
        best_score[mask] = score[mask]
        best_iter[mask] = i
        best_alpha[mask] = alphas[arg[mask]]
        updated |= mask
    return best_iter, best_alpha, updated, cv_scores


def banded_ridge_refit(
    stats: FoldStatistics,
    band: np.ndarray,
    gammas: np.ndarray,
    best_iter: np.ndarray,
    best_alpha: np.ndarray,
    updated: np.ndarray,
    backend: Backend,
) -> np.ndarray:
    """Coefficients on all training rows, ``(n_features, n_voxels)`` float64 on the host.

    For each voxel, ``S Q diag(1/(λ+α)) Qᵀ S Xᵀ Y`` with its weighting's scales ``S`` and
    its alpha (the ridge solution on the scaled features, mapped back to the unscaled ones,
    as himalaya's refit); zero where ``updated`` is False.
    """
    coef = np.zeros(stats.cross.shape, dtype=np.float64)
    for i in np.unique(best_iter[updated]):
        s = backend.asarray(np.sqrt(gammas[i].astype(np.float32)).astype(np.float64)[band])
        lam, Q = _scaled_eigh(stats.gram, s, backend)
        for alpha in np.unique(best_alpha[updated & (best_iter == i)]):
            cols = np.flatnonzero(updated & (best_iter == i) & (best_alpha == alpha))
            R = Q.T @ (s[:, None] * stats.cross[:, cols])
            coef[:, cols] = backend.to_numpy(s[:, None] * (Q @ (R / (lam + alpha)[:, None])))
    return coef


def banded_ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    band: np.ndarray,
    folds: Sequence[Fold],
    alphas: Sequence[float] | np.ndarray,
    n_iter: int,
    seed: int | None,
    backend: Backend,
    y_offset: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Fit banded ridge on one voxel block (no intercept: ``X`` and ``Y - y_offset``
    centred).

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_features)
    Y : ndarray, shape (n_samples, n_voxels)
    band : ndarray of int, shape (n_features,)
        Band of each column, ``0 .. n_bands - 1``.
    folds : sequence of (fit_rows, validation_rows)
    alphas : array-like, shape (n_alphas,)
    n_iter : int
        Band weightings tried (:func:`sample_band_weights` with ``seed``).
    seed : int or None
    backend : Backend
        float64 (numpy, or torch on the CPU or a GPU).
    y_offset : ndarray, shape (n_voxels,), optional
        Subtracted from ``Y`` as it is read (``Y`` itself is left unchanged).

    Returns
    -------
    dict
        ``coef (n_features, n_voxels)``, ``deltas (n_bands, n_voxels)`` (log of
        ``gamma / alpha``), ``alpha`` and ``cv_score`` (per voxel, its best mean
        validation score), all float64 on the host except ``cv_score`` (float32).
    """
    band = np.asarray(band, dtype=np.int64)
    n_bands = int(band.max()) + 1
    if X.shape[1] != band.size:
        raise ValueError(f"band has {band.size} entries for {X.shape[1]} columns")
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    gammas = sample_band_weights(n_iter, n_bands, seed)
    stats = fold_statistics(X, Y, folds, backend, y_offset)
    best_iter, best_alpha, updated, cv_scores = banded_ridge_search(
        stats, band, gammas, alphas, backend
    )
    coef = banded_ridge_refit(stats, band, gammas, best_iter, best_alpha, updated, backend)
    best_gamma = np.where(updated, gammas[best_iter].T, 1.0 / n_bands)
    deltas = np.log(best_gamma / best_alpha[None, :])
    cv_score = cv_scores[best_iter, np.arange(Y.shape[1])]
    return {"coef": coef, "deltas": deltas, "alpha": best_alpha, "cv_score": cv_score}
