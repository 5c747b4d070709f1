"""GLMsingle betas of one subject: ``preproc.zarr`` in, ``betas.zarr`` out (atomic)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from brainpipe.betas.lsa import censored_scans, roi_membership, voxel_ijk, zscore_by_session
from brainpipe.bids import BidsLayout, RunKey, read_events
from brainpipe.errors import BrainpipeInputError
from brainpipe.glmsingle.chunking import bytes_per_voxel, voxel_chunk_for_memory
from brainpipe.glmsingle.estimator import GLMSingle, GLMSingleOptions, RunSpec, check_types
from brainpipe.glmsingle.library import DEFAULT_TABLE, n_hrfs, read_hrf_library
from brainpipe.metrics import ncsnr_from_repeats, noise_ceiling
from brainpipe.storage import (
    atomic_path,
    open_zarr,
    portable_strings,
    provenance_attrs,
    quiet_consolidated,
)

log = logging.getLogger(__name__)


def options_from_config(
    betas_cfg: dict[str, Any] | None, root: Path | None = None
) -> GLMSingleOptions:
    """:class:`GLMSingleOptions` from the config's ``betas`` block.

    ``hrf_library`` is a path (relative to ``root`` or the working directory);
    unset means ``config/hrf_library.tsv`` shipped with brainpipe.
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
    for key in (
        "n_pcs",
        "noise_pool_quantile",
        "max_pool_voxels",
        "cv_voxels",
        "pc_stop",
        "ridge_cv",
    ):
        if key in cfg:
            kw[key] = cfg[key]
    if "fractions" in cfg:
        kw["fractions"] = tuple(float(f) for f in cfg["fractions"])
    return GLMSingleOptions(**kw)


def estimate_subject_betas_glmsingle(
    preproc_path: str | Path,
    layout: BidsLayout,
    subject: str,
    runs: list[RunKey],
    out_path: str | Path,
    voxel_chunk: int = 4096,
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
    roi_coords = {
        f"roi_{name}": ("voxel", member)
        for name, member in roi_membership(
            layout, subject, layout.available_rois(subject), voxel_ijk(preproc)
        ).items()
    }
    per_voxel_vars = {
        "r2": np.float32,
        "hrf_index": np.int16,
        "n_noise_components": np.int16,
        "ridge_fraction": np.float32,
        "ncsnr": np.float32,
        "nc_1trial": np.float32,
        "nc_3trial": np.float32,
    }
    template = xr.Dataset(
        {
            "betas": (
                ("trial", "voxel"),
                da.zeros(
                    (n_trials, n_voxels), dtype=np.float32, chunks=(max(ses_trials), voxel_chunk)
                ),
            ),
            **{
                name: ("voxel", da.zeros(n_voxels, dtype=dt, chunks=voxel_chunk))
                for name, dt in per_voxel_vars.items()
            },
        },
        coords={
            "stimulus": ("trial", np.concatenate([s.stimuli for s in specs])),
            "session": ("trial", trial_session),
            "run": ("trial", np.concatenate([np.full(len(s.onsets), s.run) for s in specs])),
            "onset": ("trial", np.concatenate([s.onsets for s in specs])),
            **{c: ("voxel", preproc[c].values) for c in ("i", "j", "k", "x", "y", "z")},
            **roi_coords,
        },
        attrs={
            **{k: preproc.attrs[k] for k in ("subject", "affine", "volume_shape", "space", "tr")},
            "units": "percent signal change",
            "method": "glmsingle",
            "glmsingle_type": opts.types[-1],
            "glmsingle_types": list(opts.types),
            "hrf_library": opts.hrf_library.to_dict(orient="list"),
            "stage": "betas",
            **provenance_attrs(config),
        },
    )
    bold = zarr.open_group(str(preproc_path), mode="r")["bold"]

    def read(ts: slice, vs: slice | np.ndarray) -> np.ndarray:
        block = np.asarray(bold[ts, vs], dtype=np.float32)
        # censored volumes are NaN in preproc.zarr; their spike regressors remove them
        # from every fit, so any finite value stands in for them
        block[censored[ts]] = 0.0
        return block

    with (
        atomic_path(out_path) as tmp,
        quiet_consolidated(),
        threadpool_limits(limits=max(1, threads)),
    ):
        try:
            import torch

            torch.set_num_threads(max(1, threads))
        except ImportError:  # pragma: no cover
            pass
        portable_strings(template).to_zarr(
            tmp, mode="w", compute=False, zarr_format=3, consolidated=True
        )
        group = zarr.open_group(str(tmp), mode="r+")
        betas_arr = group["betas"]

        def write(trials: slice, vs: slice, block: np.ndarray) -> None:
            betas_arr[trials, vs] = block

        model = GLMSingle(specs, tr, n_voxels, opts, backend=backend, chunk=chunk, threads=threads)
        log.info("backend %s", model.xp.name)
        result = model.fit(read, write)
        stimuli = template["stimulus"].values.astype(str)
        ncsnr = np.zeros(n_voxels, dtype=np.float32)
        try:
            for v0 in range(0, n_voxels, chunk):
                vs = slice(v0, min(v0 + chunk, n_voxels))
                block = np.asarray(betas_arr[:, vs])
                ncsnr[vs] = ncsnr_from_repeats(zscore_by_session(block, trial_session), stimuli)
        except ValueError as err:
            msg = f"noise ceiling not estimated: {err}"
            log.warning(msg)
            result.notes.append(msg)
            ncsnr[:] = np.nan
        ncsnr[~result.valid] = 0.0
        outputs = {
            "r2": result.r2,
            "hrf_index": result.hrf_index,
            "n_noise_components": result.n_noise_components,
            "ridge_fraction": result.ridge_fraction,
            "ncsnr": ncsnr,
            "nc_1trial": noise_ceiling(np.nan_to_num(ncsnr, nan=0.0), 1).astype(np.float32),
            "nc_3trial": noise_ceiling(np.nan_to_num(ncsnr, nan=0.0), 3).astype(np.float32),
        }
        if np.isnan(ncsnr).any():
            outputs["nc_1trial"][np.isnan(ncsnr)] = np.nan
            outputs["nc_3trial"][np.isnan(ncsnr)] = np.nan
        for name, values in outputs.items():
            group[name][:] = values.astype(per_voxel_vars[name])
        group.attrs.update(
            {
                "n_noise_components_per_session": result.n_pcs_per_session,
                "notes": result.notes,
                "backend": model.xp.name,
                "voxel_chunk_compute": chunk,
            }
        )
        zarr.consolidate_metadata(str(tmp))
        for note in result.notes:
            log.info("note: %s", note)
    return Path(out_path)
