"""Single-trial betas by least squares — all (LSA): one regressor per trial.

The solver works on arrays and is vectorised over voxels (one pseudo-inverse of
the design per run, applied to blocks of voxels); :func:`estimate_subject_betas`
streams a subject's runs from ``preproc.zarr`` and writes ``betas.zarr`` as
the storage contract in docs/architecture.md describes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from brainpipe.betas.store import (
    censored_scans,
    close_store,
    layout_from_preproc,
    ncsnr_of_store,
    noise_ceiling_vars,
    write_per_voxel,
)
from brainpipe.bids import BidsLayout, RunKey, read_events
from brainpipe.config import VOXEL_CHUNK
from brainpipe.design import FINE_DT, trial_regressors
from brainpipe.hrf import canonical_hrf
from brainpipe.storage import atomic_path, open_zarr

log = logging.getLogger(__name__)


def lsa_design(onsets: np.ndarray, durations: np.ndarray, n_scans: int, tr: float) -> np.ndarray:
    """LSA design of one run: trial regressors (canonical HRF), then intercept and linear trend.

    Returns
    -------
    numpy.ndarray, shape (n_scans, n_trials + 2)
    """
    trials = trial_regressors(onsets, durations, n_scans, tr, canonical_hrf(FINE_DT))
    t = np.linspace(-1.0, 1.0, n_scans)
    return np.column_stack([trials, np.ones(n_scans), t])


def fit_lsa(
    data: np.ndarray, design: np.ndarray, n_trials: int, voxel_chunk: int = VOXEL_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares betas of every voxel for one run.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_scans, n_voxels)
        Preprocessed signal (percent signal change).
    design : numpy.ndarray, shape (n_scans, n_regressors)
        Design whose first ``n_trials`` columns are the trials.
    n_trials : int
        Number of trial columns.
    voxel_chunk : int
        Voxels per block, bounding the temporary memory.

    Returns
    -------
    betas : numpy.ndarray, shape (n_trials, n_voxels), float32
    r2 : numpy.ndarray, shape (n_voxels,), float32
        Variance of the run explained by the full design, per voxel (0 for
        constant voxels).
    """
    if design.shape[0] != data.shape[0]:
        raise ValueError(f"design has {design.shape[0]} scans but data has {data.shape[0]}")
    # One pseudo-inverse per run, shared by all voxels.
    pinv = np.linalg.pinv(design.astype(np.float64))
    n_voxels = data.shape[1]
    betas = np.empty((n_trials, n_voxels), dtype=np.float32)
    r2 = np.zeros(n_voxels, dtype=np.float32)
    for start in range(0, n_voxels, voxel_chunk):
        block = np.asarray(data[:, start : start + voxel_chunk], dtype=np.float64)
        coef = pinv @ block
        resid = block - design @ coef
        total = ((block - block.mean(axis=0)) ** 2).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r2_block = np.where(total > 0, 1.0 - (resid**2).sum(axis=0) / total, 0.0)
        betas[:, start : start + voxel_chunk] = coef[:n_trials]
        r2[start : start + voxel_chunk] = r2_block
    return betas, r2


def estimate_subject_betas(
    preproc_path: str | Path,
    layout: BidsLayout,
    subject: str,
    runs: list[RunKey],
    out_path: str | Path,
    voxel_chunk: int = VOXEL_CHUNK,
    config: dict[str, Any] | None = None,
) -> Path:
    """Estimate LSA betas for every run of a subject and write ``betas.zarr`` atomically.

    The store holds ``betas(trial, voxel)`` float32 in % signal change, with
    trial coords ``stimulus, session, run, onset``, voxel coords ``i, j, k, x,
    y, z``, boolean ``roi_<name>(voxel)`` coords, and per-voxel ``r2``,
    ``hrf_index``, ``ncsnr``, ``nc_1trial`` and ``nc_3trial`` (% variance).
    Every ROI the dataset has for the subject becomes a coord, so adding an
    ROI to the config needs no new betas.
    Trials are chunked by session and voxels by ``voxel_chunk``.
    """
    preproc = open_zarr(preproc_path)
    tr = float(preproc.attrs["tr"])
    n_voxels = preproc.sizes["voxel"]
    censored = censored_scans(preproc)
    per_run = []
    for key in runs:
        events = read_events(layout.events(key))
        per_run.append((key, events))
    trial_session = np.concatenate([np.full(len(ev), k.session) for k, ev in per_run])
    n_trials = len(trial_session)
    session_sizes = [int((trial_session == s).sum()) for s in dict.fromkeys(trial_session)]
    trial_chunk = max(session_sizes)
    store = layout_from_preproc(
        preproc,
        layout,
        subject,
        {
            "stimulus": np.concatenate([ev["stimulus"].to_numpy(str) for _, ev in per_run]),
            "session": trial_session,
            "run": np.concatenate([np.full(len(ev), k.run) for k, ev in per_run]),
            "onset": np.concatenate([ev["onset"].to_numpy(float) for _, ev in per_run]),
        },
        {"method": "lsa", "hrf_library": ["canonical (SPM double gamma)"]},
        config=config,
    )
    stimuli = store.coords["stimulus"][1]
    r2_sum = np.zeros(n_voxels, dtype=np.float64)
    with atomic_path(out_path) as tmp:
        betas_arr = store.write(tmp, (n_trials, n_voxels), (trial_chunk, voxel_chunk))
        try:
            start = 0
            session_betas: list[np.ndarray] = []
            for n, (key, events) in enumerate(
                tqdm(per_run, desc=f"betas sub-{subject}", unit="run")
            ):
                sel = (preproc["session"] == key.session) & (preproc["run"] == key.run)
                rows = np.flatnonzero(sel.values)
                data = preproc["bold"].isel(time=rows).values
                design = lsa_design(
                    events["onset"].to_numpy(), events["duration"].to_numpy(), data.shape[0], tr
                )
                kept = ~censored[rows]  # censored volumes are dropped from data and design
                betas, r2 = fit_lsa(data[kept], design[kept], len(events), voxel_chunk)
                r2_sum += r2
                session_betas.append(betas)
                last_of_session = n + 1 == len(per_run) or per_run[n + 1][0].session != key.session
                if last_of_session:
                    block = np.concatenate(session_betas)
                    betas_arr[start : start + len(block), :] = block
                    start += len(block)
                    session_betas = []
                log.info("sub-%s %s: %d trials", subject, key, len(events))
        finally:
            store.finish()
        ncsnr = ncsnr_of_store(betas_arr, trial_session, stimuli, voxel_chunk)
        write_per_voxel(
            tmp,
            {
                "r2": (r2_sum / len(per_run)).astype(np.float32),
                **{name: v for name, (_, v) in noise_ceiling_vars(ncsnr).items()},
            },
        )
        close_store(tmp)
    return Path(out_path)
