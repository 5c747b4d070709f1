"""Pure alignment solvers: arrays in, arrays out, no I/O and no validation.

Conventions: a subject's data ``X`` has shape ``(n_samples, n_voxels)`` (samples are
the shared training stimuli, averaged over repeats, already standardised per voxel);
a transform ``W`` has shape ``(n_voxels, n_components)`` and maps data into the shared
space as ``X @ W``; the template ``T`` has shape ``(n_samples, n_components)``. No
solver ever forms an ``n_voxels × n_voxels`` matrix: the largest temporaries are
``n_voxels × n_components`` and ``n_samples × n_voxels``.

Every solver takes a backend from :func:`get_backend` (the package's one backend,
:mod:`brainpipe.backend`, in float64), so the same code runs on numpy or torch (CPU or
CUDA). Float64: alignment is fitted on a few hundred to a few thousand averaged stimuli,
so precision is cheap and the fitted transforms are reproducible to the bit on one machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from brainpipe.backend import Backend as AlignBackend
from brainpipe.backend import get_backend as _package_backend

#: The dtype the alignment solvers compute in.
DTYPE = "float64"


def get_backend(name: str = "numpy") -> AlignBackend:
    """The package backend called ``name`` (``numpy``, ``torch``, ``torch_cuda``, ``auto``)
    in the alignment's :data:`DTYPE`.

    Raises
    ------
    ValueError
        For an unknown name, or ``torch_cuda`` without a CUDA device.
    """
    return _package_backend(name, dtype=DTYPE)


def standardize_stats(X: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and standard deviation (ddof=0); constant voxels get scale 1.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_voxels)

    Returns
    -------
    mean, scale : ndarray of float64, shape (n_voxels,)
    """
    X = np.asarray(X, dtype=np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < eps] = 1.0
    return mean, scale


def procrustes(X: Any, T: Any, backend: AlignBackend, scaling: bool = True) -> tuple[Any, float]:
    """Scaled orthogonal map of ``X`` onto ``T``: ``min ||a X R - T||`` with ``RᵀR = I``.

    Parameters
    ----------
    X : array, shape (n_samples, n_voxels)
    T : array, shape (n_samples, n_components), n_components <= n_voxels
    backend : AlignBackend
    scaling : bool
        Fit the scalar ``a``; otherwise ``a = 1``.

    Returns
    -------
    R : array, shape (n_voxels, n_components)
        Orthonormal columns; from the thin SVD of ``Xᵀ T`` (``n_voxels × n_components``).
    a : float
        ``trace(Σ) / ||X||²`` (Schönemann's scaled Procrustes), or 1.
    """
    U, s, Vt = backend.svd(X.T @ T)
    R = U @ Vt
    a = 1.0
    if scaling:
        nx = backend.norm(X) ** 2
        a = float(backend.sum(s)) / nx if nx > 0 else 1.0
    return R, a


def pca_scores(X: Any, n_components: int, backend: AlignBackend) -> Any:
    """First ``n_components`` principal-component scores ``U_k diag(s_k)``, shape (n_samples, k)."""
    U, s, _ = backend.svd(X)
    return U[:, :n_components] * s[None, :n_components]


def hyperalign(
    Xs: Sequence[Any],
    n_components: int,
    backend: AlignBackend,
    n_iter: int = 2,
    scaling: bool = True,
) -> tuple[list[Any], list[float], Any]:
    """Hyperalignment (Haxby et al. 2011) into an ``n_components``-dimensional template.

    Level 1: the template starts as the first subject's principal-component scores;
    each further subject is Procrustes-aligned to it and averaged in. Level 2 (``n_iter``
    rounds): every subject is aligned to the current template and the template becomes
    the mean of the aligned subjects. Finally every subject is aligned to the template.

    Parameters
    ----------
    Xs : sequence of arrays, shape (n_samples, n_voxels_s)
        Standardised data; voxel counts may differ between subjects.
    n_components : int
        Dimension of the template; at most ``min(n_samples, min_s n_voxels_s)``.
    backend : AlignBackend
    n_iter : int
        Level-2 rounds.
    scaling : bool
        Scaled (True) or plain orthogonal maps.

    Returns
    -------
    transforms : list of arrays, shape (n_voxels_s, n_components)
        ``a_s R_s``: maps subject data into the template space.
    scales : list of float
        ``a_s``.
    template : array, shape (n_samples, n_components)
    """
    T = pca_scores(Xs[0], n_components, backend)
    for count, X in enumerate(Xs[1:], start=1):
        R, a = procrustes(X, T, backend, scaling)
        T = (T * count + a * (X @ R)) / (count + 1)
    for _ in range(n_iter):
        aligned = None
        for X in Xs:
            R, a = procrustes(X, T, backend, scaling)
            part = a * (X @ R)
            aligned = part if aligned is None else aligned + part
        T = aligned / len(Xs)
    transforms, scales = [], []
    for X in Xs:
        R, a = procrustes(X, T, backend, scaling)
        transforms.append(a * R)
        scales.append(a)
    return transforms, scales, T


def random_orthonormal(n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """A seeded random matrix with orthonormal columns, shape (n_rows, n_cols)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n_rows, n_cols)))
    return q * np.sign(np.diag(r))[None, :]


def deterministic_srm(
    Xs: Sequence[Any],
    n_components: int,
    backend: AlignBackend,
    n_iter: int = 20,
    tol: float = 1e-6,
    seed: int = 0,
) -> tuple[list[Any], Any, list[float]]:
    """Deterministic shared response model (Chen et al. 2015): ``X_s ≈ S W_sᵀ``, ``W_sᵀW_s = I``.

    Alternates ``S = mean_s X_s W_s`` and ``W_s = U Vᵀ`` from the thin SVD of
    ``X_sᵀ S``, from seeded random orthonormal ``W_s``, until the relative decrease of
    the objective ``Σ_s ||X_s - S W_sᵀ||²`` falls below ``tol``.

    Parameters
    ----------
    Xs : sequence of arrays, shape (n_samples, n_voxels_s)
    n_components : int
    backend : AlignBackend
    n_iter : int
        Maximum number of alternations.
    tol : float
        Relative objective change at which to stop.
    seed : int
        Seed of the initial ``W_s`` (subject ``s`` uses ``seed + s``).

    Returns
    -------
    transforms : list of arrays, shape (n_voxels_s, n_components)
    shared_response : array, shape (n_samples, n_components)
    objective : list of float
        Objective after each alternation.
    """
    Ws = [
        backend.asarray(random_orthonormal(X.shape[1], n_components, seed + s))
        for s, X in enumerate(Xs)
    ]
    total = sum(backend.norm(X) ** 2 for X in Xs)
    history: list[float] = []
    S = None
    for _ in range(n_iter):
        S = sum(X @ W for X, W in zip(Xs, Ws, strict=True)) / len(Xs)
        Ws = [procrustes(X, S, backend, scaling=False)[0] for X in Xs]
        # ||X - S Wᵀ||² = ||X||² - 2 tr(Wᵀ Xᵀ S) + ||S||² (W has orthonormal columns).
        obj = total + len(Xs) * backend.norm(S) ** 2
        obj -= 2 * sum(float(backend.sum((X @ W) * S)) for X, W in zip(Xs, Ws, strict=True))
        history.append(obj)
        if len(history) > 1 and abs(history[-2] - obj) <= tol * max(abs(history[-2]), 1e-30):
            break
    S = sum(X @ W for X, W in zip(Xs, Ws, strict=True)) / len(Xs)
    return Ws, S, history


def ridge_map(
    X: Any, T: Any, alphas: Sequence[float], backend: AlignBackend
) -> tuple[Any, float, np.ndarray]:
    """Ridge map ``X W ≈ T`` with the penalty chosen by exact leave-one-out error.

    Parameters
    ----------
    X : array, shape (n_samples, n_voxels)
        Centred (standardised) source data.
    T : array, shape (n_samples, n_components)
        Centred target.
    alphas : sequence of float
        Candidate penalties (> 0); the one with the least total LOO squared error wins
        (first on ties).
    backend : AlignBackend

    Returns
    -------
    W : array, shape (n_voxels, n_components)
        ``V diag(s / (s² + α)) Uᵀ T`` from the thin SVD ``X = U diag(s) Vᵀ``.
    alpha : float
    loo_error : ndarray, shape (n_alphas,)
    """
    U, s, Vt = backend.svd(X)
    UT = U.T @ T
    U2 = U * U
    errors = []
    for alpha in alphas:
        d = s * s / (s * s + alpha)
        fitted = U @ (d[:, None] * UT)
        h = U2 @ d
        resid = (T - fitted) / (1.0 - h)[:, None]
        errors.append(backend.norm(resid) ** 2)
    errors_np = np.asarray(errors)
    best = int(np.argmin(errors_np))
    alpha = float(alphas[best])
    W = Vt.T @ ((s / (s * s + alpha))[:, None] * UT)
    return W, alpha, errors_np


def pinv_map(W: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a transform, shape (n_components, n_voxels): maps the shared space back.

    For a scaled orthogonal ``W = a R`` this is ``Rᵀ / a``. Costs ``O(n_voxels k²)``.
    """
    return np.linalg.pinv(np.asarray(W, dtype=np.float64))
