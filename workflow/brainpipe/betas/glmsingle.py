"""GLMsingle betas of one subject: ``preproc.zarr`` in, ``betas.zarr`` out (atomic)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import zarr

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
from brainpipe.errors import BrainpipeInputError
from brainpipe.glmsingle.chunking import bytes_per_voxel, voxel_chunk_for_memory
from brainpipe.glmsingle.estimator import (
    GLMSingle,
    GLMSingleOptions,
    RunSpec,
    check_types,
    session_psc_reader,
)
from brainpipe.glmsingle.library import (
    ASSUMED_NAMES,
    DEFAULT_TABLE,
    n_hrfs,
    read_assumed_hrf,
    read_hrf_library,
)
from brainpipe.storage import atomic_path, open_zarr

log = logging.getLogger(__name__)


def options_from_config(
    betas_cfg: dict[str, Any] | None, root: Path | None = None
) -> GLMSingleOptions:
    """:class:`GLMSingleOptions` from the config's ``betas`` block.

    ``hrf_library`` is a path (relative to ``root`` or the working directory);
    unset means ``config/hrf_library.tsv`` shipped with brainpipe. ``assumed_hrf``
    (type A's HRF) is ``glmsingle`` (unset), ``spm`` or such a path to a one-HRF table.
    """
    cfg = dict(betas_cfg or {})
    types = check_types(cfg.get("types", ["A", "B", "C", "D"]))
    table_path = cfg.get("hrf_library")
    if table_path is None:
        table = read_hrf_library(DEFAULT_TABLE if DEFAULT_TABLE.exists() else None)
    else:
        p = Path(table_path)
        if not p.is_absolute() and root is not None and not p.exists():
            p = root / p
        if not p.exists():
            raise BrainpipeInputError(str(p), "betas.hrf_library", "file not found")
        table = read_hrf_library(p)
    kw: dict[str, Any] = {"types": types, "hrf_library": table}
    assumed = cfg.get("assumed_hrf")
    if assumed is not None and str(assumed) not in ASSUMED_NAMES:
        p = Path(assumed)
        if not p.is_absolute() and root is not None and not p.exists():
            p = root / p
        if not p.exists():
            raise BrainpipeInputError(
                str(p), "betas.assumed_hrf", f"file not found (or one of {list(ASSUMED_NAMES)})"
            )
        assumed = p
    kw["assumed_hrf"] = read_assumed_hrf(assumed)
    for key in (
        "n_pcs",
        "noise_pool_quantile",
        "max_pool_voxels",
        "cv_voxels",
        "pc_stop",
        "ridge_cv",
        "pc_cv",
        "noise_pool",
    ):
        if key in cfg:
            kw[key] = cfg[key]
    if "fractions" in cfg:
        kw["fractions"] = tuple(float(f) for f in cfg["fractions"])
    return GLMSingleOptions(**kw)


def _session_scaled(read, preproc, preproc_path, specs: list[RunSpec]):
    """``read`` in % of each session's mean intensity (GLMsingle's units), not each run's.

    Uses preproc.zarr's ``mean_intensity(run_index, voxel)``
    (:func:`~brainpipe.glmsingle.estimator.session_psc_reader`); a store without
    it (or without one of the runs) is read as it is, in % of each run's mean.
    """
    if "mean_intensity" not in preproc or "run_session" not in preproc.coords:
        log.info("%s has no mean_intensity: betas in %% of each run's mean", preproc_path)
        return read
    index = {
        (str(s), str(r)): n
        for n, (s, r) in enumerate(
            zip(preproc["run_session"].values, preproc["run_label"].values, strict=True)
        )
    }
    rows = [index.get((spec.session, spec.run)) for spec in specs]
    if any(n is None for n in rows):
        log.info("%s lacks some runs' mean_intensity: betas in %% of each run's mean", preproc_path)
        return read
    means = zarr.open_group(str(preproc_path), mode="r")["mean_intensity"]
    return session_psc_reader(read, specs, lambda i, vs: np.asarray(means[rows[i], vs]))


def estimate_subject_betas_glmsingle(
    preproc_path: str | Path,
    layout: BidsLayout,
    subject: str,
    runs: list[RunKey],
    out_path: str | Path,
    voxel_chunk: int = VOXEL_CHUNK,
    config: dict[str, Any] | None = None,
    mem_mb: float = 4000,
    threads: int = 1,
) -> Path:
    """GLMsingle single-trial betas of a subject into ``betas.zarr`` (storage contract).

    Same layout as :func:`brainpipe.betas.lsa.estimate_subject_betas`, plus per-voxel
    ``n_noise_components`` (int16), ``ridge_fraction`` (float32; 1 = no ridge,
    NaN for unfitted voxels); ``r2`` is the type-A ON-OFF R² (fraction of the
    variance left after the polynomials); ``hrf_index`` is the row of the HRF
    library (``-1``: canonical HRF of type A, or a voxel with a zero or
    non-finite time series, whose betas are 0). attrs ``method = "glmsingle"``,
    ``glmsingle_type`` (the last type fitted), ``glmsingle_types``,
    ``n_noise_components_per_session``, ``hrf_library`` and ``notes`` (fallbacks).
    Betas are in % of each session's mean intensity, as GLMsingle's
    (``betas.psc_base: session``, the default), or of each run's (``run``).

    Parameters
    ----------
    mem_mb : float
        Memory budget of the job (the rule's ``resources.mem_mb``); sets the
        voxel chunk of the computation.
    threads : int
        Threads for BLAS / torch.
    """
    from threadpoolctl import threadpool_limits

    cfg_betas = (config or {}).get("betas", {})
    opts = options_from_config(cfg_betas)
    backend = cfg_betas.get("backend", "auto")
    preproc = open_zarr(preproc_path)
    tr = float(preproc.attrs["tr"])
    n_voxels = preproc.sizes["voxel"]
    t_session = preproc["session"].values.astype(str)
    t_run = preproc["run"].values.astype(str)
    censored = censored_scans(preproc)
    specs: list[RunSpec] = []
    for key in runs:
        events = read_events(layout.events(key))
        rows = np.flatnonzero((t_session == str(key.session)) & (t_run == str(key.run)))
        if len(rows) == 0 or rows[-1] - rows[0] + 1 != len(rows):
            raise BrainpipeInputError(
                str(preproc_path), "run", f"run {key} missing or not contiguous"
            )
        specs.append(
            RunSpec(
                session=str(key.session),
                run=str(key.run),
                start=int(rows[0]),
                stop=int(rows[-1]) + 1,
                onsets=events["onset"].to_numpy(float),
                durations=events["duration"].to_numpy(float),
                stimuli=events["stimulus"].to_numpy(str),
                censored=tuple(int(t) for t in np.flatnonzero(censored[rows])),  # within the run
            )
        )
    trial_session = np.concatenate([np.full(len(s.onsets), s.session) for s in specs])
    sessions = list(dict.fromkeys(trial_session))
    ses_scans = [sum(s.n_scans for s in specs if s.session == x) for x in sessions]
    ses_trials = [int((trial_session == x).sum()) for x in sessions]
    n_trials = len(trial_session)
    per_voxel = bytes_per_voxel(
        max(ses_scans),
        max(ses_trials),
        n_hrfs(opts.hrf_library),
        max(len(s.onsets) for s in specs),
        n_trials,
    )
    chunk = voxel_chunk_for_memory(mem_mb, per_voxel, align=voxel_chunk)
    log.info(
        "glmsingle sub-%s: types %s, %d voxels, %d trials, chunk %d voxels (mem_mb=%s)",
        subject,
        "".join(opts.types),
        n_voxels,
        n_trials,
        chunk,
        mem_mb,
    )
    store = layout_from_preproc(
        preproc,
        layout,
        subject,
        {
            "stimulus": np.concatenate([s.stimuli for s in specs]),
            "session": trial_session,
            "run": np.concatenate([np.full(len(s.onsets), s.run) for s in specs]),
            "onset": np.concatenate([s.onsets for s in specs]),
        },
        {
            "method": "glmsingle",
            "glmsingle_type": opts.types[-1],
            "glmsingle_types": list(opts.types),
            "hrf_library": opts.hrf_library.to_dict(orient="list"),
        },
        extra_vars={"n_noise_components": np.int16, "ridge_fraction": np.float32},
        config=config,
    )
    bold = zarr.open_group(str(preproc_path), mode="r")["bold"]

    def read(ts: slice, vs: slice | np.ndarray) -> np.ndarray:
        block = np.asarray(bold[ts, vs], dtype=np.float32)
        # censored volumes are NaN in preproc.zarr; their spike regressors remove them
        # from every fit, so any finite value stands in for them
        block[censored[ts]] = 0.0
        return block

    psc_base = cfg_betas.get("psc_base", "session")
    if psc_base not in ("session", "run"):
        raise BrainpipeInputError(
            "config", "betas.psc_base", f"got {psc_base!r}; expected 'session' or 'run'"
        )
    if psc_base == "session":
        read = _session_scaled(read, preproc, preproc_path, specs)

    with atomic_path(out_path) as tmp, threadpool_limits(limits=max(1, threads)):
        try:
            import torch

            torch.set_num_threads(max(1, threads))
        except ImportError:  # pragma: no cover
            pass
        betas_arr = store.write(tmp, (n_trials, n_voxels), (max(ses_trials), voxel_chunk))
        store.finish()

        def write(trials: slice, vs: slice, block: np.ndarray) -> None:
            betas_arr[trials, vs] = block

        model = GLMSingle(specs, tr, n_voxels, opts, backend=backend, chunk=chunk, threads=threads)
        log.info("backend %s", model.xp.name)
        result = model.fit(read, write)
        stimuli = store.coords["stimulus"][1].astype(str)
        try:
            ncsnr = ncsnr_of_store(betas_arr, trial_session, stimuli, chunk)
        except ValueError as err:
            msg = f"noise ceiling not estimated: {err}"
            log.warning(msg)
            result.notes.append(msg)
            ncsnr = np.full(n_voxels, np.nan, dtype=np.float32)
        ncsnr[~result.valid] = 0.0
        write_per_voxel(
            tmp,
            {
                "r2": result.r2,
                "hrf_index": result.hrf_index,
                "n_noise_components": result.n_noise_components,
                "ridge_fraction": result.ridge_fraction,
                **{name: v for name, (_, v) in noise_ceiling_vars(ncsnr).items()},
            },
        )
        zarr.open_group(str(tmp), mode="r+").attrs.update(
            {
                "n_noise_components_per_session": result.n_pcs_per_session,
                "notes": result.notes,
                "backend": model.xp.name,
                "voxel_chunk_compute": chunk,
            }
        )
        close_store(tmp)
        for note in result.notes:
            log.info("note: %s", note)
    return Path(out_path)
