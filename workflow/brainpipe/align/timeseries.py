"""Shared response over time: SRM on time series and its standard evaluation.

For naturalistic movies and stories, subjects are aligned on their time series (one
stimulus clock), not on betas. Two variants of the shared response model (Chen et al.
2015), both from BrainIAK (``brainiak.funcalign.srm``, the reference implementation):

- ``srm``: probabilistic SRM (``SRM``, EM with a Gaussian shared response and
  per-subject noise variances);
- ``detsrm``: deterministic SRM (``DetSRM``); brainpipe's own deterministic SRM
  (:func:`brainpipe.align._solvers.deterministic_srm`, used by the betas alignment) is
  measured against it in ``benchmarks/srm_timeseries.py``.

and a shared Gaussian-process factor model with smooth shared latents (S-GPFA, ours:
BrainIAK has no GPFA): :class:`SharedGPFA` — SRM's model ``X_s = S W_sᵀ + noise`` with
orthonormal ``W_s``, a noise variance per subject, and a Gaussian-process prior (squared-
exponential kernel in time, length scale chosen by marginal likelihood) on each shared
latent time course. Held-out time series are projected and smoothed by the GP posterior.

Evaluation (:func:`time_segment_matching`): fit on the training part of the movie, then
for each left-out subject and each segment of ``window`` time points of the left-out
part, identify the segment among all non-overlapping candidates by correlating the
subject's shared response with the average of the other subjects' (Chen et al. 2015;
the BrainIAK SRM tutorial). Chance is one over the number of candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

METHODS = ("srm", "detsrm")
#: Every shared-response-over-time method the workflow fans out over (``timeseries.methods``).
TIMESERIES_METHODS = ("srm", "detsrm", "sgpfa")
#: Default candidate GP length scales of S-GPFA (TRs).
LENGTH_SCALES = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)


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


class SharedGPFA:
    """Shared Gaussian-process factor analysis (S-GPFA) on time series.

    Model: ``X_s[t] = W_s s[t] + e_s[t]``, ``W_sᵀW_s = I``, ``e_s ~ N(0, sigma2_s I)``,
    each latent ``s_c(t) ~ GP(0, k(t, t'))`` with ``k = exp(-(t - t')² / (2 l²))``.
    Fitted by alternating (1) the GP posterior mean of ``S`` given the maps (the
    precision-weighted average ``Σ_s X_s W_s / sigma2_s / Σ 1/sigma2_s`` is a noisy
    observation of ``S`` with variance ``1 / Σ 1/sigma2_s``), (2) each ``W_s`` by
    orthogonal Procrustes (``U Vᵀ`` of ``X_sᵀ S``) and ``sigma2_s`` from the residual,
    (3) the length scale ``l`` from ``length_scales`` maximising the GP marginal
    likelihood of the observed average.

    Parameters
    ----------
    n_components : int
    n_iter : int
    length_scales : sequence of float
        Candidate length scales in samples (TRs).
    seed : int
        Seed of the initial maps.

    Attributes
    ----------
    w_ : list of ndarray, each (n_voxels_s, n_components)
    sigma2_ : ndarray, shape (n_subjects,)
    length_scale_ : float
    s_ : ndarray, shape (n_timepoints, n_components)
        Posterior mean of the shared latents on the training time points.
    """

    def __init__(
        self,
        n_components: int,
        n_iter: int = 10,
        length_scales: Sequence[float] = LENGTH_SCALES,
        seed: int = 0,
    ) -> None:
        self.n_components = int(n_components)
        self.n_iter = int(n_iter)
        self.length_scales = tuple(float(v) for v in length_scales)
        self.seed = int(seed)

    def fit(self, train: Sequence[np.ndarray]) -> SharedGPFA:
        """Fit on the subjects' training time series, each (n_timepoints, n_voxels_s)."""
        xs = [np.asarray(x, np.float64) for x in train]
        T, k = xs[0].shape[0], self.n_components
        rng = np.random.default_rng(self.seed)
        self.w_ = [np.linalg.qr(rng.standard_normal((x.shape[1], k)))[0] for x in xs]
        self.sigma2_ = np.ones(len(xs))
        self.length_scale_ = self.length_scales[0]
        kernels = {ell: _se_kernel(T, ell) for ell in self.length_scales}
        for _ in range(self.n_iter):
            prec = 1.0 / self.sigma2_
            obs = sum(p * x @ w for p, x, w in zip(prec, xs, self.w_, strict=True)) / prec.sum()
            tau2 = 1.0 / prec.sum()
            self.length_scale_ = max(
                self.length_scales, key=lambda ell: _gp_log_evidence(kernels[ell], obs, tau2)
            )
            S = _gp_posterior_mean(kernels[self.length_scale_], obs, tau2)
            for i, x in enumerate(xs):
                u, _, vt = np.linalg.svd(x.T @ S, full_matrices=False)
                self.w_[i] = u @ vt
                resid = x - S @ self.w_[i].T
                self.sigma2_[i] = max(float(np.mean(resid**2)), 1e-8)
        self.s_ = S
        return self

    def transform(self, data: Sequence[np.ndarray], smooth: bool = True) -> list[np.ndarray]:
        """Each subject's time series in the shared space, ``X_s W_s`` (n_timepoints, k),
        smoothed by the GP posterior with that subject's noise variance when ``smooth``."""
        out = []
        for x, w, s2 in zip(data, self.w_, self.sigma2_, strict=True):
            z = np.asarray(x, np.float64) @ w
            if smooth:
                z = _gp_posterior_mean(_se_kernel(len(z), self.length_scale_), z, s2)
            out.append(z)
        return out


@lru_cache(maxsize=8)
def _se_kernel(n: int, length_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition ``(eigenvalues, eigenvectors)`` of the squared-exponential
    kernel on ``n`` equally spaced samples (cached: every subject's projection of a
    held-out part uses the same one; callers never modify it)."""
    t = np.arange(n, dtype=np.float64)
    lam, U = np.linalg.eigh(np.exp(-((t[:, None] - t[None, :]) ** 2) / (2.0 * length_scale**2)))
    return np.clip(lam, 0.0, None), U


def _signal_variance(obs: np.ndarray, noise: float) -> np.ndarray:
    """Per-column GP signal variance by moments: ``var(obs) - noise`` (floored)."""
    return np.maximum(obs.var(axis=0) - noise, 1e-3 * max(noise, 1e-12))


def _gp_posterior_mean(kernel: tuple[np.ndarray, np.ndarray], obs: np.ndarray, noise: float):
    """``s² K (s² K + noise I)⁻¹ obs`` per column of ``obs`` (n, k), ``s²`` per column."""
    lam, U = kernel
    var = _signal_variance(obs, noise)
    proj = U.T @ obs
    gain = (var[None, :] * lam[:, None]) / (var[None, :] * lam[:, None] + noise)
    return U @ (gain * proj)


def _gp_log_evidence(kernel: tuple[np.ndarray, np.ndarray], obs: np.ndarray, noise: float):
    """Log marginal likelihood of the columns of ``obs`` under ``N(0, s² K + noise I)``."""
    lam, U = kernel
    var = _signal_variance(obs, noise)
    ev = var[None, :] * lam[:, None] + noise
    proj = U.T @ obs
    return float(-0.5 * np.sum(proj**2 / ev) - 0.5 * np.sum(np.log(ev)))


@dataclass
class SharedSpace:
    """A shared response fitted on some subjects' training time series (any method).

    Attributes
    ----------
    method : str
        One of :data:`TIMESERIES_METHODS`.
    w : list of ndarray, each (n_voxels_s, n_components)
        Orthonormal maps of the fitted subjects (``shared = X_s @ W_s``).
    s : ndarray, shape (n_train_timepoints, n_components)
        The shared response on the training time points.
    sigma2 : ndarray, shape (n_subjects,)
        Each fitted subject's residual variance per voxel and time point.
    length_scale : float or None
        S-GPFA's GP length scale (TRs); None for SRM / DetSRM.
    """

    method: str
    w: list[np.ndarray]
    s: np.ndarray
    sigma2: np.ndarray
    length_scale: float | None = None

    def add_subject(self, x_train: np.ndarray) -> tuple[np.ndarray, float]:
        """Map a subject that was not fitted onto the shared space from its training series.

        The map is the orthogonal Procrustes solution of ``X W ≈ S`` (``U Vᵀ`` of
        ``Xᵀ S``), as BrainIAK's ``SRM.transform_subject``; only the training time points
        ``x_train`` (n_train_timepoints, n_voxels) are read.

        Returns
        -------
        w : ndarray, shape (n_voxels, n_components)
        sigma2 : float
            Residual variance of ``x_train - S Wᵀ``.
        """
        x = np.asarray(x_train, np.float64)
        if x.shape[0] != self.s.shape[0]:
            raise ValueError(
                f"x_train has {x.shape[0]} time points; the shared response has {self.s.shape[0]}"
            )
        u, _, vt = np.linalg.svd(x.T @ self.s, full_matrices=False)
        w = u @ vt
        return w, max(float(np.mean((x - self.s @ w.T) ** 2)), 1e-8)

    def to_shared(self, x: np.ndarray, w: np.ndarray, sigma2: float) -> np.ndarray:
        """A subject's time series (n_timepoints, n_voxels) in the shared space; S-GPFA
        also smooths it by the GP posterior with the subject's noise variance ``sigma2``."""
        z = np.asarray(x, np.float64) @ w
        if self.method == "sgpfa":
            z = _gp_posterior_mean(_se_kernel(len(z), float(self.length_scale)), z, sigma2)
        return z


def fit_shared_space(
    train: Sequence[np.ndarray],
    method: str,
    n_components: int,
    n_iter: int = 10,
    seed: int = 0,
    length_scales: Sequence[float] = LENGTH_SCALES,
) -> SharedSpace:
    """Fit one shared-response-over-time method on the subjects' training time series.

    Parameters
    ----------
    train : sequence of ndarray, each (n_train_timepoints, n_voxels_s)
        One clock for all subjects; columns z-scored by the caller.
    method : {"srm", "detsrm", "sgpfa"}
        BrainIAK's probabilistic or deterministic SRM, or :class:`SharedGPFA`.
    n_components, n_iter, seed : int
    length_scales : sequence of float
        S-GPFA's candidate GP length scales (TRs).

    Returns
    -------
    SharedSpace
    """
    if method not in TIMESERIES_METHODS:
        raise ValueError(f"method must be one of {TIMESERIES_METHODS}, got {method!r}")
    xs = [np.asarray(x, np.float64) for x in train]
    if method == "sgpfa":
        model = SharedGPFA(n_components, n_iter=n_iter, length_scales=length_scales, seed=seed)
        model.fit(xs)
        return SharedSpace(method, model.w_, model.s_, model.sigma2_, model.length_scale_)
    from brainiak.funcalign.srm import SRM, DetSRM

    cls = SRM if method == "srm" else DetSRM
    model = cls(n_iter=int(n_iter), features=int(n_components), rand_seed=int(seed))
    model.fit([x.T for x in xs])
    w = [np.asarray(m) for m in model.w_]
    s = np.asarray(model.s_).T
    sigma2 = np.array(
        [max(float(np.mean((x - s @ m.T) ** 2)), 1e-8) for x, m in zip(xs, w, strict=True)]
    )
    return SharedSpace(method, w, s, sigma2)


def match_segments(query: np.ndarray, reference: np.ndarray, window: int) -> dict[str, float]:
    """Time-segment matching of one subject's shared response against a reference.

    Each segment of ``window`` time points of ``query`` is identified among the segments
    of ``reference`` (the other subjects' average) that do not overlap it, by correlation.

    Parameters
    ----------
    query, reference : ndarray, shape (n_timepoints, n_components)
    window : int

    Returns
    -------
    dict
        ``accuracy``, ``chance`` (mean of one over each query's candidates) and
        ``n_segments``.
    """
    n_seg = query.shape[0] - window + 1
    if n_seg < 2 or reference.shape != query.shape:
        raise ValueError(
            f"need >= 2 segments of {window} time points and equal shapes "
            f"(query {query.shape}, reference {reference.shape})"
        )
    starts = np.arange(n_seg)
    overlap = (np.abs(starts[:, None] - starts[None, :]) < window) & (
        starts[:, None] != starts[None, :]
    )
    corr = _row_corr(
        _segments(zscore_time(query), window), _segments(zscore_time(reference), window)
    )
    corr[overlap] = -np.inf
    return {
        "accuracy": float(np.mean(np.argmax(corr, axis=1) == starts)),
        "chance": float(np.mean(1.0 / (n_seg - overlap.sum(axis=1)))),
        "n_segments": int(n_seg),
    }


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
    if n_sub < 2:
        raise ValueError(f"need >= 2 subjects (got {n_sub})")
    total = np.sum(shared, axis=0)
    results = [match_segments(z, (total - z) / (n_sub - 1), window) for z in shared]
    return {
        "accuracy": float(np.mean([r["accuracy"] for r in results])),
        "chance": results[0]["chance"],
        "per_subject": [r["accuracy"] for r in results],
        "n_segments": results[0]["n_segments"],
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
