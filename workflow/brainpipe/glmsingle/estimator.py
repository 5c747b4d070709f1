"""GLMsingle-style single-trial betas (types A-D), streamed over voxel chunks.

:class:`GLMSingle` fits one subject from a data reader and hands each block of
betas to a writer, so memory holds one session × one voxel chunk at a time:

1. Screening (every session, every chunk): type-A ON-OFF R² with the assumed
   HRF (GLMsingle's by default, ``assumed_hrf``) and, for type B, the variance
   each library HRF's single-trial design explains, summed over all runs; each
   voxel takes the best HRF.
2. Noise pool and CV voxels (type C), as GLMsingle by default: the ON-OFF R²
   (one amplitude for all runs of a session) is split at its tail threshold
   (a 2-Gaussian mixture); voxels below form the noise pool, voxels above
   score the cross-validation (each evenly subsampled to ``max_pool_voxels`` /
   ``cv_voxels``). Per run, the leading principal components of the pool's
   residuals (polynomials projected out) are the noise regressors; per
   session, the number of components is chosen by leave-one-run-out
   cross-validation on repeated stimuli, in the beta domain (held-out betas
   without components vs the other runs' betas with ``k``, z-scored; median
   over the CV voxels; the smallest count reaching ``pc_stop`` of the best
   improvement over zero components). ``noise_pool = "quantile"`` and
   ``pc_cv = "timeseries"`` select brainpipe's earlier rules.
3. Final fit (every session, every chunk): single-trial GLM with each voxel's
   HRF, the session's noise regressors and, for type D, a per-voxel
   fractional-ridge fraction chosen by leave-one-run-out cross-validation
   (GLMsingle's beta-domain criterion by default, ``ridge_cv``), then
   rescaled to the units of the unregularised betas.

Sessions whose stimuli never repeat across runs cannot cross-validate: they
borrow the number of components (median) and per-voxel fractions (mean) of the
sessions that can; if none can, they use 0 components and no ridge. Each
fallback is logged and recorded in :attr:`GLMSingleResult.notes`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from brainpipe.design import FINE_DT, trial_regressors
from brainpipe.errors import BrainpipeInputError
from brainpipe.glmsingle import solvers as S
from brainpipe.glmsingle.backend import Backend, get_backend
from brainpipe.glmsingle.library import (
    assumed_kernel,
    library_kernels,
    read_assumed_hrf,
    read_hrf_library,
)

log = logging.getLogger(__name__)

#: Types in the order they build on each other.
TYPES = ("A", "B", "C", "D")
#: ``hrf_index`` of voxels fitted with the canonical HRF (type A) or not fitted.
CANONICAL_OR_UNFITTED = -1


def check_types(types: Sequence[str], source: str = "config") -> tuple[str, ...]:
    """Validate a cumulative list of GLMsingle types (``["A"]`` ... ``["A","B","C","D"]``)."""
    types = tuple(types)
    if not types or types != TYPES[: len(types)]:
        raise BrainpipeInputError(
            source,
            "betas.types",
            f"got {list(types)!r}; expected a cumulative list: ['A'], ['A', 'B'], "
            "['A', 'B', 'C'] or ['A', 'B', 'C', 'D']",
        )
    return types


@dataclass
class GLMSingleOptions:
    """Settings of the GLMsingle fit (see config/README.md, ``betas.*``)."""

    types: tuple[str, ...] = TYPES
    hrf_library: pd.DataFrame | None = None  # None: built-in 20-HRF library
    # type A's HRF: "glmsingle" (GLMsingle's assumed HRF), "spm", or a one-HRF sampled table
    assumed_hrf: str | pd.DataFrame = "glmsingle"
    n_pcs: int = 10
    noise_pool_quantile: float = 0.5
    max_pool_voxels: int = 20000
    cv_voxels: int = 2000
    fractions: tuple[float, ...] = tuple(np.round(np.arange(0.05, 1.0001, 0.05), 2))
    pc_stop: float = 0.95
    poly_degree: int | None = None  # None: round(run minutes / 2)
    ridge_cv: str = "betas"
    noise_pool: str = "tail"
    pc_cv: str = "betas"
    pool_remove_onoff: bool = False

    def __post_init__(self) -> None:
        self.types = check_types(self.types)
        for key, allowed in (
            ("ridge_cv", ("betas", "timeseries")),
            ("pc_cv", ("betas", "timeseries")),
            ("noise_pool", ("tail", "quantile")),
        ):
            if getattr(self, key) not in allowed:
                raise BrainpipeInputError(
                    "config",
                    f"betas.{key}",
                    f"got {getattr(self, key)!r}; expected one of {allowed}",
                )
        if self.hrf_library is None:
            self.hrf_library = read_hrf_library(None)
        self.assumed_hrf = read_assumed_hrf(self.assumed_hrf)


@dataclass
class RunSpec:
    """One run: its session, label, time rows in the data and its trials."""

    session: str
    run: str
    start: int  # first row of the run along the data's time axis
    stop: int
    onsets: np.ndarray
    durations: np.ndarray
    stimuli: np.ndarray
    # volumes censored by scrubbing (preproc.zarr's sample_mask), rows within the run: each
    # gets a one-hot nuisance regressor, which is least squares without that row
    censored: tuple[int, ...] = ()

    @property
    def n_scans(self) -> int:
        return self.stop - self.start


def session_psc_reader(
    read: Callable[[slice, slice | np.ndarray], np.ndarray],
    runs: Sequence[RunSpec],
    run_mean: Callable[[int, slice | np.ndarray], np.ndarray],
) -> Callable[[slice, slice | np.ndarray], np.ndarray]:
    """Wrap a reader of % change of each *run's* mean into one of % of the *session's* mean.

    GLMsingle expresses its betas in % of the session's mean volume (one
    ``meanvol`` over all runs); preprocessing here scales each run by its own
    mean. Multiplying run ``r`` by ``mean_r / mean_session`` (the session mean
    weighted by each run's scans, as a mean over every volume) undoes the
    difference, so every run of a session shares one scale, as in GLMsingle.
    On both benchmark simulators, whose baselines do not change between runs,
    one scale per session recovers GLMsingle's type-B betas exactly where a
    scale per run loses reliability to the noise in each run's mean.

    Parameters
    ----------
    read : callable(time_slice, voxels) -> (n_rows, n_selected) float32
        Reads % change of each run's mean; rows are the data's time axis.
    runs : sequence of RunSpec
        Every run in the data (its session and its rows).
    run_mean : callable(run_position, voxels) -> (n_selected,)
        Mean intensity of ``runs[run_position]`` over the selected voxels;
        voxels with a non-finite or non-positive mean keep their values.

    Returns
    -------
    callable with the signature of ``read``
    """
    runs = list(runs)

    def scaled(ts: slice, vs: slice | np.ndarray) -> np.ndarray:
        block = np.array(read(ts, vs), dtype=np.float32)
        start = ts.start or 0
        stop = start + block.shape[0]
        hit = [i for i, r in enumerate(runs) if r.start < stop and r.stop > start]
        for ses in dict.fromkeys(runs[i].session for i in hit):
            members = [i for i, r in enumerate(runs) if r.session == ses]
            means = np.stack([np.asarray(run_mean(i, vs), dtype=np.float64) for i in members])
            scans = np.array([runs[i].n_scans for i in members], dtype=np.float64)
            ok = np.isfinite(means).all(0) & (means > 0).all(0)
            ses_mean = scans @ np.where(ok, means, 1.0) / scans.sum()
            for i, m in zip(members, means, strict=True):
                lo, hi = max(runs[i].start, start), min(runs[i].stop, stop)
                if lo >= hi:
                    continue
                factor = np.where(ok, m / np.where(ok, ses_mean, 1.0), 1.0).astype(np.float32)
                block[lo - start : hi - start] *= factor
        return block

    return scaled


@dataclass
class GLMSingleResult:
    """Per-voxel outputs of a fit (arrays of shape (n_voxels,)) and notes."""

    r2: np.ndarray
    hrf_index: np.ndarray
    n_noise_components: np.ndarray
    ridge_fraction: np.ndarray
    valid: np.ndarray
    n_pcs_per_session: dict[str, int]
    notes: list[str] = field(default_factory=list)


class _Session:
    """Design-side objects of one session, built once and shared by every chunk."""

    def __init__(self, runs: list[RunSpec], tr: float, kernels: np.ndarray, opts: GLMSingleOptions):
        self.runs = runs
        self.start, self.stop = runs[0].start, runs[-1].stop
        self.stimuli = np.concatenate([r.stimuli for r in runs]).astype(str)
        labels = np.concatenate([np.full(len(r.onsets), r.run) for r in runs]).astype(str)
        self.mean_op, self.repeated = S.other_run_mean_operator(self.stimuli, labels)
        self.pairs = S.repeat_pairs(self.stimuli, labels)
        self.has_repeats = bool(self.repeated.any())
        self.n_trials = len(self.stimuli)
        offsets = np.cumsum([0] + [len(r.onsets) for r in runs])
        self.trial_slices = [slice(offsets[i], offsets[i + 1]) for i in range(len(runs))]
        self.polys, self.designs, self.onoff_basis = [], [], []
        canonical = kernels[-1]
        for r in runs:
            deg = opts.poly_degree if opts.poly_degree is not None else None
            deg = S.default_poly_degree(r.n_scans, tr) if deg is None else deg
            poly = S.polynomial_basis(r.n_scans, deg)
            if r.censored:
                spikes = np.zeros((r.n_scans, len(r.censored)))
                spikes[list(r.censored), np.arange(len(r.censored))] = 1.0
                poly = S.orth(np.column_stack([poly, spikes]))  # the basis stays orthonormal
            x = np.stack(
                [
                    trial_regressors(r.onsets, r.durations, r.n_scans, tr, k, FINE_DT)
                    for k in kernels
                ]
            )  # (H + 1, T, n): library then canonical
            onoff = trial_regressors(r.onsets, r.durations, r.n_scans, tr, canonical, FINE_DT).sum(
                1
            )
            self.polys.append(poly)
            self.designs.append(x)
            self.onoff_basis.append(S.orth(np.column_stack([poly, onoff])))
        self.pcs = [np.zeros((r.n_scans, 0)) for r in runs]

    def run_time(self, i: int) -> slice:
        r = self.runs[i]
        return slice(r.start - self.start, r.stop - self.start)

    def operators(self, xp: Backend, h: int, n_pcs: int) -> list[S.RunOperators]:
        """Per-run operators for HRF ``h`` (last = canonical) and ``n_pcs`` noise regressors."""
        ops = []
        for i in range(len(self.runs)):
            nuisance = S.orth(np.column_stack([self.polys[i], self.pcs[i][:, :n_pcs]]))
            rep = self.repeated[self.trial_slices[i]]
            ops.append(S.run_operators(xp, self.designs[i][h], nuisance, rep))
        return ops


class GLMSingle:
    """Single-trial GLM at the level of GLMsingle, vectorised and streamed over voxels.

    Parameters
    ----------
    runs : list of RunSpec
        Every run of the subject, grouped by session, in the order of the data.
    tr : float
        Repetition time in seconds.
    n_voxels : int
        Voxels in the data.
    options : GLMSingleOptions
    backend : str or Backend
        ``auto`` (torch CUDA if available, else numpy), ``numpy``, ``torch`` or ``torch_cuda``.
    chunk : int
        Voxels per block (see :func:`brainpipe.glmsingle.chunking.voxel_chunk_for_memory`).
    threads : int or None
        BLAS and torch threads during :meth:`fit` (the job's ``threads``); ``None``
        leaves the libraries' settings alone. On shared nodes, BLAS threads
        beyond the job's cores spin against other jobs and make the many small
        products of the fit many times slower.
    """

    def __init__(
        self,
        runs: list[RunSpec],
        tr: float,
        n_voxels: int,
        options: GLMSingleOptions | None = None,
        backend: str | Backend = "auto",
        chunk: int = 4096,
        threads: int | None = None,
    ) -> None:
        self.runs = runs
        self.threads = None if threads is None else max(1, int(threads))
        self.tr = float(tr)
        self.n_voxels = int(n_voxels)
        self.opts = options or GLMSingleOptions()
        self.xp = backend if isinstance(backend, Backend) else get_backend(backend)
        self.chunk = max(1, int(chunk))
        lib = library_kernels(self.opts.hrf_library, FINE_DT)
        n = lib.shape[1]
        can = assumed_kernel(self.opts.assumed_hrf, FINE_DT)
        can = np.pad(can, (0, max(0, n - len(can))))[:n]
        self.kernels = np.vstack([lib, can[None, :]])
        self.n_hrfs = lib.shape[0]
        sessions: dict[str, list[RunSpec]] = {}
        for r in runs:
            sessions.setdefault(r.session, []).append(r)
        self.session_runs = sessions

    # ------------------------------------------------------------------------------------
    def _chunks(self) -> list[slice]:
        return [
            slice(v, min(v + self.chunk, self.n_voxels))
            for v in range(0, self.n_voxels, self.chunk)
        ]

    def fit(
        self,
        read: Callable[[slice, slice | np.ndarray], np.ndarray],
        write: Callable[[slice, slice, np.ndarray], None],
        progress: Callable[[str], None] | None = None,
    ) -> GLMSingleResult:
        """Fit every session and write its betas block by block.

        Parameters
        ----------
        read : callable(time_slice, voxels) -> ndarray (n_scans, n_selected) float32
            Data in % signal change; ``voxels`` is a slice or sorted index array.
        write : callable(trial_slice, voxel_slice, betas)
            Receives betas ``(n_session_trials, n_chunk_voxels)`` float32; trial
            slices follow the order of ``runs``.
        progress : callable(str), optional
            Called with a short message after each stage.

        Returns
        -------
        GLMSingleResult
        """
        if self.threads is None:
            return self._fit(read, write, progress)
        torch = sys.modules.get("torch") if self.xp.name == "numpy" else None
        if self.xp.name != "numpy":
            import torch
        before = torch.get_num_threads() if torch is not None else None
        try:
            if torch is not None:
                torch.set_num_threads(self.threads)
            with threadpool_limits(limits=self.threads):
                return self._fit(read, write, progress)
        finally:
            if torch is not None:
                torch.set_num_threads(before)

    def _fit(self, read, write, progress) -> GLMSingleResult:
        # Design-side work (decompositions of T x n matrices, n x n solves of the CV) runs
        # on one BLAS thread whatever ``threads`` is: matrices this small gain nothing
        # from more, and on a loaded node idle BLAS threads spin against other jobs
        # (measured: 4x the CPU time and 8x the wall time of one thread).
        say = progress or (lambda msg: log.info(msg))
        xp, opts = self.xp, self.opts
        types = opts.types
        use_b, use_c, use_d = "B" in types, "C" in types, "D" in types
        with threadpool_limits(limits=1):  # small design-side matrices
            sessions = {
                name: _Session(runs, self.tr, self.kernels, opts)
                for name, runs in self.session_runs.items()
            }
        V = self.n_voxels
        # ---- pass 1: screening ----------------------------------------------------------
        total = np.zeros(V)
        onoff = np.zeros(V)
        per_hrf = np.zeros((self.n_hrfs, V)) if use_b else None
        valid = np.ones(V, dtype=bool)
        n_lib = self.n_hrfs if use_b else 0
        for ses in sessions.values():
            screen_ops = []
            for i in range(len(ses.runs)):
                lib = ses.designs[i][:n_lib]
                on = ses.designs[i][-1].sum(1)
                op = S.screening_operator(ses.polys[i], on, lib)
                norm = float(np.linalg.norm(S.residualise(on[:, None], ses.polys[i])))
                screen_ops.append(
                    (xp.asarray(op), ses.polys[i].shape[1], lib.shape[2] if n_lib else 0, norm)
                )
            on_norm2 = sum(n * n for *_, n in screen_ops)
            for vs in self._chunks():
                y_all = self._clean(read(slice(ses.start, ses.stop), vs), valid, vs)
                # GLMsingle's type-A model: one ON-OFF amplitude for all runs of the session
                on_dot = np.zeros(vs.stop - vs.start)
                for i, (op, n_poly, n_tr, norm) in enumerate(screen_ops):
                    y = xp.asarray(y_all[ses.run_time(i)])
                    t, _, ph = S.screening_stats(xp, op, y, n_poly, n_lib, n_tr)
                    total[vs] += xp.to_numpy(t)
                    on_dot += norm * xp.to_numpy(op[n_poly : n_poly + 1] @ y)[0]
                    if use_b:
                        per_hrf[:, vs] += xp.to_numpy(ph)
                if on_norm2 > 0:
                    onoff[vs] += on_dot * on_dot / on_norm2
        valid &= total > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = np.where(valid, onoff / np.where(total > 0, total, 1.0), 0.0)
        hrf = np.full(V, self.n_hrfs, dtype=np.int64)  # internal: canonical = last kernel
        if use_b:
            hrf[valid] = np.argmax(per_hrf[:, valid], axis=0)
        say(
            f"screening done: {int(valid.sum())} valid voxels of {V}, "
            f"median ON-OFF R² {np.median(r2[valid]) if valid.any() else 0:.4f}"
        )
        notes: list[str] = []
        if not valid.all():
            notes.append(
                f"{int((~valid).sum())} voxels with zero or non-finite time series left at 0"
            )

        # ---- pass 2: noise regressors and the number of components ----------------------
        n_pcs = {name: 0 for name in sessions}
        cv_ok = {name: ses.has_repeats for name, ses in sessions.items()}
        if use_c and valid.sum() >= 2:
            pool, cv_vox, thr = _pool_and_cv_voxels(r2, valid, opts)
            if thr is not None:
                say(f"ON-OFF R² tail threshold {thr:.5f}")
            say(f"noise pool {len(pool)} voxels, {len(cv_vox)} voxels for cross-validation")
            for name, ses in sessions.items():
                y_pool, y_cv = self._gather(read, ses, [pool, cv_vox])
                basis = ses.onoff_basis if opts.pool_remove_onoff else ses.polys
                with threadpool_limits(limits=1):
                    ses.pcs = [
                        S.noise_components(y_pool[ses.run_time(i)], basis[i], opts.n_pcs)
                        for i in range(len(ses.runs))
                    ]
                if ses.has_repeats and len(cv_vox):
                    with threadpool_limits(limits=1):
                        if opts.pc_cv == "betas":
                            scores = self._cv_scores_betas(ses, y_cv, hrf[cv_vox], opts.n_pcs)
                        else:
                            scores = self._cv_scores(ses, y_cv, hrf[cv_vox], opts.n_pcs)
                    n_pcs[name] = _choose_n_pcs(np.asarray(scores), opts.pc_stop)
                    say(
                        f"session {name}: median CV R² by number of noise components "
                        f"{np.round(scores, 4).tolist()} -> {n_pcs[name]}"
                    )
            good = [n_pcs[n] for n in sessions if cv_ok[n]]
            for name in sessions:
                if not cv_ok[name]:
                    n_pcs[name] = int(np.median(good)) if good else 0
                    msg = (
                        f"session {name}: no stimulus repeats across its runs, so the number of "
                        f"noise components cannot be cross-validated; using {n_pcs[name]} "
                        + ("(median of the other sessions)" if good else "(no session has repeats)")
                    )
                    log.warning(msg)
                    notes.append(msg)

        # ---- pass 3: final fit ----------------------------------------------------------
        fractions = np.asarray(opts.fractions, dtype=float)
        frac_sum = np.zeros(V)
        frac_n = np.zeros(V)
        order_s = [n for n in sessions if cv_ok[n]] + [n for n in sessions if not cv_ok[n]]
        trial_offset = {}
        off = 0
        for name in sessions:
            trial_offset[name] = off
            off += sessions[name].n_trials
        if use_d and not any(cv_ok.values()):
            msg = (
                "no session has stimulus repeats across runs: ridge fractions cannot be "
                "cross-validated; using 1 (no ridge)"
            )
            log.warning(msg)
            notes.append(msg)
        elif use_d and not all(cv_ok.values()):
            msg = (
                "sessions without repeats across runs use each voxel's mean ridge fraction "
                "of the other sessions"
            )
            log.warning(msg)
            notes.append(msg)
        for name in order_s:
            ses = sessions[name]
            with threadpool_limits(limits=1):
                ops = {h: ses.operators(xp, h, n_pcs[name]) for h in np.unique(hrf[valid])}
            for vs in self._chunks():
                y_all = self._clean(read(slice(ses.start, ses.stop), vs), None, vs)
                out = np.zeros((ses.n_trials, vs.stop - vs.start), dtype=np.float32)
                hv = hrf[vs]
                ok = valid[vs]
                for h, o in ops.items():
                    cols = np.flatnonzero(ok & (hv == h))
                    if not len(cols):
                        continue
                    y = xp.asarray(y_all[:, cols])
                    if not use_d:
                        target = None
                    elif cv_ok[name]:
                        target = "cv"
                    else:
                        idx = vs.start + cols
                        seen = frac_n[idx] > 0
                        target = np.where(seen, frac_sum[idx] / np.maximum(frac_n[idx], 1), 1.0)
                    b, f = self._fit_block(ses, o, y, target, fractions)
                    out[:, cols] = b
                    if use_d and cv_ok[name]:
                        frac_sum[vs.start + cols] += f
                        frac_n[vs.start + cols] += 1
                off = trial_offset[name]
                write(slice(off, off + ses.n_trials), vs, out)
            say(
                f"session {name}: betas written ({ses.n_trials} trials, "
                f"{n_pcs[name]} noise components)"
            )

        ridge_fraction = np.where(frac_n > 0, frac_sum / np.maximum(frac_n, 1), 1.0)
        ridge_fraction[~valid] = np.nan
        hrf_out = np.where(hrf >= self.n_hrfs, CANONICAL_OR_UNFITTED, hrf)
        hrf_out[~valid] = CANONICAL_OR_UNFITTED
        k_med = int(round(float(np.median(list(n_pcs.values())))))
        return GLMSingleResult(
            r2=r2.astype(np.float32),
            hrf_index=hrf_out.astype(np.int16),
            n_noise_components=np.full(V, k_med, dtype=np.int16),
            ridge_fraction=ridge_fraction.astype(np.float32),
            valid=valid,
            n_pcs_per_session=n_pcs,
            notes=notes,
        )

    # ------------------------------------------------------------------------------------
    @staticmethod
    def _clean(y: np.ndarray, valid: np.ndarray | None, vs: slice) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        finite = np.isfinite(y)
        if not finite.all():
            bad = ~finite.all(axis=0)
            if valid is not None:
                valid[vs.start + np.flatnonzero(bad)] = False
            y = np.where(finite, y, 0.0).astype(np.float32)
            y[:, bad] = 0.0
        return y

    def _gather(self, read, ses: _Session, groups: list[np.ndarray]) -> list[np.ndarray]:
        """Time series over the session of each group of voxel indices, in one read pass."""
        outs = [np.zeros((ses.stop - ses.start, len(idx)), dtype=np.float32) for idx in groups]
        for vs in self._chunks():
            sels = [np.flatnonzero((idx >= vs.start) & (idx < vs.stop)) for idx in groups]
            if any(len(sel) for sel in sels):
                block = self._clean(read(slice(ses.start, ses.stop), vs), None, vs)
                for out, idx, sel in zip(outs, groups, sels, strict=True):
                    out[:, sel] = block[:, idx[sel] - vs.start]
        return outs

    def _project(self, ses: _Session, ops: list[S.RunOperators], y) -> list[S.ProjectedRun]:
        return [S.project_run(self.xp, o, y[ses.run_time(i)]) for i, o in enumerate(ops)]

    def _cv_scores(
        self, ses: _Session, y_cv: np.ndarray, hrf_cv: np.ndarray, max_pcs: int
    ) -> np.ndarray:
        """Median over CV voxels of the leave-one-run-out CV R², for 0..max_pcs components.

        One set of Gram products per run and HRF serves every number of
        components (:func:`~brainpipe.glmsingle.solvers.nuisance_path_cv`).
        """
        r2 = np.zeros((max_pcs + 1, len(hrf_cv)))
        reps = [ses.repeated[sl] for sl in ses.trial_slices]
        nuis = [
            np.column_stack([p, q[:, :max_pcs]]) for p, q in zip(ses.polys, ses.pcs, strict=True)
        ]
        n_fixed = [p.shape[1] for p in ses.polys]
        for h in np.unique(hrf_cv):
            cols = np.flatnonzero(hrf_cv == h)
            r2[:, cols] = S.nuisance_path_cv(
                [d[int(h)] for d in ses.designs],
                nuis,
                n_fixed,
                [y_cv[ses.run_time(i)][:, cols] for i in range(len(ses.runs))],
                reps,
                ses.mean_op,
                max_pcs,
            )
        return np.median(r2, axis=1)

    def _cv_scores_betas(
        self, ses: _Session, y_cv: np.ndarray, hrf_cv: np.ndarray, max_pcs: int
    ) -> np.ndarray:
        """GLMsingle's score of 0..max_pcs components: minus the median beta-domain CV error.

        Per voxel, each held-out trial's betas *without* noise components are
        compared with the betas *with* ``k`` components of the same stimulus in
        the other runs, in z units of the 0-component betas (GLMsingle's
        ``calcbadness``); the score of ``k`` is minus the median error over the
        CV voxels.
        """
        bad = np.zeros((max_pcs + 1, len(hrf_cv)))
        nuis = [
            np.column_stack([p, q[:, :max_pcs]]) for p, q in zip(ses.polys, ses.pcs, strict=True)
        ]
        n_fixed = [p.shape[1] for p in ses.polys]
        xp = get_backend("numpy")
        for h in np.unique(hrf_cv):
            cols = np.flatnonzero(hrf_cv == h)
            path = S.nuisance_path_betas(
                [d[int(h)] for d in ses.designs],
                nuis,
                n_fixed,
                [y_cv[ses.run_time(i)][:, cols] for i in range(len(ses.runs))],
                max_pcs,
            )
            stats = S.zscore_stats(xp, path[0])
            for k in range(max_pcs + 1):
                bad[k, cols] = S.beta_cv_badness(xp, path[k], path[0], ses.pairs, stats)
        return -np.median(bad, axis=1)

    def _fit_block(self, ses: _Session, ops, y, target, fractions: np.ndarray):
        """Betas (n_trials, c) of one HRF group, and the chosen fractions (c,) for type D."""
        xp = self.xp
        proj = self._project(ses, ops, y)
        rots = [p.rot for p in proj]
        ols = S.betas_from_rotated(xp, ops, rots)
        c = y.shape[1]
        if target is None:
            return xp.to_numpy(ols), np.ones(c)
        s2 = np.concatenate([o.s2 for o in ops])
        rot_all = xp.concatenate(rots, axis=0)
        grid = S.fractional_ridge_grid(xp, s2, rot_all)
        bounds = np.cumsum([0] + [o.n_svd for o in ops])

        def betas_at(tgt):
            scale = S.fractional_ridge_scale(xp, grid, tgt)
            return S.betas_from_rotated(
                xp, ops, [r * scale[bounds[i] : bounds[i + 1]] for i, r in enumerate(rots)]
            )

        if isinstance(target, str) and self.opts.ridge_cv == "betas":
            # GLMsingle: per voxel, the fraction whose betas of the other runs best match
            # the held-out unregularised betas of the same stimulus (z units).
            pairs = tuple(xp.asarray(p).long() if xp.name != "numpy" else p for p in ses.pairs)
            stats = S.zscore_stats(xp, ols)
            best_err = None
            best_b = None
            best_f = np.ones(c)
            for f in fractions[::-1]:  # 1 first: ties keep the least regularised
                b = ols if f >= 1.0 else betas_at(xp.full((c,), float(f)))
                err_np = xp.to_numpy(S.beta_cv_badness(xp, b, ols, pairs, stats))
                if best_err is None:
                    best_err, best_b, best_f[:] = err_np, b, f
                    continue
                better = err_np < best_err
                if better.any():
                    best_err = np.where(better, err_np, best_err)
                    best_b = xp.where(xp.asarray(better.astype(np.float32))[None, :] > 0, b, best_b)
                    best_f[better] = f
            chosen, fr = best_b, best_f
        elif isinstance(target, str):  # cross-validate the fraction per voxel
            mean_op = xp.sparse(ses.mean_op)
            best_err = None
            best_b = None
            best_f = np.ones(c)
            for f in fractions:
                b = betas_at(xp.full((c,), float(f)))
                err, _ = S.cv_error(xp, b, mean_op, ops, proj)
                err_np = xp.to_numpy(err)
                if best_err is None:
                    best_err, best_b, best_f[:] = err_np, b, f
                    continue
                better = err_np < best_err
                if better.any():
                    best_err = np.where(better, err_np, best_err)
                    best_b = xp.where(xp.asarray(better.astype(np.float32))[None, :] > 0, b, best_b)
                    best_f[better] = f
            chosen, fr = best_b, best_f
        else:
            fr = np.asarray(target, dtype=float)
            chosen = betas_at(xp.asarray(fr))
        return xp.to_numpy(S.rescale_to(xp, chosen, ols)), fr


def _pool_and_cv_voxels(
    r2: np.ndarray, valid: np.ndarray, opts: GLMSingleOptions
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Noise-pool voxels, voxels scoring the CV of the component count, and the threshold.

    ``noise_pool = "tail"`` (GLMsingle): the threshold is the ON-OFF R² tail
    threshold (:func:`~brainpipe.glmsingle.solvers.tail_threshold`); the pool is
    every valid voxel below it and the CV voxels every valid voxel above it
    (the 100 best when none is), each evenly subsampled in R² order to
    ``max_pool_voxels`` / ``cv_voxels``. ``"quantile"``: the pool is the valid
    voxels below ``noise_pool_quantile`` of the R², the CV voxels the best
    voxels standing out of the bulk (median + 3 robust SD, at least 20).
    """
    order = np.flatnonzero(valid)[np.argsort(r2[valid], kind="stable")]

    def even(idx: np.ndarray, cap: int) -> np.ndarray:
        if len(idx) <= cap:
            return np.sort(idx)
        return np.sort(idx[np.linspace(0, len(idx) - 1, cap).astype(int)])

    if opts.noise_pool == "tail":
        thr = S.tail_threshold(r2[valid])
        if not np.isfinite(thr):
            thr = float(np.median(r2[valid]))
        below = order[r2[order] < thr]
        above = order[r2[order] > thr]
        if not len(above):
            above = order[::-1][: min(100, len(order))]
        return even(below, opts.max_pool_voxels), even(above, opts.cv_voxels), thr
    n_pool = int(len(order) * opts.noise_pool_quantile)
    pool = even(order[:n_pool], opts.max_pool_voxels)
    # CV voxels: the best voxels whose R² stands out of the bulk (median + 3
    # robust SD over valid voxels), at least 20 when the data have that many.
    med = np.median(r2[valid])
    cut = med + 3.0 * 1.4826 * np.median(np.abs(r2[valid] - med))
    ranked = order[::-1]
    n_cv = max(int((r2[ranked] > cut).sum()), min(20, len(ranked)))
    return pool, np.sort(ranked[: min(n_cv, opts.cv_voxels)]), None


def _choose_n_pcs(scores: np.ndarray, stop: float) -> int:
    """Smallest count whose gain over 0 components reaches ``stop`` of the best gain."""
    gain = scores - scores[0]
    best = gain.max()
    if not np.isfinite(best) or best <= 0:
        return 0
    return int(np.flatnonzero(gain >= stop * best)[0])
