"""fMRI preprocessing with nilearn: mask, detrend, high-pass, percent signal change per run.

The output is one store per subject, ``preproc.zarr``, holding
``bold(time, voxel)`` in percent signal change with every run stacked along
``time`` and labelled by ``session``, ``run`` and ``scan`` coords. Runs are
processed and appended one at a time, so memory holds one run.

A surface dataset (fMRIPrep's fsaverage GIFTI runs, :attr:`BidsLayout.surface_space`) is
cleaned the same way; its ``voxel`` axis is then every vertex of both hemispheres (left
first) with coords ``hemi`` and ``vertex`` instead of ``i, j, k, x, y, z``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.array as da
import nibabel as nib
import numpy as np
import xarray as xr
from nilearn import masking, signal
from tqdm.auto import tqdm

from brainpipe.bids import BidsLayout, RunKey, read_tr
from brainpipe.config import VOXEL_CHUNK
from brainpipe.confounds import (
    confounds_for_runs,
    interpolate_censored,
    regress_confounds,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import atomic_path, portable_strings, provenance_attrs, quiet_consolidated

log = logging.getLogger(__name__)


def voxel_coords(mask: np.ndarray, affine: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """Volume indices and mm coordinates of the voxels of ``mask``, in C order."""
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(affine, ijk)
    coords = {name: ("voxel", ijk[:, n].astype(np.int32)) for n, name in enumerate("ijk")}
    coords.update({name: ("voxel", xyz[:, n].astype(np.float32)) for n, name in enumerate("xyz")})
    return coords


def _interpolate_censored(data: np.ndarray, censored: np.ndarray) -> np.ndarray:
    """Censored rows replaced by linear interpolation between the nearest kept rows.

    Only so that detrending and filtering see a continuous series; the interpolated
    rows are never stored (they become NaN) and never enter a fit.
    """
    kept = np.flatnonzero(~censored)
    out = data.copy()
    for row in np.flatnonzero(censored):
        after = np.searchsorted(kept, row)
        prev = kept[after - 1] if after > 0 else None
        nxt = kept[after] if after < len(kept) else None
        if prev is None or nxt is None:
            out[row] = data[nxt if prev is None else prev]
        else:
            w = (row - prev) / (nxt - prev)
            out[row] = (1.0 - w) * data[prev] + w * data[nxt]
    return out


def clean_run(
    data: np.ndarray,
    tr: float,
    detrend: bool = True,
    high_pass_hz: float | None = 0.01,
    censored: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Detrend, high-pass and convert one run to percent signal change.

    The input policy (docs/input-policy.md): a volume with a non-finite sample is
    *censored*: it is left out of the voxel means, bridged by linear interpolation
    only while detrending and filtering, and returned as NaN so that the betas stage
    drops it from the design. Nothing is ever set to 0. Dead voxels (constant, all
    zero, or mostly non-finite) are dropped before this function by
    :func:`preprocess_subject`; a voxel whose mean intensity is not positive cannot be
    expressed in percent signal change and is returned as NaN.

    Parameters
    ----------
    data : numpy.ndarray, shape (n_scans, n_voxels)
        Raw intensities of the brain voxels.
    tr : float
        Repetition time in seconds.
    detrend : bool
        Remove a linear trend.
    high_pass_hz : float or None
        Butterworth high-pass cut-off in Hz.
    censored : numpy.ndarray of bool, shape (n_scans,), optional
        Volumes to censor. Volumes with any non-finite sample are always censored.

    Returns
    -------
    psc : numpy.ndarray, shape (n_scans, n_voxels), float32
        The cleaned signal as a percentage of each voxel's mean intensity; NaN in
        censored volumes and in voxels with a non-positive mean.
    mean : numpy.ndarray, shape (n_voxels,), float32
        Each voxel's mean intensity over the kept volumes.

    Raises
    ------
    ValueError
        If every volume is censored.
    """
    data = np.asarray(data, dtype=np.float32)
    bad_rows = ~np.isfinite(data).all(axis=1)
    censored = bad_rows if censored is None else (np.asarray(censored, bool) | bad_rows)
    if censored.all():
        raise ValueError(f"every one of the {len(censored)} volumes is censored")
    if censored.any():
        data = _interpolate_censored(data, censored)
    mean = data[~censored].mean(axis=0)
    cleaned = signal.clean(data, detrend=detrend, standardize=None, filter=False, t_r=tr)
    if high_pass_hz:
        # nilearn's Butterworth filter, applied to all voxels at once: signal.clean
        # filters voxel by voxel, ~40x slower on a whole brain.
        cleaned = signal.butterworth(cleaned, 1.0 / tr, high_pass=high_pass_hz, copy=True)
    valid = np.isfinite(mean) & (mean > 0)
    psc = np.full(cleaned.shape, np.nan, dtype=np.float32)
    psc[:, valid] = 100.0 * cleaned[:, valid] / mean[valid]
    psc[censored] = np.nan
    return psc, mean.astype(np.float32)


def preprocess_subject(
    layout: BidsLayout,
    subject: str,
    runs: list[RunKey],
    out_path: str | Path,
    detrend: bool = True,
    high_pass_hz: float | None = 0.01,
    smoothing_fwhm_mm: float | None = None,
    config: dict[str, Any] | None = None,
    confounds: dict[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Preprocess every run of a subject into ``preproc.zarr`` (atomic).

    Parameters
    ----------
    layout : BidsLayout
        Where the dataset's files are.
    subject : str
        Subject label (without ``sub-``).
    runs : list of RunKey
        Runs to process, in acquisition order.
    out_path : path
        Store to write.
    detrend, high_pass_hz : see :func:`clean_run`.
    smoothing_fwhm_mm : float or None
        Optional spatial smoothing before masking.
    config : dict, optional
        Workflow config, hashed into the store's attrs.
    confounds : dict, optional
        The config's ``preprocess.confounds`` block: regress fMRIPrep confounds with a
        nilearn strategy (:mod:`brainpipe.confounds`); censored volumes are False in the
        store's ``sample_mask(time)``.
    manifest : mapping, optional
        The subject's manifest from :func:`brainpipe.validation.validate_subject`: its
        ``dead_voxels`` (mask-order indices) are dropped and each run's
        ``censored_scans`` censored. Without it the same policy is computed here (one
        extra read of every run).

    Notes
    -----
    The input policy (docs/input-policy.md) is recorded in the store: voxels dropped
    as dead are absent from the ``voxel`` axis and listed in the attrs
    ``dropped_voxels_ijk`` / ``n_dropped_voxels``; censored volumes keep their place on
    the ``time`` axis with ``bold`` = NaN and coord ``censored(time)`` = True
    (attr ``n_censored_volumes``). Both are logged as warnings.
    """
    geo = _surface(layout, runs) if layout.surface_space else _volume(layout, subject, runs)
    read_run = geo["read"]
    if layout.surface_space and smoothing_fwhm_mm:
        log.warning("preprocess.smoothing_fwhm_mm is not applied on a surface (%s)", geo["space"])
    if manifest is None:
        manifest = _policy_from_data(runs, read_run, geo["n_total"])
    dead = np.zeros(geo["n_total"], dtype=bool)
    dead[np.asarray(manifest.get("dead_voxels", []), dtype=int)] = True
    censored_by_run = {
        (str(r["session"]), str(r["run"])): r.get("censored_scans", [])
        for r in manifest.get("runs", [])
    }
    keep = ~dead
    n_voxels = int(keep.sum())
    coords = {name: (dim, values[keep]) for name, (dim, values) in geo["coords"].items()}
    if dead.any():
        log.warning(
            "sub-%s: dropped %d of %d brain voxels as dead (constant, all zero or mostly "
            "non-finite in some run); see attrs %s",
            subject,
            int(dead.sum()),
            dead.size,
            ", ".join(geo["dropped"](dead)),
        )
    # Lay the whole store out first (lengths come from the file headers), then
    # fill it run by run, so memory never holds more than one run.
    n_scans = geo["n_scans"]
    # Every run's confounds are read (and checked) before any run is processed.
    run_confounds = confounds_for_runs(layout, runs, n_scans, confounds)
    starts = np.concatenate([[0], np.cumsum(n_scans)])
    censored = np.zeros(int(starts[-1]), dtype=bool)
    for n, key in enumerate(runs):
        scans = np.asarray(censored_by_run.get((str(key.session), str(key.run)), []), dtype=int)
        censored[starts[n] + scans] = True
        if len(scans):
            log.warning(
                "sub-%s %s: censored %d of %d volumes with non-finite samples (scans %s)",
                subject,
                key,
                len(scans),
                n_scans[n],
                scans.tolist(),
            )
    template = xr.Dataset(
        {
            "bold": (
                ("time", "voxel"),
                da.zeros((starts[-1], n_voxels), dtype=np.float32, chunks=(256, VOXEL_CHUNK)),
            ),
            "mean_intensity": (
                ("run_index", "voxel"),
                da.zeros((len(runs), n_voxels), dtype=np.float32, chunks=(1, VOXEL_CHUNK)),
            ),
            "sample_mask": (
                "time",
                np.concatenate(
                    [
                        c.keep if c else np.ones(n, bool)
                        for c, n in zip(run_confounds, n_scans, strict=True)
                    ]
                ),
            ),
        },
        coords={
            "session": ("time", np.repeat([k.session for k in runs], n_scans)),
            "run": ("time", np.repeat([k.run for k in runs], n_scans)),
            "scan": ("time", np.concatenate([np.arange(n, dtype=np.int32) for n in n_scans])),
            "censored": ("time", censored),
            "run_session": ("run_index", [k.session for k in runs]),
            "run_label": ("run_index", [k.run for k in runs]),
            **coords,
        },
        attrs={
            "subject": subject,
            "tr": read_tr(layout.sidecar(runs[0])),
            "units": "percent signal change",
            **geo["attrs"],
            "stage": "preprocess",
            "input_policy": "censor non-finite volumes (NaN, left out of fits); drop dead voxels",
            "n_censored_volumes": int(censored.sum()),
            "n_dropped_voxels": int(dead.sum()),
            **geo["dropped"](dead),
            **provenance_attrs(config),
        },
    )
    with atomic_path(out_path) as tmp, quiet_consolidated():
        portable_strings(template).to_zarr(
            tmp, mode="w", compute=False, zarr_format=3, consolidated=True
        )
        for n, key in enumerate(tqdm(runs, desc=f"preprocess sub-{subject}", unit="run")):
            tr = read_tr(layout.sidecar(key))
            data = read_run(key, smoothing_fwhm_mm)
            conf = run_confounds[n]
            data = data[:, keep]
            if conf is not None:
                data = interpolate_censored(data, conf.keep)
            run_censored = censored[starts[n] : starts[n + 1]]
            psc, mean = clean_run(
                data, tr, detrend=detrend, high_pass_hz=high_pass_hz, censored=run_censored
            )
            unexpected = ~np.isfinite(psc[~run_censored])
            if unexpected.any():
                raise BrainpipeInputError(
                    geo["file"](key),
                    "<data>",
                    f"{int(unexpected.any(axis=0).sum())} voxels have non-finite samples or a "
                    "non-positive mean that the subject's manifest did not report; rerun "
                    "validate_inputs",
                )
            if conf is not None:
                # censored volumes (NaN) stand at 0 for the regression, then NaN again
                psc = np.where(run_censored[:, None], np.float32(0.0), psc)
                psc = regress_confounds(psc, conf, tr, detrend=detrend, high_pass_hz=high_pass_hz)
                psc[run_censored] = np.nan
            region = xr.Dataset(
                {
                    "bold": (("time", "voxel"), psc),
                    "mean_intensity": (("run_index", "voxel"), mean[None, :]),
                }
            )
            region["bold"].to_dataset().to_zarr(
                tmp, region={"time": slice(starts[n], starts[n + 1]), "voxel": slice(None)}
            )
            region["mean_intensity"].to_dataset().to_zarr(
                tmp, region={"run_index": slice(n, n + 1), "voxel": slice(None)}
            )
            log.info("sub-%s %s: %d scans x %d voxels", subject, key, psc.shape[0], n_voxels)
    return Path(out_path)


def _volume(layout: BidsLayout, subject: str, runs: list[RunKey]) -> dict[str, Any]:
    """A volume dataset's geometry: the brain mask's voxels, their coords, run reader."""
    mask_img = nib.load(layout.brain_mask(subject))
    mask = np.asarray(mask_img.dataobj) > 0
    ijk_all = np.argwhere(mask)

    def read(key: RunKey, smoothing_fwhm_mm: float | None = None) -> np.ndarray:
        return masking.apply_mask(
            layout.bold(key), mask_img, smoothing_fwhm=smoothing_fwhm_mm, ensure_finite=False
        )

    return {
        "n_total": int(mask.sum()),
        "coords": voxel_coords(mask, mask_img.affine),
        "n_scans": [int(nib.load(layout.bold(key)).shape[3]) for key in runs],
        "read": read,
        "file": layout.bold,
        "space": "func",
        "attrs": {
            "affine": mask_img.affine.tolist(),
            "volume_shape": list(mask.shape),
            "space": "func",
        },
        "dropped": lambda dead: {"dropped_voxels_ijk": ijk_all[dead].tolist()},
    }


def _surface(layout: BidsLayout, runs: list[RunKey]) -> dict[str, Any]:
    """A surface dataset's geometry: every vertex of both hemispheres (left first), their
    ``hemi``/``vertex`` coords (as NSD's fsaverage stores), run reader (GIFTI)."""
    from brainpipe.surface import (
        FSAVERAGE_VERTICES,
        HEMIS,
        gifti_header,
        load_gifti_series,
        vertex_coords,
    )

    space = str(layout.surface_space)
    n_vertices = {fs: FSAVERAGE_VERTICES[space] for fs in HEMIS.values()}
    where = vertex_coords(n_vertices)

    def read(key: RunKey, smoothing_fwhm_mm: float | None = None) -> np.ndarray:
        return np.concatenate(
            [load_gifti_series(layout.surface_bold(key, h), f"{h} hemisphere") for h in HEMIS],
            axis=1,
        )

    return {
        "n_total": int(sum(n_vertices.values())),
        "coords": {name: ("voxel", values) for name, values in where.items()},
        "n_scans": [gifti_header(layout.surface_bold(key, "L"))[0] for key in runs],
        "read": read,
        "file": lambda key: layout.surface_bold(key, "L"),
        "space": space,
        "attrs": {"space": space, "surface": space, "n_vertices": n_vertices},
        "dropped": lambda dead: {
            "dropped_vertices": [
                [str(h), int(v)]
                for h, v in zip(where["hemi"][dead], where["vertex"][dead], strict=True)
            ]
        },  # fmt: skip
    }


def _policy_from_data(runs: list[RunKey], read: Any, n_total: int) -> dict[str, Any]:
    """Dead voxels and censored volumes of every run (what the manifest records)."""
    from brainpipe.validation import usable_samples

    dead = np.zeros(n_total, dtype=bool)
    per_run = []
    for key in runs:
        policy = usable_samples(np.asarray(read(key), dtype=np.float32))
        dead |= policy["dead"]
        per_run.append(
            {
                "session": key.session,
                "run": key.run,
                "censored_scans": np.flatnonzero(policy["censored"]).tolist(),
            }
        )
    return {"dead_voxels": np.flatnonzero(dead).tolist(), "runs": per_run}
