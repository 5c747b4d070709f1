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
        length_scales: Sequence[float] = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0),
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


def _se_kernel(n: int, length_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition ``(eigenvalues, eigenvectors)`` of the squared-exponential
    kernel on ``n`` equally spaced samples."""
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
