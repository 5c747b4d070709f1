"""Test-split metrics of encoding and decoding models, with bootstrap confidence intervals.

Encoding (per voxel, on test responses averaged over repeats): Pearson r, R², the noise
ceiling for the number of repeats averaged, and the Algonauts 2023 score
(``100 * max(r, 0)² * 100 / NC``, capped at 100). ROI summaries get percentile bootstrap
CIs from resampling the test stimuli.

Decoding (per test stimulus): the predicted embedding is compared with the embeddings of
all ``n`` test stimuli by Pearson correlation. Top-k retrieval is the fraction of test
stimuli whose own embedding ranks in the top k (chance ``k / n``); 2-way identification
is the fraction of (stimulus, other stimulus) pairs in which the own embedding is more
similar than the other (chance 0.5). CIs resample the queried stimuli.
"""

from __future__ import annotations

import warnings

import numpy as np

from brainpipe.metrics import (
    algonauts2023_score,
    nc_normalised_score,
    noise_ceiling,
    pearson_r,
    r2_score_per_target,
)

CI_LEVEL = 0.95
#: Fewest finite test responses a voxel needs to be scored.
MIN_SCORED_STIMULI = 3


#: Voxels per block of the bootstrap: its temporaries are ~6 x n_boot x block float64.
BOOT_VOXEL_BLOCK = 1024


def bootstrap_counts(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``n_boot`` resamples.

    The resamples are ``rng.integers(0, n, size=(n_boot, n))`` with
    ``rng = numpy.random.default_rng(seed)``; a resample's statistics only depend on
    these counts.

    Returns
    -------
    numpy.ndarray of float64, shape (n_boot, n)
        Each row sums to ``n``.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    return counts


def bootstrap_encoding(
    observed: np.ndarray,
    predicted: np.ndarray,
    nc: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = CI_LEVEL,
    voxel_block: int = BOOT_VOXEL_BLOCK,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of ROI means of r, r² (%, r clipped at 0) and score.

    Each resample's per-voxel Pearson r comes from weighted sums (the resample's counts
    times x, y, x², y², xy), computed for ``voxel_block`` voxels at a time as matrix
    products: memory is ``O(n_boot x voxel_block)``, never ``n_boot x n_test x
    n_voxels`` (at NSD scale, 1,000 test images x 15,000 voxels, that array alone would
    be 12 GB per 100 resamples).

    Parameters
    ----------
    observed, predicted : ndarray, shape (n_test, n_voxels)
    nc : ndarray, shape (n_voxels,)
        Noise ceiling (%) of each voxel, held fixed.
    n_boot : int
        Resamples of the test stimuli (with replacement; :func:`bootstrap_counts`).
    voxel_block : int
        Voxels per block.

    Returns
    -------
    dict
        ``{"mean_r": (low, high), "mean_r2_percent": ..., "mean_score": ...}``.
    """
    n, n_vox = observed.shape
    w = bootstrap_counts(n, n_boot, seed)
    nc = np.asarray(nc, dtype=np.float64)
    sum_r = np.zeros(n_boot)
    sum_r2 = np.zeros(n_boot)
    sum_score = np.zeros(n_boot)
    n_score = np.zeros(n_boot)
    for v0 in range(0, n_vox, voxel_block):
        vs = slice(v0, min(v0 + voxel_block, n_vox))
        x = np.asarray(observed[:, vs], dtype=np.float64)
        y = np.asarray(predicted[:, vs], dtype=np.float64)
        x = x - x.mean(axis=0)  # r is shift-invariant; centring keeps the sums exact
        y = y - y.mean(axis=0)
        sx, sy = w @ x, w @ y
        cov = n * (w @ (x * y)) - sx * sy
        var = (n * (w @ (x * x)) - sx**2) * (n * (w @ (y * y)) - sy**2)
        del sx, sy
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt(var)
        r = np.where(np.isfinite(r) & (var > 0), r, 0.0)
        sum_r += r.sum(axis=1)
        rc2 = np.clip(r, 0, None) ** 2
        sum_r2 += rc2.sum(axis=1)
        score = nc_normalised_score(r, nc[vs][None, :])
        finite = ~np.isnan(score)
        sum_score += np.where(finite, score, 0.0).sum(axis=1)
        n_score += finite.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = {
            "mean_r": sum_r / n_vox,
            "mean_r2_percent": sum_r2 / n_vox * 100,
            "mean_score": np.where(n_score > 0, sum_score / n_score, np.nan),
        }
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in draws.items()}


def encoding_metrics(
    observed: np.ndarray,
    predicted: np.ndarray,
    ncsnr: np.ndarray,
    repeats: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per-voxel scores and their ROI summary.

    Parameters
    ----------
    observed, predicted : ndarray, shape (n_test, n_voxels)
        Test responses averaged over repeats, and the model's predictions.
    ncsnr : ndarray, shape (n_voxels,)
    repeats : ndarray of int, shape (n_test,)
        Trials averaged per test stimulus.

    Returns
    -------
    summary : dict
        ``mean_r, median_r, mean_r2, mean_r2_percent, mean_noise_ceiling, mean_score,
        median_score, algonauts2023_score`` (:func:`brainpipe.metrics.algonauts2023_score`)
        and ``<metric>_ci_low / _ci_high`` for r, r² % and score.
    per_voxel : dict of str -> ndarray (n_voxels,)
        ``r, r2, noise_ceiling, score``; NaN for a voxel with fewer than
        :data:`MIN_SCORED_STIMULI` finite test responses (NSD marks such vertices NaN),
        which is left out of every summary and counted in ``n_voxels_unscored``.

    Notes
    -----
    A voxel missing some test responses is scored over the stimuli it has; the bootstrap
    CIs resample the voxels that have all of them.
    """
    observed = np.asarray(observed)
    predicted = np.asarray(predicted)
    finite = np.isfinite(observed)
    complete = finite.all(axis=0)
    n_vox = observed.shape[1]
    r = np.full(n_vox, np.nan)
    r2 = np.full(n_vox, np.nan)
    r[complete] = pearson_r(observed[:, complete], predicted[:, complete])
    r2[complete] = r2_score_per_target(observed[:, complete], predicted[:, complete])
    for v in np.flatnonzero(~complete & (finite.sum(axis=0) >= MIN_SCORED_STIMULI)):
        rows = finite[:, v]
        r[v] = pearson_r(observed[rows, v], predicted[rows, v])
        r2[v] = r2_score_per_target(observed[rows, v], predicted[rows, v])
    scored = np.isfinite(r)
    nc = np.where(scored, noise_ceiling(ncsnr, repeats), np.nan)
    score = nc_normalised_score(r, nc)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an ROI with no scored voxel: NaN
        summary = {
            "mean_r": float(np.nanmean(r)),
            "median_r": float(np.nanmedian(r)),
            "mean_r2": float(np.nanmean(r2)),
            "mean_r2_percent": float(np.nanmean(np.clip(r, 0, None) ** 2) * 100),
            "mean_noise_ceiling": float(np.nanmean(nc)),
            "mean_score": float(np.nanmean(score)),
            "median_score": float(np.nanmedian(score)),
            "algonauts2023_score": algonauts2023_score(r[scored], nc[scored])
            if scored.any()
            else float("nan"),
            "n_voxels_unscored": int((~scored).sum()),
        }
    if complete.any():
        cis = bootstrap_encoding(
            observed[:, complete], predicted[:, complete], nc[complete], n_boot, seed
        )
    else:
        cis = dict.fromkeys(("mean_r", "mean_r2_percent", "mean_score"), (np.nan, np.nan))
    for key, (lo, hi) in cis.items():
        summary[f"{key}_ci_low"], summary[f"{key}_ci_high"] = lo, hi
    return summary, {"r": r, "r2": r2, "noise_ceiling": nc, "score": score}


def similarity_matrix(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation of every predicted embedding with every true one.

    Parameters
    ----------
    predicted, true : ndarray, shape (n_stimuli, n_dims)

    Returns
    -------
    sim : ndarray of float64, shape (n_stimuli, n_stimuli)
        ``sim[i, j] = corr(predicted[i], true[j])``.
    """
    p = np.asarray(predicted, np.float64)
    t = np.asarray(true, np.float64)
    p = p - p.mean(axis=1, keepdims=True)
    t = t - t.mean(axis=1, keepdims=True)
    p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return p @ t.T


def retrieval_per_query(sim: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[str, np.ndarray]:
    """Per query stimulus: top-k hit (0/1) and 2-way identification accuracy.

    The rank of the own embedding counts ties pessimistically (any other stimulus at
    least as similar ranks ahead). 2-way accuracy of query ``i`` is the fraction of the
    other stimuli ``j`` with ``sim[i, i] > sim[i, j]``.
    """
    n = sim.shape[0]
    own = np.diag(sim)
    ahead = (sim >= own[:, None]).sum(axis=1) - 1  # others at least as similar
    out = {f"top{k}": (ahead < k).astype(np.float64) for k in ks}
    out["two_way"] = (own[:, None] > sim).sum(axis=1) / max(n - 1, 1)
    return out


def sampled_retrieval(sim: np.ndarray, n_way: int, draws: int, seed: int = 0) -> dict[str, float]:
    """MindEye's n-way retrieval: top-1 within random subsets of the test stimuli.

    For each of ``draws`` random draws of ``n_way`` test stimuli (without replacement),
    *image retrieval* counts the queries whose own true embedding is the most similar to
    their decoded one among the draw's ``n_way`` true embeddings (brain -> image), and
    *brain retrieval* counts the true embeddings whose own decoded embedding is the most
    similar among the draw's decoded ones (image -> brain). Both are averaged over queries
    and draws. Ties count as misses.

    Parameters
    ----------
    sim : ndarray, shape (n_test, n_test)
        ``sim[i, j]`` = similarity of decoded ``i`` with true ``j`` (:func:`similarity_matrix`).
    n_way : int
        Candidates per draw (MindEye: 300); at most ``n_test``.
    draws : int
        Random draws (MindEye: 30).

    Returns
    -------
    dict
        ``image_top1_sampled``, ``brain_top1_sampled`` with ``_ci_low/_ci_high`` (2.5 and
        97.5 percentiles over draws), ``sampled_chance = 1/n``, ``sampled_n_way = n`` and
        ``sampled_draws``.
    """
    n_test = sim.shape[0]
    if not 2 <= n_way <= n_test:
        raise ValueError(f"n_way must be in [2, {n_test}] (the test stimuli), got {n_way}")
    rng = np.random.default_rng(seed)
    image, brain = np.empty(draws), np.empty(draws)
    for d in range(draws):
        pick = rng.choice(n_test, size=n_way, replace=False)
        sub = sim[np.ix_(pick, pick)]
        own = np.diag(sub)
        image[d] = np.mean((sub >= own[:, None]).sum(axis=1) == 1)
        brain[d] = np.mean((sub >= own[None, :]).sum(axis=0) == 1)
    q = [(1 - CI_LEVEL) / 2 * 100, (1 + CI_LEVEL) / 2 * 100]
    out: dict[str, float] = {}
    for name, values in (("image", image), ("brain", brain)):
        key = f"{name}_top1_sampled"
        out[key] = float(values.mean())
        lo, hi = np.percentile(values, q)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(lo), float(hi)
    out["sampled_chance"] = 1.0 / n_way
    out["sampled_n_way"] = n_way
    out["sampled_draws"] = draws
    return out


def decoding_metrics(
    predicted: np.ndarray,
    true: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    prefix: str = "",
    n_way: int | None = None,
    draws: int = 30,
) -> dict[str, float]:
    """Retrieval among the test stimuli, 2-way identification, chance levels and CIs.

    Parameters
    ----------
    predicted, true : ndarray, shape (n_test, n_dims)
        Predicted and true embeddings of the test stimuli (same order).
    prefix : str
        Prepended to every key (e.g. ``"mlpdecoder_"`` for a baseline).
    n_way, draws : int or None, int
        Sampled n-way retrieval (:func:`sampled_retrieval`) with ``draws`` random draws of
        ``min(n_way, n)`` candidates (the ``n`` used is reported as ``sampled_n_way``).

    Returns
    -------
    dict
        ``top1, top5, two_way`` with ``_ci_low/_ci_high``, ``top1_chance = 1/n``,
        ``top5_chance = min(5, n)/n``, ``two_way_chance = 0.5``, ``n_candidates = n``,
        and ``mean_dim_r``: mean over embedding dimensions of the across-stimulus correlation.
    """
    n = len(true)
    sim = similarity_matrix(predicted, true)
    per_query = retrieval_per_query(sim)
    w = bootstrap_counts(n, n_boot, seed) / n
    q = [(1 - CI_LEVEL) / 2 * 100, (1 + CI_LEVEL) / 2 * 100]
    out: dict[str, float] = {}
    for key, values in per_query.items():
        out[key] = float(values.mean())
        lo, hi = np.percentile(w @ values, q)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(lo), float(hi)
    out["top1_chance"] = 1.0 / n
    out["top5_chance"] = min(5, n) / n
    out["two_way_chance"] = 0.5
    out["n_candidates"] = n
    out["mean_dim_r"] = float(np.mean(pearson_r(true, predicted)))
    if n_way:
        out.update(sampled_retrieval(sim, min(int(n_way), n), draws, seed))
    return {f"{prefix}{k}": v for k, v in out.items()}


def ceiling_ratio(
    observed: np.ndarray, predicted: np.ndarray, predicted_noise_free: np.ndarray
) -> float:
    """Share of the ground-truth feature ceiling reached by a model (synthetic data).

    The ceiling is the same model fitted to the generator's noise-free responses
    (``stimulus_response``) of the same training trials with the same features: what these
    features and this training set could reach without measurement noise. Both are scored
    as explained variance (r², r clipped at 0) against the same observed test responses::

        ratio = mean_v max(r_model, 0)² / mean_v max(r_noise_free, 0)²

    Parameters
    ----------
    observed, predicted, predicted_noise_free : ndarray, shape (n_test, n_voxels)

    Returns
    -------
    ratio : float
        1.0 means the model does as well as the noise-free fit.
    """
    r = np.clip(pearson_r(observed, predicted), 0, None)
    r0 = np.clip(pearson_r(observed, predicted_noise_free), 0, None)
    return float(np.mean(r**2) / np.mean(r0**2))
