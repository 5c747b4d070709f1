"""Evaluation metrics: per-target correlation and R², noise ceilings, normalised scores.

All functions work column-wise (axis 0 = samples, axis 1 = targets/voxels), are
vectorised over targets and compute in float64.
"""

from __future__ import annotations

import numpy as np


def _as_2d_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (1, 2):
        raise ValueError(f"expected 1-D or 2-D arrays (n_samples[, n_targets]), got {a.shape}")
    squeeze = a.ndim == 1
    if squeeze:
        a, b = a[:, None], b[:, None]
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {a.shape[0]}")
    return a, b, squeeze


def _centre_scaled(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre columns; return (centred, is_constant) with a scale-relative tolerance."""
    c = a - a.mean(axis=0)
    scale = np.max(np.abs(a), axis=0)
    # Unit-scale each column (r is scale-free) so tiny values (1e-160) don't underflow
    # to subnormals when squared, in the constancy test as in r.
    peak = np.max(np.abs(c), axis=0)
    c = c / np.where(peak > 0, peak, 1.0)
    norm = np.sqrt((c**2).sum(axis=0)) * peak
    const = norm <= 8 * np.finfo(np.float64).eps * scale * np.sqrt(a.shape[0])
    return c, const


def pearson_r(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per column.

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n_samples, n_targets) or (n_samples,)

    Returns
    -------
    r : ndarray of float64, shape (n_targets,) (a 0-d array for 1-D inputs)
        In [-1, 1]. A column that is constant (to rounding) in either input has
        **r = 0** (no linear relationship can be measured), so averages over voxels stay
        finite.
    """
    a, b, squeeze = _as_2d_pair(y_true, y_pred)
    ac, a_const = _centre_scaled(a)
    bc, b_const = _centre_scaled(b)
    num = (ac * bc).sum(axis=0)
    den = np.sqrt((ac**2).sum(axis=0) * (bc**2).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    r[a_const | b_const | ~np.isfinite(r)] = 0.0
    r = np.clip(r, -1.0, 1.0)
    return r[0] if squeeze else r


def r2_score_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column, ``1 - SS_res / SS_tot``.

    Parameters
    ----------
    y_true, y_pred : ndarray, shape (n_samples, n_targets) or (n_samples,)

    Returns
    -------
    r2 : ndarray of float64, shape (n_targets,)
        Can be negative. For a constant ``y_true`` column: 1.0 if predicted exactly,
        else 0.0 (scikit-learn's ``force_finite`` convention).
    """
    a, b, squeeze = _as_2d_pair(y_true, y_pred)
    ss_res = ((a - b) ** 2).sum(axis=0)
    ss_tot = ((a - a.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    const = ss_tot == 0
    r2[const] = np.where(ss_res[const] == 0, 1.0, 0.0)
    return r2[0] if squeeze else r2


def noise_ceiling(ncsnr: np.ndarray, n_repeats: int | np.ndarray) -> np.ndarray:
    """Noise ceiling: % of variance explainable in responses averaged over repeats.

    NSD convention, generalised to any mix of repeat counts::

        NC = 100 * ncsnr² / (ncsnr² + mean_i(1 / n_i))

    where ``n_i`` is the number of trials averaged for test stimulus ``i`` (NSD's
    ``(A/3 + B/2 + C/1) / (A + B + C)`` is the case of repeats 3, 2, 1).

    Parameters
    ----------
    ncsnr : ndarray, shape (n_voxels,) or scalar
        Noise-ceiling SNR (signal SD / noise SD), >= 0.
    n_repeats : int or ndarray of int, shape (n_stimuli,)
        Repeats averaged per stimulus (all >= 1).

    Returns
    -------
    nc : ndarray of float64, shape like ``ncsnr``
        In percent, in [0, 100). NaN where ncsnr is NaN; 100 where ncsnr is infinite.
    """
    ncsnr = np.asarray(ncsnr, dtype=np.float64)
    n = np.atleast_1d(np.asarray(n_repeats, dtype=np.float64))
    if n.size == 0 or np.any(n < 1) or not np.all(np.isfinite(n)):
        raise ValueError(f"n_repeats must be >= 1 (one per stimulus), got {n_repeats!r}")
    if np.any(ncsnr < 0):
        raise ValueError("ncsnr must be >= 0")
    k = float(np.mean(1.0 / n))
    s2 = ncsnr**2
    with np.errstate(invalid="ignore"):
        nc = np.where(np.isinf(s2), 100.0, 100.0 * s2 / (s2 + k))
    return nc


def nc_normalised_score(r: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """Noise-ceiling-normalised encoding accuracy (Algonauts 2023), in percent.

    ``score = 100 * (100 * max(r, 0)²) / NC``, capped at 100, i.e. explained variance as a
    percentage of the explainable variance.

    Parameters
    ----------
    r : ndarray, shape (n_voxels,)
        Pearson correlation between predicted and measured (averaged) responses.
    nc : ndarray, shape (n_voxels,) or scalar
        Noise ceiling in percent (see :func:`noise_ceiling`).

    Returns
    -------
    score : ndarray of float64, shape (n_voxels,)
        In [0, 100]; NaN where ``nc <= 0`` or ``nc`` is NaN.
    """
    r = np.asarray(r, dtype=np.float64)
    nc = np.asarray(nc, dtype=np.float64)
    rc = np.clip(r, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 100.0 * (100.0 * rc**2) / nc
    score = np.minimum(score, 100.0)
    return np.where(nc > 0, score, np.nan)


def ncsnr_from_repeats(
    betas: np.ndarray, stimulus_ids: np.ndarray, *, block_bytes: int = 1 << 22
) -> np.ndarray:
    """NSD's noise-ceiling SNR estimator from repeated trials.

    Per voxel: noise variance = mean, over stimuli with at least 2 trials, of the variance
    (ddof=1) across that stimulus's trials; total variance = variance (ddof=1) of all
    trials; signal variance = max(total - noise, 0); ``ncsnr = sqrt(signal) / sqrt(noise)``.
    NSD z-scores betas per session first; that is the caller's business.

    Parameters
    ----------
    betas : ndarray, shape (n_trials, n_voxels)
        Single-trial responses (any real dtype; computed in float64).
    stimulus_ids : ndarray, shape (n_trials,)
        Stimulus of each trial (any hashable labels).
    block_bytes : int
        Voxels are processed in column blocks whose float64 temporaries (about three
        copies of the block) take about this many bytes, so memory beyond ``betas`` stays
        bounded (a float32 slab is never copied whole to float64). Results do not depend on it
        beyond rounding.

    Returns
    -------
    ncsnr : ndarray of float64, shape (n_voxels,)
        ``inf`` where the noise variance is 0 but the signal is not; 0 where both are 0.

    Raises
    ------
    ValueError
        If shapes disagree or no stimulus has at least 2 trials.
    """
    B = np.asarray(betas)
    if B.ndim == 1:
        B = B[:, None]
    if B.ndim != 2:
        raise ValueError(f"betas must be 2-D (n_trials, n_voxels), got shape {B.shape}")
    ids = np.asarray(stimulus_ids)
    if ids.shape != (B.shape[0],):
        raise ValueError(
            f"stimulus_ids must have shape ({B.shape[0]},) (one per trial), got {ids.shape}"
        )
    _, codes, counts = np.unique(ids, return_inverse=True, return_counts=True)
    rep = counts >= 2
    if not rep.any():
        raise ValueError("no stimulus has 2 or more trials: cannot estimate noise variance")
    keep = np.flatnonzero(rep[codes])
    rows = keep[np.argsort(codes[keep], kind="stable")]  # repeated trials, grouped by stimulus
    n = counts[rep]
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    out = np.empty(B.shape[1], dtype=np.float64)
    width = max(1, int(block_bytes) // (3 * 8 * B.shape[0]))
    for c0 in range(0, B.shape[1], width):
        cols = slice(c0, c0 + width)
        Bs = B[rows, cols].astype(np.float64)  # trials of repeated stimuli, by stimulus
        means = np.add.reduceat(Bs, starts, axis=0) / n[:, None]
        Bs -= np.repeat(means, n, axis=0)
        Bs **= 2
        var_within = np.add.reduceat(Bs, starts, axis=0) / (n[:, None] - 1)
        noise = var_within.mean(axis=0)
        del Bs
        total = np.asarray(B[:, cols], dtype=np.float64).var(axis=0, ddof=1)
        signal = np.clip(total - noise, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            block = np.sqrt(signal) / np.sqrt(noise)
        block[(noise == 0) & (signal == 0)] = 0.0
        out[cols] = block
    return out


def algonauts2023_score(r: np.ndarray, nc: np.ndarray) -> float:
    """The Algonauts 2023 challenge score of one subject: mean over all vertices, in percent.

    Exactly as the challenge's evaluation code defines it: correlations below 0 set to 0
    and squared, divided by the noise ceiling (ceilings of 0 set to 1e-14 so every vertex
    counts), times 100, capped at 100, then averaged over **all** vertices of both
    hemispheres (the challenge's score is the mean of this over subjects). Unlike
    :func:`nc_normalised_score`, vertices with a zero ceiling are not left out.

    Parameters
    ----------
    r : ndarray, shape (n_vertices,)
        Test correlation per vertex.
    nc : ndarray, shape (n_vertices,)
        Noise ceiling in percent (:func:`noise_ceiling` with the test repeats).

    Returns
    -------
    float
        In [0, 100].
    """
    r2 = np.clip(np.nan_to_num(np.asarray(r, np.float64)), 0.0, None) ** 2
    nc = np.nan_to_num(np.asarray(nc, np.float64)) / 100.0
    nc = np.where(nc == 0, 1e-14, nc)
    return float(np.mean(np.minimum(100.0 * r2 / nc, 100.0)))
