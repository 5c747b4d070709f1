"""Ridge regression with a per-target (per-voxel) penalty chosen by cross-validation.

Written himalaya-style: pure solvers (:func:`solve_ridge_cv`, :func:`fit_ridge`) that take
arrays and return arrays, and a thin scikit-learn-shaped estimator
(:class:`RidgeCVEncoder`) that validates inputs, builds the folds and calls them.

For each fold the centred training design is decomposed ONCE — a thin SVD of ``X``
(primal, ``n_samples >= n_features``) or an eigendecomposition of the Gram matrix
``X Xᵀ`` (dual, ``n_samples < n_features``) — and reused for every alpha and every target:
with ``X = U diag(s) Vᵀ`` the ridge solution is ``coef = V diag(s / (s² + α)) Uᵀ Y``, so
the per-alpha work is a diagonal rescaling of ``Uᵀ Y`` and one matrix product, vectorised
over targets. An intercept is always fitted (X and Y centred on the training rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

Method = Literal["auto", "primal", "dual"]
Score = Literal["r2", "pearson"]
Fold = tuple[np.ndarray, np.ndarray]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 6, 17))


# --- solvers --------------------------------------------------------------------------


def _decompose(X: np.ndarray, method: Method) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decompose centred ``X`` once; return ``(P, spec, W)``.

    Ridge predictions on (centred) ``Z`` are ``Z @ P @ diag(_shrink(spec, α)) @ Wᵀ @ Y``.
    Primal (thin SVD ``X = U diag(s) Vᵀ``): ``P = V``, ``spec = s``, ``W = U``.
    Dual (``X Xᵀ = U diag(λ) Uᵀ``): ``P = Xᵀ U``, ``spec = λ``, ``W = U``.
    """
    n, p = X.shape
    if method == "auto":
        method = "primal" if n >= p else "dual"
    if method == "primal":
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        return Vt.T, s, U
    if method == "dual":
        lam, U = np.linalg.eigh(X @ X.T)
        lam = np.clip(lam, 0.0, None)
        return X.T @ U, lam, U
    raise ValueError(f"method must be 'auto', 'primal' or 'dual', got {method!r}")


def _shrink(spec: np.ndarray, alpha: np.ndarray | float, primal: bool) -> np.ndarray:
    """Spectral ridge filter: ``s/(s²+α)`` (primal, spec=s) or ``1/(λ+α)`` (dual, spec=λ)."""
    if primal:
        return spec / (spec**2 + alpha)
    return 1.0 / (spec + alpha)


def _is_primal(X: np.ndarray, method: Method) -> bool:
    if method == "auto":
        return X.shape[0] >= X.shape[1]
    return method == "primal"


def _score(y_true: np.ndarray, y_pred: np.ndarray, score: Score) -> np.ndarray:
    """Per-column R² (constant columns → 0) or Pearson r (constant → 0), float64."""
    if score == "r2":
        ss_res = ((y_true - y_pred) ** 2).sum(0)
        ss_tot = ((y_true - y_true.mean(0)) ** 2).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = 1.0 - ss_res / ss_tot
        out[ss_tot == 0] = 0.0
        return out
    if score == "pearson":
        from brainpipe.metrics import pearson_r

        return pearson_r(y_true, y_pred)
    raise ValueError(f"score must be 'r2' or 'pearson', got {score!r}")


def solve_ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    alphas: Sequence[float] | np.ndarray,
    folds: Iterable[Fold],
    score: Score = "r2",
    method: Method = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Choose a ridge penalty per target by cross-validation.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_features)
    Y : ndarray, shape (n_samples, n_targets)
    alphas : array-like, shape (n_alphas,)
        Candidate penalties (> 0).
    folds : iterable of (train_idx, val_idx)
        Integer index arrays; each fold's validation rows are scored with a model fitted
        (with intercept) on its training rows.
    score : {"r2", "pearson"}
        Validation score per target. R² uses the validation fold's own mean
        (as himalaya does); constant targets score 0.
    method : {"auto", "primal", "dual"}
        Decomposition per fold: thin SVD of ``X`` (primal) or eigendecomposition of the
        Gram matrix (dual). "auto" takes primal when ``n_train >= n_features``.

    Returns
    -------
    best_alphas : ndarray of float64, shape (n_targets,)
        Per target, the alpha maximising the mean validation score (first on ties).
    cv_scores : ndarray of float64, shape (n_alphas, n_targets)
        Validation score averaged over folds.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    scores = np.zeros((alphas.size, Y.shape[1]))
    n_folds = 0
    for train, val in folds:
        train, val = np.asarray(train), np.asarray(val)
        x_mean, y_mean = X[train].mean(0), Y[train].mean(0)
        Xtr, Ytr = X[train] - x_mean, Y[train] - y_mean
        Xval, Yval = X[val] - x_mean, Y[val] - y_mean
        primal = _is_primal(Xtr, method)
        P, spec, W = _decompose(Xtr, "primal" if primal else "dual")
        A = Xval @ P  # (n_val, r)
        B = W.T @ Ytr  # (r, n_targets)
        for i, alpha in enumerate(alphas):
            pred = A @ (_shrink(spec, alpha, primal)[:, None] * B)
            scores[i] += _score(Yval, pred, score)
        n_folds += 1
    if n_folds == 0:
        raise ValueError("folds is empty")
    cv_scores = scores / n_folds
    best = alphas[np.argmax(cv_scores, axis=0)]
    return best, cv_scores


def fit_ridge(
    X: np.ndarray,
    Y: np.ndarray,
    alpha_per_target: np.ndarray | float,
    method: Method = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ridge with intercept and one penalty per target, from one decomposition of X.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_features)
    Y : ndarray, shape (n_samples, n_targets)
    alpha_per_target : float or ndarray, shape (n_targets,)
        Penalty of each target (a scalar applies to all).
    method : {"auto", "primal", "dual"}
        See :func:`solve_ridge_cv`.

    Returns
    -------
    coef : ndarray of float64, shape (n_features, n_targets)
        ``coef[:, j] = V diag(s / (s² + α_j)) Uᵀ (Y[:, j] - mean)``.
    intercept : ndarray of float64, shape (n_targets,)
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    alpha = np.broadcast_to(np.asarray(alpha_per_target, dtype=np.float64), (Y.shape[1],))
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc, Yc = X - x_mean, Y - y_mean
    primal = _is_primal(Xc, method)
    P, spec, W = _decompose(Xc, "primal" if primal else "dual")
    B = W.T @ Yc  # (r, n_targets)
    coef = P @ (_shrink(spec[:, None], alpha[None, :], primal) * B)
    intercept = y_mean - x_mean @ coef
    return coef, intercept


def make_group_folds(
    n_samples: int,
    n_folds: int,
    groups: np.ndarray | None = None,
    random_state: int | None = 0,
) -> list[Fold]:
    """K folds in which all samples of one group share a fold.

    Groups are shuffled (``random_state``), then assigned largest first to the currently
    smallest fold (as scikit-learn's GroupKFold), so folds have balanced sizes and the
    repeats of a stimulus never straddle training and validation.

    Parameters
    ----------
    n_samples : int
    n_folds : int
        Number of folds (>= 2, <= number of groups).
    groups : ndarray, shape (n_samples,), optional
        Group label per sample (e.g. the stimulus of each trial). ``None``: each sample
        is its own group (shuffled K-fold).
    random_state : int or None

    Returns
    -------
    folds : list of (train_idx, val_idx), length n_folds
        Sorted int64 index arrays.
    """
    if groups is None:
        groups = np.arange(n_samples)
    groups = np.asarray(groups)
    if groups.shape != (n_samples,):
        raise ValueError(f"groups must have shape ({n_samples},), got {groups.shape}")
    uniq, codes, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if uniq.size < n_folds:
        raise ValueError(
            f"n_folds={n_folds} is more than the number of groups ({uniq.size}); "
            "each fold needs at least one group"
        )
    rng = np.random.default_rng(random_state)
    perm = rng.permutation(uniq.size)
    order = perm[np.argsort(-counts[perm], kind="stable")]  # largest first, ties shuffled
    fold_of_group = np.empty(uniq.size, dtype=np.int64)
    sizes = np.zeros(n_folds, dtype=np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of_group[g] = f
        sizes[f] += counts[g]
    fold_of_sample = fold_of_group[codes]
    idx = np.arange(n_samples)
    return [(idx[fold_of_sample != f], idx[fold_of_sample == f]) for f in range(n_folds)]


# --- estimator ------------------------------------------------------------------------


def _check_2d(name: str, A: np.ndarray) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 1 and name == "Y":
        A = A[:, None]
    if A.ndim != 2:
        what = "n_features" if name == "X" else "n_targets"
        raise ValueError(f"{name} must be 2-D (n_samples, {what}), got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        bad = np.argwhere(~np.isfinite(A))[0]
        raise ValueError(
            f"{name} contains NaN or infinite values (first at row {bad[0]}, column {bad[1]})"
        )
    return A


class RidgeCVEncoder:
    """Ridge encoding model with a per-target penalty chosen by grouped cross-validation.

    Parameters
    ----------
    alphas : array-like, shape (n_alphas,)
        Candidate penalties (> 0).
    n_folds : int
        Number of cross-validation folds.
    random_state : int or None
        Seed of the fold assignment.
    score : {"r2", "pearson"}
        Validation score used to choose alphas.
    method : {"auto", "primal", "dual"}
        Decomposition (see :func:`solve_ridge_cv`).

    Attributes
    ----------
    coef_ : ndarray of float64, shape (n_features, n_targets)
    intercept_ : ndarray of float64, shape (n_targets,)
    alpha_ : ndarray of float64, shape (n_targets,)
        Chosen penalty of each target.
    cv_scores_ : ndarray of float64, shape (n_alphas, n_targets)
        Validation score per alpha, averaged over folds.
    folds_ : list of (train_idx, val_idx)
        The folds used.
    n_features_in_ : int
    """

    def __init__(
        self,
        alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
        n_folds: int = 5,
        random_state: int | None = 0,
        score: Score = "r2",
        method: Method = "auto",
    ) -> None:
        self.alphas = alphas
        self.n_folds = n_folds
        self.random_state = random_state
        self.score = score
        self.method = method

    def fit(self, X: np.ndarray, Y: np.ndarray, groups: np.ndarray | None = None) -> RidgeCVEncoder:
        """Choose alphas by CV, then refit on all of ``X``, ``Y``.

        Parameters
        ----------
        X : ndarray, shape (n_samples, n_features)
        Y : ndarray, shape (n_samples, n_targets) or (n_samples,)
        groups : ndarray, shape (n_samples,), optional
            Group of each sample (e.g. stimulus id of each trial): all samples of a group
            share a fold, so repeats never straddle training and validation.

        Returns
        -------
        self
        """
        X = _check_2d("X", X)
        self._y_1d = np.ndim(Y) == 1
        Y = _check_2d("Y", Y)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"X and Y must have the same number of samples, got {X.shape[0]} and {Y.shape[0]}"
            )
        alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
            raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas}")
        if groups is not None and len(groups) != X.shape[0]:
            raise ValueError(
                f"groups must have one entry per sample ({X.shape[0]}), got {len(groups)}"
            )
        self.folds_ = make_group_folds(X.shape[0], self.n_folds, groups, self.random_state)
        self.alpha_, self.cv_scores_ = solve_ridge_cv(
            X, Y, alphas, self.folds_, score=self.score, method=self.method
        )
        self.coef_, self.intercept_ = fit_ridge(X, Y, self.alpha_, method=self.method)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predict targets.

        Parameters
        ----------
        X : ndarray, shape (n_samples, n_features)

        Returns
        -------
        Y_pred : ndarray of float64, shape (n_samples, n_targets)
            (``(n_samples,)`` if fitted on a 1-D ``Y``.)
        """
        if not hasattr(self, "coef_"):
            raise RuntimeError("RidgeCVEncoder is not fitted; call fit(X, Y) first")
        X = _check_2d("X", X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, the model was fitted with {self.n_features_in_}"
            )
        pred = X @ self.coef_ + self.intercept_
        return pred[:, 0] if self._y_1d else pred
