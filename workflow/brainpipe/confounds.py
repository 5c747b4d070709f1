"""Confound regression from fMRIPrep's confounds file, with nilearn's denoising strategies.

The config's ``preprocess.confounds`` block names a strategy the way researchers already
do with nilearn (:func:`nilearn.interfaces.fmriprep.load_confounds` and
:func:`~nilearn.interfaces.fmriprep.load_confounds_strategy`):

- ``{preset: simple}`` (or ``scrubbing``, ``compcor``, ``ica_aroma``) plus that preset's
  keyword arguments, passed to ``load_confounds_strategy``;
- ``{strategy: [motion, wm_csf, compcor, scrub, high_pass, ...]}`` plus keyword
  arguments (``motion: full``, ``fd_threshold: 0.5``, ``n_compcor: 5``, ...), passed to
  ``load_confounds``.

nilearn finds each run's ``*_desc-confounds_timeseries.tsv`` from the run's fMRIPrep file
name (the data folder keeps a link under that name, see
:mod:`brainpipe.datasets.fmriprep`). Scrubbing gives a sample mask: the censored volumes
are interpolated before the run is filtered (so a spike does not spread), the confounds
are fitted on the kept volumes only, and the censored volumes are marked in
``preproc.zarr``'s ``sample_mask(time)`` so the betas stage drops them from the design.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nilearn import signal

from brainpipe.errors import BrainpipeInputError

#: Components ``load_confounds`` accepts in ``strategy``.
STRATEGY_COMPONENTS = (
    "motion", "wm_csf", "global_signal", "compcor", "ica_aroma", "scrub", "high_pass",
    "non_steady_state", "tedana",
)  # fmt: skip
#: Presets of ``load_confounds_strategy``.
PRESETS = ("simple", "scrubbing", "compcor", "ica_aroma")
#: Keyword arguments both functions take.
KWARGS = (
    "motion", "scrub", "fd_threshold", "std_dvars_threshold", "wm_csf", "global_signal",
    "compcor", "n_compcor", "ica_aroma", "demean",
)  # fmt: skip


@dataclass(frozen=True)
class RunConfounds:
    """One run's confound regressors and the volumes they keep.

    Attributes
    ----------
    regressors : numpy.ndarray, shape (n_scans, n_confounds)
        Confounds for every volume (zero columns for none).
    keep : numpy.ndarray of bool, shape (n_scans,)
        False for the volumes scrubbing (or non-steady-state removal) censors.
    names : list of str
        The columns of ``regressors``.
    source : str
        The confounds file read.
    """

    regressors: np.ndarray
    keep: np.ndarray
    names: list[str]
    source: str


def check_confounds_config(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate ``preprocess.confounds``; None or ``{}`` means no confound regression."""
    if not cfg:
        return None
    where = "config"
    if not isinstance(cfg, dict):
        raise BrainpipeInputError(where, "preprocess.confounds", f"expected a mapping, got {cfg!r}")
    unknown = sorted(set(cfg) - {"preset", "strategy", *KWARGS})
    if unknown:
        raise BrainpipeInputError(
            where,
            f"preprocess.confounds.{unknown[0]}",
            f"unknown key (known: preset, strategy, {', '.join(KWARGS)})",
        )
    if ("preset" in cfg) == ("strategy" in cfg):
        raise BrainpipeInputError(
            where, "preprocess.confounds", "give exactly one of 'preset' (load_confounds_strategy) "
            "or 'strategy' (load_confounds)",
        )  # fmt: skip
    if "preset" in cfg and cfg["preset"] not in PRESETS:
        raise BrainpipeInputError(
            where,
            "preprocess.confounds.preset",
            f"got {cfg['preset']!r}, expected one of {list(PRESETS)}",
        )
    if "strategy" in cfg:
        bad = [s for s in cfg["strategy"] if s not in STRATEGY_COMPONENTS]
        if bad or not cfg["strategy"]:
            raise BrainpipeInputError(
                where, "preprocess.confounds.strategy",
                f"got {cfg['strategy']!r}, expected a list of {list(STRATEGY_COMPONENTS)}",
            )  # fmt: skip
    return dict(cfg)


def fmriprep_image(bold: str | Path) -> Path:
    """The run's file under its fMRIPrep name (``*_desc-preproc_bold.nii.gz``) next to ``bold``."""
    bold = Path(bold)
    if bold.name.endswith("_desc-preproc_bold.nii.gz"):
        return bold
    stem = bold.name[: -len("_bold.nii.gz")]
    found = sorted(bold.parent.glob(f"{stem}_*desc-preproc_bold.nii.gz"))
    if len(found) != 1:
        raise BrainpipeInputError(
            bold, "<file>", "confound regression needs the run's fMRIPrep preprocessed BOLD "
            f"({stem}_space-*_desc-preproc_bold.nii.gz) beside it; found {[p.name for p in found]} "
            "(is this an fMRIPrep dataset, registry kind 'bids'?)",
        )  # fmt: skip
    return found[0]


def load_run_confounds(
    bold: str | Path | list[Path], cfg: dict[str, Any], n_scans: int
) -> RunConfounds:
    """Read a run's confounds with nilearn and the configured strategy.

    Parameters
    ----------
    bold : path or list of path
        The run's BOLD in the data folder (its fMRIPrep-named sibling is what nilearn reads),
        or on a surface the pair of hemisphere ``*_bold.func.gii`` files (fMRIPrep's names).
    cfg : dict
        A checked ``preprocess.confounds`` block (:func:`check_confounds_config`).
    n_scans : int
        Volumes of the run; the confounds file must have as many rows.

    Raises
    ------
    BrainpipeInputError
        The confounds file is missing, lacks a column the strategy needs, or its length
        differs from the run's.
    """
    from nilearn.interfaces.fmriprep import load_confounds, load_confounds_strategy
    from nilearn.interfaces.fmriprep.load_confounds_utils import MissingConfoundError

    if isinstance(bold, list | tuple):  # a surface run: both hemispheres' func.gii, as nilearn
        img: Any = [str(p) for p in bold]  # takes them (a pair of paths)
        first = Path(bold[0])
    else:
        img = fmriprep_image(bold)
        first = img
    conf_file = first.parent / (
        first.name.split("_hemi-")[0].split("_space-")[0].split("_desc-")[0]
        + "_desc-confounds_timeseries.tsv"
    )
    kwargs = {k: cfg[k] for k in KWARGS if k in cfg}
    try:
        if "preset" in cfg:
            frame, sample_mask = load_confounds_strategy(
                img if isinstance(img, list) else str(img), denoise_strategy=cfg["preset"], **kwargs
            )
        else:
            frame, sample_mask = load_confounds(
                img if isinstance(img, list) else str(img),
                strategy=tuple(cfg["strategy"]),
                **kwargs,
            )
    except (
        ValueError,
        FileNotFoundError,
        KeyError,
        MissingConfoundError,
    ) as err:  # nilearn's, given their file
        text = str(err).strip("'\"")
        field = "<file>" if "confound file" in text else "columns"
        raise BrainpipeInputError(conf_file, field, f"nilearn load_confounds: {text}") from err
    regressors = (
        np.asarray(frame, dtype=np.float64) if frame is not None else np.zeros((n_scans, 0))
    )
    if regressors.shape[0] != n_scans:
        raise BrainpipeInputError(
            conf_file, "rows", f"{regressors.shape[0]} rows but the run has {n_scans} volumes"
        )
    keep = np.ones(n_scans, dtype=bool)
    if sample_mask is not None:
        keep[:] = False
        keep[np.asarray(sample_mask, dtype=int)] = True
    if keep.sum() < 3:
        raise BrainpipeInputError(
            conf_file,
            "framewise_displacement",
            f"scrubbing keeps only {int(keep.sum())} of {n_scans} volumes",
        )
    names = [str(c) for c in frame.columns] if frame is not None else []
    return RunConfounds(np.nan_to_num(regressors), keep, names, str(conf_file))


def interpolate_censored(data: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Replace censored volumes by linear interpolation between the kept ones (per voxel).

    Done before detrending and filtering, so a censored spike does not leak into its
    neighbours through the high-pass filter (nilearn's ``signal.clean`` does the same
    with a spline when filtering with a sample mask).
    """
    if keep.all():
        return data
    out = np.array(data, dtype=np.float32, copy=True)
    kept, cens = np.flatnonzero(keep), np.flatnonzero(~keep)
    right = np.clip(np.searchsorted(kept, cens), 0, len(kept) - 1)
    left = np.clip(np.searchsorted(kept, cens) - 1, 0, len(kept) - 1)
    t_left, t_right = kept[left], kept[right]
    span = np.where(t_right == t_left, 1, t_right - t_left)
    w = np.where(t_right == t_left, 0.0, (cens - t_left) / span).astype(np.float32)[:, None]
    out[cens] = (1.0 - w) * out[t_left] + w * out[t_right]
    return out


def regress_confounds(
    psc: np.ndarray,
    conf: RunConfounds,
    tr: float,
    detrend: bool = True,
    high_pass_hz: float | None = 0.01,
) -> np.ndarray:
    """Remove the confounds from an already cleaned run; censored volumes become 0.

    The confounds get the same detrending and high-pass as the data (as nilearn's
    ``signal.clean`` does), then are fitted by least squares on the kept volumes only.

    Parameters
    ----------
    psc : numpy.ndarray, shape (n_scans, n_voxels)
        The run after :func:`brainpipe.preprocess.clean_run`.
    conf : RunConfounds
    tr : float
        Repetition time in seconds.
    detrend, high_pass_hz
        What ``clean_run`` applied to ``psc``.

    Returns
    -------
    numpy.ndarray, shape (n_scans, n_voxels), float32
    """
    out = np.asarray(psc, dtype=np.float32).copy()
    keep = conf.keep
    if conf.regressors.shape[1]:
        c = interpolate_censored(conf.regressors.astype(np.float32), keep).astype(np.float64)
        c = signal.clean(c, detrend=detrend, standardize=None, filter=False, t_r=tr)
        if high_pass_hz:
            c = signal.butterworth(c, 1.0 / tr, high_pass=high_pass_hz, copy=True)
        c = c[:, np.abs(c[keep]).max(axis=0) > 1e-12] if keep.any() else c
        if c.shape[1]:
            coef, *_ = np.linalg.lstsq(c[keep], out[keep].astype(np.float64), rcond=None)
            out -= (c @ coef).astype(np.float32)
    out[~keep] = 0.0
    return out


def confounds_for_runs(
    layout: Any, runs: list[Any], n_scans: list[int], cfg: dict[str, Any] | None
) -> list[RunConfounds | None]:
    """Every run's confounds (None per run without confound regression), all checked first."""
    cfg = check_confounds_config(cfg)
    if cfg is None:
        return [None] * len(runs)
    surface = getattr(layout, "surface_space", None)
    return [
        load_run_confounds(
            [layout.surface_bold(k, h) for h in ("L", "R")] if surface else layout.bold(k), cfg, n
        )
        for k, n in zip(runs, n_scans, strict=True)
    ]
