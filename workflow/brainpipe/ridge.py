"""Ridge regression with a per-target (per-voxel) penalty chosen by cross-validation.

Written himalaya-style: pure solvers (:func:`solve_ridge_cv`, :func:`fit_ridge`) that take
arrays and return arrays, and a thin scikit-learn-shaped estimator
(:class:`RidgeCVEncoder`) that validates inputs, builds the folds and calls them.

Each fold's centred training design is decomposed ONCE and reused for every alpha and
every target, switching form by shape:

- primal (``n_train >= n_features``): eigendecomposition of the small covariance
  ``Xᵀ X = V diag(λ) Vᵀ``; ``coef(α) = V diag(1/(λ+α)) Vᵀ Xᵀ Y``. The training
  cross-products ``Xᵀ Y`` of every fold are the all-rows product minus the validation
  rows' product, so the big ``n × p × t`` product is paid once, not once per fold; and the
  validation R² of every alpha comes from ``p × t`` sufficient statistics (the validation
  Gram matrix and cross-products) without ever forming an ``n_val × t`` prediction;
- dual (``n_train < n_features``): eigendecomposition of the Gram matrix ``X Xᵀ``.

The working precision follows ``Y``: float32 targets are solved in float32 (the
decompositions, which are small, always in float64), float64 targets in float64. An
intercept is always fitted (X and Y centred on the training rows).
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


def _working_dtype(Y: np.ndarray) -> type[np.floating]:
    """float32 for float32 (or narrower) targets, float64 otherwise."""
    return np.float32 if np.asarray(Y).dtype in (np.float32, np.float16) else np.float64


def _is_primal(n_samples: int, n_features: int, method: Method) -> bool:
    if method == "auto":
        return n_samples >= n_features
    if method not in ("primal", "dual"):
        raise ValueError(f"method must be 'auto', 'primal' or 'dual', got {method!r}")
    return method == "primal"


def _score(y_true: np.ndarray, y_pred: np.ndarray, score: Score) -> np.ndarray:
    """Per-column R² (constant columns → 0) or Pearson r (constant → 0), float64."""
    if score == "r2":
        ss_res = ((y_true - y_pred) ** 2).sum(0, dtype=np.float64)
        ss_tot = ((y_true - y_true.mean(0)) ** 2).sum(0, dtype=np.float64)
        return _r2(ss_res, ss_tot)
    if score == "pearson":
        from brainpipe.metrics import pearson_r

        return pearson_r(y_true, y_pred)
    raise ValueError(f"score must be 'r2' or 'pearson', got {score!r}")


def _r2(ss_res: np.ndarray, ss_tot: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 1.0 - ss_res / ss_tot
    out[ss_tot <= 0] = 0.0
    return out


def _sum_sq(A: np.ndarray) -> np.ndarray:
    """Column sums of squares, accumulated in float64."""
    return np.einsum("ij,ij->j", A, A, dtype=np.float64)


def _primal_fold_scores(
    X: np.ndarray,
    Y: np.ndarray,
    XtY: np.ndarray,
    y_sum: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    alphas: np.ndarray,
    score: Score,
) -> np.ndarray:
    """Validation scores ``(n_alphas, n_targets)`` of one fold, primal form.

    ``X`` (float64) and ``Y`` (working dtype) are all rows; ``XtY = Xᵀ Y`` and
    ``y_sum = Σ Y`` over all rows.
    """
    dtype = Y.dtype
    n_train = train.size
    Xv, Yv = X[val], Y[val]
    x_mean = X[train].mean(0)
    y_mean = (y_sum - Yv.sum(0, dtype=np.float64)) / n_train
    Xtr = X[train] - x_mean
    lam, V = np.linalg.eigh(Xtr.T @ Xtr)
    lam = np.clip(lam, 0.0, None)
    # Centred training cross-products: all rows minus validation rows, then the means.
    Cxy = XtY - Xv.astype(dtype).T @ Yv
    Cxy -= np.outer(n_train * x_mean, y_mean).astype(dtype)
    B = V.T.astype(dtype) @ Cxy  # (p, t): coef(α) = V diag(1/(λ+α)) B
    del Cxy
    Z = ((Xv - x_mean) @ V).astype(dtype)  # validation design in the eigenbasis
    E = Yv
    E -= y_mean.astype(dtype)  # validation targets about the training mean (in place)
    shrink = 1.0 / (lam[None, :] + alphas[:, None])  # (n_alphas, p)
    scores = np.empty((alphas.size, Y.shape[1]))
    if score == "pearson":
        for i, f in enumerate(shrink):
            scores[i] = _score(E, Z @ (f.astype(dtype)[:, None] * B), score)
        return scores
    if score != "r2":
        raise ValueError(f"score must be 'r2' or 'pearson', got {score!r}")
    # ||E - Z diag(f) B||² = ||E||² - 2 fᵀ (B ∘ ZᵀE) + ||Z diag(f) B||², per target.
    ss_e = _sum_sq(E)
    e_mean = E.mean(0, dtype=np.float64)
    ss_tot = ss_e - val.size * e_mean**2  # about the validation mean, as himalaya
    cross = shrink @ (B * (Z.T @ E)).astype(np.float64)  # (n_alphas, t)
    del E
    gram = Z.T @ Z if val.size >= Z.shape[1] else None
    for i, f in enumerate(shrink):
        FB = f.astype(dtype)[:, None] * B
        # The cheaper of p×p×t (Gram) and n_val×p×t (predictions) for the quadratic term.
        if gram is not None:
            quad = np.einsum("ij,ij->j", FB, gram @ FB, dtype=np.float64)
        else:
            quad = _sum_sq(Z @ FB)
        scores[i] = _r2(ss_e - 2.0 * cross[i] + quad, ss_tot)
    return scores


def _dual_fold_scores(
    X: np.ndarray,
    Y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    alphas: np.ndarray,
    score: Score,
) -> np.ndarray:
    """Validation scores ``(n_alphas, n_targets)`` of one fold, dual (kernel) form."""
    dtype = Y.dtype
    x_mean = X[train].mean(0)
    Xtr = X[train] - x_mean
    lam, U = np.linalg.eigh(Xtr @ Xtr.T)
    lam = np.clip(lam, 0.0, None)
    Ytr = Y[train]
    y_mean = Ytr.mean(0, dtype=np.float64).astype(dtype)
    Ytr -= y_mean
    B = U.T.astype(dtype) @ Ytr  # (n_train, t)
    del Ytr
    A = ((X[val] - x_mean) @ Xtr.T @ U).astype(dtype)  # (n_val, n_train)
    Yv = Y[val] - y_mean
    scores = np.empty((alphas.size, Y.shape[1]))
    for i, alpha in enumerate(alphas):
        f = (1.0 / (lam + alpha)).astype(dtype)
        scores[i] = _score(Yv, A @ (f[:, None] * B), score)
    return scores


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
        float32 targets are solved in float32, anything else in float64.
    alphas : array-like, shape (n_alphas,)
        Candidate penalties (> 0).
    folds : iterable of (train_idx, val_idx)
        Integer index arrays; each fold's validation rows are scored with a model fitted
        (with intercept) on its training rows.
    score : {"r2", "pearson"}
        Validation score per target. R² uses the validation fold's own mean
        (as himalaya does); constant targets score 0.
    method : {"auto", "primal", "dual"}
        Decomposition per fold: covariance ``XᵀX`` (primal) or Gram matrix ``XXᵀ`` (dual).
        "auto" takes primal when ``n_train >= n_features``.

    Returns
    -------
    best_alphas : ndarray of float64, shape (n_targets,)
        Per target, the alpha maximising the mean validation score (first on ties).
    cv_scores : ndarray of float64, shape (n_alphas, n_targets)
        Validation score averaged over folds.
    """
    dtype = _working_dtype(Y)
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(0)  # a global shift changes nothing but keeps float32 sums well-conditioned
    Y = np.asarray(Y, dtype=dtype)
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    folds = [(np.asarray(train), np.asarray(val)) for train, val in folds]
    if not folds:
        raise ValueError("folds is empty")
    primal = [_is_primal(train.size, X.shape[1], method) for train, _ in folds]
    if any(primal):
        XtY = X.astype(dtype).T @ Y
        y_sum = Y.sum(0, dtype=np.float64)
    scores = np.zeros((alphas.size, Y.shape[1]))
    for (train, val), is_primal in zip(folds, primal, strict=True):
        if is_primal:
            scores += _primal_fold_scores(X, Y, XtY, y_sum, train, val, alphas, score)
        else:
            scores += _dual_fold_scores(X, Y, train, val, alphas, score)
    cv_scores = scores / len(folds)
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
        float32 targets are solved in float32, anything else in float64.
    alpha_per_target : float or ndarray, shape (n_targets,)
        Penalty of each target (a scalar applies to all).
    method : {"auto", "primal", "dual"}
        See :func:`solve_ridge_cv`.

    Returns
    -------
    coef : ndarray, shape (n_features, n_targets)
        ``coef[:, j] = (XᵀX + α_j I)⁻¹ Xᵀ (Y[:, j] - mean)`` (X centred), in the working
        precision.
    intercept : ndarray, shape (n_targets,)
    """
    dtype = _working_dtype(Y)
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=dtype)
    alpha = np.broadcast_to(np.asarray(alpha_per_target, dtype=np.float64), (Y.shape[1],))
    x_mean, y_mean = X.mean(0), Y.mean(0, dtype=np.float64)
    Xc = X - x_mean
    if _is_primal(*X.shape, method):
        lam, V = np.linalg.eigh(Xc.T @ Xc)
        # Σ (x - x̄) y = Σ (x - x̄)(y - ȳ): centring X alone centres the cross-products.
        B = V.T.astype(dtype) @ (Xc.astype(dtype).T @ Y)
        P = V
    else:
        lam, U = np.linalg.eigh(Xc @ Xc.T)
        B = U.T.astype(dtype) @ (Y - y_mean.astype(dtype))
        P = Xc.T @ U
    lam = np.clip(lam, 0.0, None)
    B *= (1.0 / (lam[:, None] + alpha[None, :])).astype(dtype)
    coef = P.astype(dtype) @ B
    intercept = (y_mean - x_mean @ coef).astype(dtype)
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
    A = np.asarray(A)
    if A.dtype not in (np.float32, np.float64):
        A = A.astype(np.float64)
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
    coef_ : ndarray, shape (n_features, n_targets)
        In the working precision (float32 for float32 targets, else float64).
    intercept_ : ndarray, shape (n_targets,)
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
