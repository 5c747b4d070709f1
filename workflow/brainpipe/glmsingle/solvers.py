"""Pure solvers of the GLMsingle-style single-trial GLM, vectorised over voxels.

Small design-side matrices (one run, one HRF) are built in float64 numpy by the
``*_operators`` functions, once per session and HRF; the voxel-side work
(``operator @ data``, fractional ridge, cross-validation errors) runs on a
:class:`~brainpipe.glmsingle.backend.Backend` in float32, on blocks of voxels.

Notation for one run: ``T`` scans, ``n`` trials, ``y`` data ``(T, c)`` for ``c``
voxels, ``X`` trial regressors ``(T, n)``, ``N`` an orthonormal nuisance basis
(polynomials, then noise components). Every data-side product goes through
an orthonormal basis of the residualised design, so ``y`` never needs to be
residualised explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from brainpipe.glmsingle.backend import Backend

#: Relative singular-value cut below which a direction of the design is dropped.
RCOND = 1e-6


def polynomial_basis(n_scans: int, degree: int) -> np.ndarray:
    """Orthonormal Legendre polynomials of degree 0..``degree`` over a run, shape (T, degree+1)."""
    t = np.linspace(-1.0, 1.0, n_scans)
    raw = np.stack([np.polynomial.legendre.Legendre.basis(d)(t) for d in range(degree + 1)], 1)
    q, _ = np.linalg.qr(raw)
    return q


def default_poly_degree(n_scans: int, tr: float) -> int:
    """GLMsingle's rule: round(run duration in minutes / 2), at least 1, halves up.

    Halves round up as in GLMsingle (``alt_round``, MATLAB's ``round``), so a
    5-minute run gets degree 3. Python's ``round`` (halves to even, 2) was
    measured against it on the independent simulator with the issue's runs
    (12 × 300 scans at TR 1 s, 2,000 voxels, seed 0): degree 2 gave type-B/C
    betas a higher r (0.376 / 0.428 against 0.356 / 0.415) but the type-D
    betas, the stage's output, a lower reliability (0.146 against 0.154) at the
    same r (0.476 / 0.475).
    """
    return max(1, int(np.floor(n_scans * tr / 60.0 / 2.0 + 0.5)))


def orth(a: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``a`` (rank-revealing SVD)."""
    if a.shape[1] == 0:
        return a
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return u[:, :0]
    return u[:, s > RCOND * s[0]]


def residualise(a: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``a`` minus its projection on the orthonormal ``basis``."""
    return a - basis @ (basis.T @ a) if basis.shape[1] else a


# --------------------------------------------------------------------------------------
# Pass 1: ON-OFF R² (type A) and per-HRF explained variance (type B)
# --------------------------------------------------------------------------------------
def screening_operator(
    poly: np.ndarray, onoff: np.ndarray, trial_designs: np.ndarray
) -> np.ndarray:
    """Stacked projection rows for the screening pass of one run.

    Parameters
    ----------
    poly : ndarray, shape (T, p)
        Orthonormal polynomial basis.
    onoff : ndarray, shape (T,)
        ON-OFF regressor (sum of the canonical-HRF trial regressors).
    trial_designs : ndarray, shape (H, T, n)
        Trial regressors of the run for each of ``H`` HRFs.

    Returns
    -------
    op : ndarray, shape (p + 1 + H * n, T)
        Rows: the polynomials, the unit ON-OFF direction (residualised on the
        polynomials), then for each HRF an orthonormal basis of its
        residualised trial design, zero-padded to ``n`` rows. ``(op @ y)**2``
        summed within each block gives the variance each model explains.
    """
    T, p = poly.shape
    x = residualise(onoff[:, None], poly)[:, 0]
    norm = np.linalg.norm(x)
    q_on = x / norm if norm > 0 else x
    H, _, n = trial_designs.shape
    rows = np.zeros((p + 1 + H * n, T))
    rows[:p] = poly.T
    rows[p] = q_on
    for h in range(H):
        q = orth(residualise(trial_designs[h], poly))
        rows[p + 1 + h * n : p + 1 + h * n + q.shape[1]] = q.T
    return rows


def screening_stats(
    xp: Backend, op: Any, y: Any, n_poly: int, n_hrfs: int, n_trials: int
) -> tuple[Any, Any, Any]:
    """Variance of one run's data (polynomials removed) and explained by each model.

    The best HRF of a voxel is the one whose single-trial design explains the
    most variance summed over runs, GLMsingle's choice (max R² of its
    single-trial fit over the library).

    Returns
    -------
    total : (c,) sum of squares of ``y`` after removing the polynomials
    onoff : (c,) sum of squares explained by the ON-OFF regressor
    per_hrf : (H, c) sum of squares explained by each HRF's single-trial design
    """
    proj = op @ y
    sq = proj * proj
    total = xp.sum(y * y, axis=0) - xp.sum(sq[:n_poly], axis=0)
    onoff = sq[n_poly]
    if n_hrfs == 0:
        return total, onoff, None
    per_hrf = xp.sum(sq[n_poly + 1 :].reshape(n_hrfs, n_trials, -1), axis=1)
    return total, onoff, per_hrf


def noise_components(pool: np.ndarray, nuisance: np.ndarray, n_components: int) -> np.ndarray:
    """GLMdenoise noise regressors of one run from noise-pool time series.

    Parameters
    ----------
    pool : ndarray, shape (T, m)
        Noise-pool voxels of the run.
    nuisance : ndarray, shape (T, q)
        Orthonormal basis projected out first (polynomials and ON-OFF regressor).
    n_components : int
        Components to return.

    Returns
    -------
    ndarray, shape (T, n_components)
        Leading left singular vectors of the residuals, each voxel scaled to
        unit norm first; orthogonal to ``nuisance``. Zero columns if the pool
        has fewer than ``n_components`` directions.
    """
    r = residualise(np.asarray(pool, dtype=np.float64), nuisance)
    norms = np.linalg.norm(r, axis=0)
    r = r[:, norms > 0] / norms[norms > 0]
    out = np.zeros((pool.shape[0], n_components))
    if r.shape[1] == 0 or n_components == 0:
        return out
    evals, evecs = np.linalg.eigh(r @ r.T)
    order = np.argsort(evals)[::-1]
    keep = order[: min(n_components, int((evals > RCOND * evals.max()).sum()))]
    out[:, : len(keep)] = evecs[:, keep]
    return out


# --------------------------------------------------------------------------------------
# Single-trial fit with cross-validation on repeats (types A-D)
# --------------------------------------------------------------------------------------
@dataclass
class RunOperators:
    """Design-side operators of one run for one HRF and one nuisance basis (float32 on xp).

    ``stacked @ y`` gives, in order: ``n_svd`` rotated coefficients ``Uᵀy``,
    ``n_rep`` rows ``Zᵀy`` (repeated-trial regressors with nuisance and the other
    trials projected out) and ``n_q`` rows ``Q̃ᵀy`` (basis of what the CV
    projects out), plus one row of zeros when any block is empty.
    """

    stacked: Any  # (n_svd + n_rep + n_q, T)
    inv_s: Any  # (n_svd, 1)
    s2: np.ndarray  # (n_svd,) squared singular values
    v: Any  # (n, n_svd)
    gram_rep: Any  # (n_rep, n_rep) ZᵀZ
    n_svd: int
    n_rep: int
    n_q: int
    n_trials: int


def run_operators(
    xp: Backend, design: np.ndarray, nuisance: np.ndarray, repeated: np.ndarray
) -> RunOperators:
    """Build :class:`RunOperators` for one run.

    Parameters
    ----------
    design : ndarray, shape (T, n)
        Trial regressors with this run's HRF.
    nuisance : ndarray, shape (T, q)
        Orthonormal nuisance basis (polynomials, noise components).
    repeated : ndarray of bool, shape (n,)
        Trials whose stimulus is also shown in another run of the session.
    """
    xr_ = residualise(design, nuisance)
    u, s, vt = np.linalg.svd(xr_, full_matrices=False)
    keep = s > RCOND * (s[0] if s.size else 1.0)
    u, s, vt = u[:, keep], s[keep], vt[keep]
    others = orth(np.column_stack([nuisance, xr_[:, ~repeated]]))
    z = residualise(design[:, repeated], others)
    stacked = np.concatenate([u.T, z.T, others.T], axis=0)
    return RunOperators(
        stacked=xp.asarray(stacked),
        inv_s=xp.asarray((1.0 / s)[:, None]),
        s2=s**2,
        v=xp.asarray(vt.T),
        gram_rep=xp.asarray(z.T @ z),
        n_svd=int(s.size),
        n_rep=int(repeated.sum()),
        n_q=int(others.shape[1]),
        n_trials=design.shape[1],
    )


@dataclass
class ProjectedRun:
    """Voxel-side quantities of one run (float32 on xp, ``c`` voxels)."""

    rot: Any  # (n_svd, c) OLS coefficients in the rotated basis: Uᵀy / s
    g: Any  # (n_rep, c) Zᵀy
    w2: Any  # (c,) ||R̃ y||²: what the CV prediction must explain


def project_run(xp: Backend, ops: RunOperators, y: Any) -> ProjectedRun:
    """Apply one run's operators to its data ``y`` (T, c)."""
    proj = ops.stacked @ y
    a, b = ops.n_svd, ops.n_svd + ops.n_rep
    q = proj[b:]
    w2 = xp.sum(y * y, axis=0) - xp.sum(q * q, axis=0)
    return ProjectedRun(rot=proj[:a] * ops.inv_s, g=proj[a:b], w2=xp.clip(w2, 0.0, None))


def betas_from_rotated(xp: Backend, ops: list[RunOperators], rots: list[Any]) -> Any:
    """Trial betas ``(n_session_trials, c)`` from per-run rotated coefficients."""
    return xp.concatenate([o.v @ r for o, r in zip(ops, rots, strict=True)], axis=0)


def cv_error(
    xp: Backend,
    betas: Any,
    other_mean: Any,
    ops: list[RunOperators],
    proj: list[ProjectedRun],
) -> tuple[Any, Any]:
    """Leave-one-run-out prediction error of repeated trials, per voxel.

    Each repeated trial of a held-out run is predicted by the mean beta of
    the same stimulus in the other runs (``other_mean``, a sparse averaging
    operator); the prediction is compared with the held-out data after the
    run's nuisance and non-repeated trials are projected out.

    Returns
    -------
    err : (c,) sum over runs of squared prediction error
    total : (c,) sum over runs of ``||R̃ y||²`` (the CV R² is ``1 - err / total``)
    """
    pred = xp.spmm(other_mean, betas)  # (n_rep_total, c)
    err = xp.zeros((betas.shape[1],))
    total = xp.zeros((betas.shape[1],))
    start = 0
    for o, p in zip(ops, proj, strict=True):
        total = total + p.w2
        if o.n_rep == 0:
            continue
        b = pred[start : start + o.n_rep]
        start += o.n_rep
        err = err + p.w2 - 2.0 * xp.sum(b * p.g, axis=0) + xp.sum(b * (o.gram_rep @ b), axis=0)
    return err, total


def other_run_mean_operator(
    stimuli: np.ndarray, runs: np.ndarray
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse operator averaging, for each repeated trial, its stimulus's trials in other runs.

    Parameters
    ----------
    stimuli, runs : ndarray, shape (n_trials,)
        Stimulus and run label of each trial of the session, in session order.

    Returns
    -------
    op : scipy.sparse.csr_matrix, shape (n_repeated, n_trials)
        Rows in session order of the repeated trials.
    repeated : ndarray of bool, shape (n_trials,)
        Trials whose stimulus appears in another run of the session.
    """
    stimuli = np.asarray(stimuli).astype(str)
    runs = np.asarray(runs).astype(str)
    by_stim: dict[str, list[int]] = {}
    for t, s in enumerate(stimuli):
        by_stim.setdefault(s, []).append(t)
    rows, cols, vals = [], [], []
    repeated = np.zeros(len(stimuli), dtype=bool)
    for t, s in enumerate(stimuli):
        others = [u for u in by_stim[s] if runs[u] != runs[t]]
        if others:
            r = int(repeated.sum())
            repeated[t] = True
            rows.extend([r] * len(others))
            cols.extend(others)
            vals.extend([1.0 / len(others)] * len(others))
    n_rep = int(repeated.sum())
    op = sp.csr_matrix((vals, (rows, cols)), shape=(n_rep, len(stimuli)), dtype=np.float64)
    return op, repeated


#: fracridge's grid of penalties (Rokem & Kay 2020, its ``fracridge.py``, the
#: implementation GLMsingle calls): 0, then powers of 10 in steps of 0.2 decades
#: from 10^floor(log10(SMALL * s²_min)) to below 10^ceil(log10(BIG * s²_max)).
FRACRIDGE_SMALL_BIAS, FRACRIDGE_BIG_BIAS, FRACRIDGE_STEP = 1e-2, 1e4, 0.2


@dataclass
class FracRidgeGrid:
    """Per-voxel fraction-of-norm curve on fracridge's grid of ridge penalties."""

    asc: Any  # (G, c) fraction of the OLS norm, ascending (penalty decreasing)
    log_alpha: Any  # (G,) log(1 + penalty) matching ``asc`` rows (fracridge's scale)
    s2: Any  # (N, 1) squared singular values


def fractional_ridge_grid(xp: Backend, s2: np.ndarray, rot: Any) -> FracRidgeGrid:
    """Fraction of the OLS coefficient norm reached by each ridge penalty, per voxel.

    The penalties are fracridge's (:data:`FRACRIDGE_STEP` and the biases), so
    :func:`fractional_ridge_scale` reaches the penalties GLMsingle's fracridge
    call reaches.

    Parameters
    ----------
    s2 : ndarray, shape (N,)
        Squared singular values of the (block-diagonal) session design.
    rot : (N, c)
        OLS coefficients in the rotated basis (the norm is rotation invariant).
    """
    lo = np.floor(np.log10(FRACRIDGE_SMALL_BIAS * s2.min()))
    hi = np.ceil(np.log10(FRACRIDGE_BIG_BIAS * s2.max()))
    alphas = np.concatenate([[0.0], 10.0 ** np.arange(lo, hi, FRACRIDGE_STEP)])[::-1]
    shrink = s2[None, :] / (s2[None, :] + alphas[:, None])  # (G, N), penalty decreasing
    rot2 = rot * rot
    norm0 = xp.sum(rot2, axis=0)
    safe0 = xp.where(norm0 > 0, norm0, 1.0)
    asc = xp.sqrt(xp.clip((xp.asarray(shrink**2) @ rot2) / safe0[None, :], 0.0, 1.0))
    return FracRidgeGrid(
        asc=asc, log_alpha=xp.asarray(np.log1p(alphas)), s2=xp.asarray(s2)[:, None]
    )


def fractional_ridge_scale(xp: Backend, grid: FracRidgeGrid, target: Any) -> Any:
    """Shrinkage factors ``s² / (s² + α_v)`` reaching ``target`` fraction per voxel.

    Fractional ridge (Rokem & Kay 2020): for each voxel the penalty ``α_v`` with
    ``||β_α|| = f_v ||β_OLS||`` is found, as fracridge finds it, by linear
    interpolation of ``log(1 + α)`` in the fraction between the grid's penalties.

    Parameters
    ----------
    grid : FracRidgeGrid
    target : (c,)
        Target fraction per voxel in (0, 1]; 1 gives OLS (factors of 1).

    Returns
    -------
    (N, c)
    """
    n_grid = grid.asc.shape[0]
    j = xp.clip(xp.searchsorted_rows(grid.asc, target), 1, n_grid - 1)
    f0, f1 = xp.take_rows(grid.asc, j - 1), xp.take_rows(grid.asc, j)
    a0, a1 = grid.log_alpha[j - 1], grid.log_alpha[j]
    den = f1 - f0
    w = xp.clip((target - f0) / xp.where(den > 0, den, 1.0), 0.0, 1.0)
    alpha = _expm1(xp, a0 + w * (a1 - a0))
    alpha = xp.where(target >= 1.0, 0.0, alpha)
    return grid.s2 / (grid.s2 + alpha[None, :])


def _expm1(xp: Backend, a: Any) -> Any:
    if xp.name == "numpy":
        return np.expm1(a)
    return a.expm1()


def rescale_to(xp: Backend, shrunk: Any, reference: Any) -> Any:
    """Per voxel, the affine map of ``shrunk`` that best fits ``reference`` (least squares).

    GLMsingle's post-ridge rescaling: the regularised betas keep their
    pattern across trials but regain the units of the unregularised ones.
    A voxel whose best slope is negative keeps its regularised betas
    (GLMsingle's rule: no sign flip). Shapes ``(n_trials, c)``.
    """
    n = shrunk.shape[0]
    ms = xp.sum(shrunk, axis=0) / n
    mr = xp.sum(reference, axis=0) / n
    ds = shrunk - ms[None, :]
    var = xp.sum(ds * ds, axis=0)
    cov = xp.sum(ds * (reference - mr[None, :]), axis=0)
    slope = cov / xp.where(var > 0, var, 1.0)
    flip = slope < 0
    return xp.where(flip[None, :], shrunk, ds * slope[None, :] + mr[None, :])


# --------------------------------------------------------------------------------------
# GLMsingle's cross-validation in the beta domain, and one decomposition for every
# number of noise components
# --------------------------------------------------------------------------------------
def repeat_pairs(stimuli: np.ndarray, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (held-out trial, training trial) of one stimulus shown in two different runs.

    Every ordered pair is listed, so each run is held out in turn (leave-one-run-out).

    Returns
    -------
    test, train : ndarray of int, shape (n_pairs,)
        Trial indices within the session.
    """
    stimuli = np.asarray(stimuli).astype(str)
    runs = np.asarray(runs).astype(str)
    by_stim: dict[str, list[int]] = {}
    for t, s in enumerate(stimuli):
        by_stim.setdefault(s, []).append(t)
    test, train = [], []
    for idx in by_stim.values():
        for t in idx:
            for u in idx:
                if runs[u] != runs[t]:
                    test.append(t)
                    train.append(u)
    return np.asarray(test, dtype=np.int64), np.asarray(train, dtype=np.int64)


def zscore_stats(xp: Backend, reference: Any) -> tuple[Any, Any]:
    """Per-voxel mean and 1 / SD (ddof 1; 0 where the SD is 0) of ``reference`` (n, c)."""
    n = reference.shape[0]
    mu = xp.sum(reference, axis=0) / n
    d = reference - mu[None, :]
    sd = xp.sqrt(xp.sum(d * d, axis=0) / max(n - 1, 1))
    return mu, xp.where(sd > 0, 1.0 / xp.where(sd > 0, sd, 1.0), 0.0)


def beta_cv_badness(
    xp: Backend, candidate: Any, reference: Any, pairs: tuple[Any, Any], stats: tuple[Any, Any]
) -> Any:
    """GLMsingle's cross-validation error of candidate betas, per voxel.

    Each held-out trial's *reference* beta (unregularised, or without noise
    regressors) is compared with the *candidate* betas of the same stimulus
    in the other runs, all z-scored with the reference's per-voxel mean and SD
    over the session (Prince et al. 2022; GLMsingle's ``calcbadness``).

    Parameters
    ----------
    candidate, reference : (n_trials, c)
    pairs : (test, train) trial indices, from :func:`repeat_pairs`
    stats : from :func:`zscore_stats` of ``reference``

    Returns
    -------
    (c,) sum of squared differences in z units
    """
    mu, inv = stats
    test, train = pairs
    d = (candidate[train] - reference[test]) * inv[None, :]
    return xp.sum(d * d, axis=0)


def _pinv_sym(a: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a symmetric positive semi-definite matrix (eigenvalue cut RCOND²)."""
    if a.shape[0] == 0:
        return a
    w, v = np.linalg.eigh(a)
    keep = w > (RCOND**2) * max(float(w.max()), 0.0)
    inv_w = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    return (v * inv_w) @ v.T


def nuisance_path_cv(
    designs: list[np.ndarray],
    nuisances: list[np.ndarray],
    n_fixed: list[int],
    ys: list[np.ndarray],
    repeated: list[np.ndarray],
    other_mean: sp.csr_matrix,
    max_extra: int,
) -> np.ndarray:
    """Leave-one-run-out CV R² of every number of noise components, one Gram per run.

    For each count ``k`` (0..``max_extra`` extra nuisance columns) the trial
    betas of every run are ``(XᵀX - C_k C_kᵀ)⁺ (Xᵀy - C_k N_kᵀy)`` with
    ``C = XᵀN`` and ``N = [F, Q]`` orthonormal (``F`` the always-included
    columns, then the first ``k`` columns of ``Q``); each
    repeated trial of a held-out run is predicted by the mean beta of its
    stimulus in the other runs (``other_mean``), and the held-out data are
    compared with the prediction after the run's nuisance and non-repeated
    trials are fitted out — the same error as :func:`cv_error`, computed from
    ``XᵀX``, ``XᵀN``, ``Xᵀy``, ``Nᵀy`` and ``yᵀy`` of each run, so no
    decomposition of a T-row matrix is repeated per count.

    Parameters
    ----------
    designs, nuisances, ys : per run, (T, n), (T, n_fixed + max_extra) orthonormal, (T, c)
    n_fixed : per run, nuisance columns always included (polynomials)
    repeated : per run, bool (n,) trials whose stimulus is in another run
    other_mean : (n_repeated_session, n_trials_session) from :func:`other_run_mean_operator`
    max_extra : largest number of extra nuisance columns

    Returns
    -------
    ndarray, shape (max_extra + 1, c): ``1 - error / total`` per count and voxel
    """
    runs = []
    for x, nuis, y in zip(designs, nuisances, ys, strict=True):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        runs.append(
            {
                "g": x.T @ x,
                "c": x.T @ nuis,
                "xty": x.T @ y,
                "nty": nuis.T @ y,
                "yty": np.einsum("tc,tc->c", y, y),
            }
        )
    n_vox = ys[0].shape[1]
    scores = np.zeros((max_extra + 1, n_vox))
    for k in range(max_extra + 1):
        betas = []
        for r, nf in zip(runs, n_fixed, strict=True):
            m = nf + k
            cm = r["c"][:, :m]
            betas.append(_pinv_sym(r["g"] - cm @ cm.T) @ (r["xty"] - cm @ r["nty"][:m]))
        pred = np.asarray(other_mean @ np.concatenate(betas))
        err = np.zeros(n_vox)
        tot = np.zeros(n_vox)
        start = 0
        for r, nf, rep in zip(runs, n_fixed, repeated, strict=True):
            m = nf + k
            rr, qq = np.flatnonzero(rep), np.flatnonzero(~rep)
            cm = r["c"][:, :m]
            s_inv = _pinv_sym(r["g"][np.ix_(qq, qq)] - cm[qq] @ cm[qq].T)
            z0 = r["xty"][qq] - cm[qq] @ r["nty"][:m]
            tot_r = r["yty"] - np.sum(r["nty"][:m] ** 2, axis=0) - np.sum(z0 * (s_inv @ z0), 0)
            tot += tot_r
            if not len(rr):
                err += tot_r
                continue
            b = pred[start : start + len(rr)]
            start += len(rr)
            ntr = r["nty"][:m] - cm[rr].T @ b
            xqr = r["xty"][qq] - r["g"][np.ix_(qq, rr)] @ b
            rtr = (
                r["yty"]
                - 2.0 * np.sum(b * r["xty"][rr], axis=0)
                + np.sum(b * (r["g"][np.ix_(rr, rr)] @ b), axis=0)
            )
            z = xqr - cm[qq] @ ntr
            err += rtr - np.sum(ntr**2, axis=0) - np.sum(z * (s_inv @ z), axis=0)
        scores[k] = 1.0 - err / np.maximum(tot, 1e-12)
    return scores


def nuisance_path_betas(
    designs: list[np.ndarray],
    nuisances: list[np.ndarray],
    n_fixed: list[int],
    ys: list[np.ndarray],
    max_extra: int,
) -> np.ndarray:
    """Trial betas of every number of noise components, one Gram per run.

    For each count ``k`` (0..``max_extra``), the betas of each run are
    ``(XᵀX - C_k C_kᵀ)⁺ (Xᵀy - C_k N_kᵀy)`` (see :func:`nuisance_path_cv`):
    the least-squares fit with the first ``n_fixed + k`` nuisance columns.

    Returns
    -------
    ndarray, shape (max_extra + 1, n_session_trials, c)
    """
    runs = []
    for x, nuis, y in zip(designs, nuisances, ys, strict=True):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        runs.append((x.T @ x, x.T @ nuis, x.T @ y, nuis.T @ y))
    n_trials = sum(r[0].shape[0] for r in runs)
    out = np.zeros((max_extra + 1, n_trials, ys[0].shape[1]))
    for k in range(max_extra + 1):
        start = 0
        for (g, c, xty, nty), nf in zip(runs, n_fixed, strict=True):
            m = nf + k
            cm = c[:, :m]
            n = g.shape[0]
            out[k, start : start + n] = _pinv_sym(g - cm @ cm.T) @ (xty - cm @ nty[:m])
            start += n
    return out


def robust_range(v: np.ndarray) -> tuple[float, float]:
    """GLMsingle's ``robustrange``: the range of ``v`` without far outliers (1-D, finite)."""
    v = np.asarray(v, dtype=np.float64)
    while True:
        p01, p10, p50, p90, p999 = np.percentile(v, [0.1, 10, 50, 90, 99.9])
        lo_lim, hi_lim = p50 - 5 * (p50 - p10), p50 + 5 * (p90 - p50)
        keep = np.ones(v.shape, dtype=bool)
        if p999 > hi_lim:
            keep &= ~(v > hi_lim)
        if p01 < lo_lim:
            keep &= ~(v < lo_lim)
        if keep.all() or not keep.any():
            break
        v = v[keep]
    mn, mx = float(v.min()), float(v.max())
    hi = mx if mx <= p50 + 1.1 * (p999 - p50) else float(p999)
    lo = mn if mn >= p50 - 1.1 * (p50 - p01) else float(p01)
    return lo, hi


def tail_threshold(values: np.ndarray, seed: int = 0, max_values: int = 200_000) -> float:
    """GLMsingle's tail threshold: where a 2-Gaussian mixture's posteriors cross 0.5.

    A two-component Gaussian mixture is fitted to ``values`` (GLMsingle's
    ``findtailthreshold``, applied to the ON-OFF R² of every voxel); the
    threshold is the largest value, on a 500-point grid over the robust range
    (:func:`robust_range`), at which the right-hand component's posterior is at
    most 0.5. At most ``max_values`` evenly spaced values (in sorted order) are
    used. GLMsingle starts the mixture from random draws; here the seed is fixed.

    Returns
    -------
    float (``nan`` when fewer than 3 distinct finite values)
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    if np.unique(v).size < 3:
        return float("nan")
    if v.size > max_values:
        v = v[np.linspace(0, v.size - 1, max_values).astype(int)]
    gm = GaussianMixture(n_components=2, tol=1e-10, reg_covar=1e-12, n_init=3, random_state=seed)
    with warnings.catch_warnings():
        # GLMsingle's tolerance (1e-10) is rarely met within the iterations; the fit is
        # still the best of the restarts, as in GLMsingle
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(v[:, None])
    means = gm.means_.ravel()
    lo, hi = robust_range(v)
    grid = np.linspace(min(lo, means.min()), max(hi, means.max()), 500)
    post = gm.predict_proba(grid[:, None])[:, int(np.argmax(means))]
    below = np.flatnonzero(post <= 0.5)
    return float(grid[below[-1]] if below.size else grid[0])
