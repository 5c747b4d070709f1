"""A small, NSD-like synthetic BIDS dataset, generated deterministically from a seed.

The dataset mimics the Natural Scenes Dataset at toy scale: several subjects with
different brain masks and ROIs (V1, V4, LOC) on a common MNI-aligned grid, images
seen by every subject (``shared``, each ``max_repeats`` times: the later test split)
and images unique to each subject, NSD-like timing (3 s on, 1 s off, blank slots,
onsets off the TR grid), voxel-varying HRFs from :mod:`brainpipe.hrf`, AR(1) noise,
slow drift and structured noise shared across voxels. Because the truth is known,
``derivatives/groundtruth`` lets every later stage be checked against it.

Model of the data
-----------------
For each subject, voxel ``v`` and trial ``t`` showing stimulus ``s``::

    stimulus_response[t, v] = offset[v] + response[s, :] @ mapping[:, v]
    amplitude[t, v]         = stimulus_response[t, v] + trial_noise_sd * N(0, 1)
    psc[:, v]  = trial_regressors(onsets, 3 s, n_scans, tr, hrf[hrf_index[v]]) @ amplitude[run, v]
                 + AR(1) noise (marginal sd noise_sd, coefficient ar1)
                 + drift (periods > 128 s, sd exactly drift_sd per voxel and run)
                 + structured noise (5 shared AR(1) time courses, loadings of norm
                   structured_noise_sd per voxel)
    bold[:, v] = baseline[v] * (1 + psc[:, v] / 100)

``response(stimulus, component)`` (``shared_responses.zarr``) has three blocks:
``lowlevel`` (a random projection of pooled edge energy of the image), ``colour``
(from the colour name) and ``category`` (from the category and superordinate
one-hots), each component z-scored across all stimuli. With ``response_prf > 0`` the
lowlevel block is spatially local instead: one component per position and channel of a
spatial map of the image, and each V1/V4 voxel's mapping confined to its own population
receptive field (:mod:`brainpipe.datasets.synthetic_prf`). V1 voxels load on lowlevel
only, V4 on lowlevel and colour, LOC on category and a little colour; voxels outside
the ROIs have zero mapping and zero offset (noise only). Each ROI voxel's mapping is
a smooth field plus independent noise (equal variances); the smooth field is a
topography shared by all subjects at the same template-space position (``tuning_shared``
of its variance, default 0.8) plus the subject's own smooth deviation, so anatomical
alignment carries signal and functional alignment can add to it (``tuning_shared`` 0:
each subject's own field, unrelated maps). The mapping is then
scaled so that the sd of its stimulus response across the subject's stimuli is
``signal_sd`` times a smooth gain ``exp(0.2 z)``; ROI voxels also carry a positive mean
evoked response ``offset`` of about ``signal_sd``, stored as ``response_offset(voxel)``.

Noise ceiling
-------------
``ncsnr = signal_sd_v / sqrt(trial_noise_sd**2 + m_v)`` where ``signal_sd_v`` is the sd
(ddof=0) of the voxel's stimulus response across the distinct stimuli the subject saw
and ``m_v`` is the measurement-noise variance of an LSA estimate (trial regressors with
the voxel's true HRF plus an intercept, per run) averaged over the subject's trials.
``m_v`` is computed exactly for AR(1) noise, ``diag(A Σ Aᵀ)`` with ``A = (XᵀX)⁻¹Xᵀ`` and
``Σ_ij = (noise_sd² + structured_noise_sd²) ar1^|i-j|``, i.e. the structured noise
is counted as AR(1) noise of the same coefficient. Drift is treated as removed by
high-pass filtering and is not counted. ``noise_ceiling = 100 ncsnr² / (ncsnr² + 1)``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image
from scipy import ndimage
from scipy.signal import lfilter
from threadpoolctl import threadpool_limits

from brainpipe import __version__
from brainpipe.datasets import synthetic_prf, synthetic_stimuli
from brainpipe.design import FINE_DT, trial_regressors
from brainpipe.errors import BrainpipeInputError
from brainpipe.hrf import hrf_library, hrf_library_parameters
from brainpipe.storage import open_zarr, provenance_attrs, write_zarr

#: ROI names, in the order they are written.
ROI_NAMES: tuple[str, ...] = ("V1", "V4", "LOC")
#: Blocks of the shared response space and their number of components.
COMPONENT_BLOCKS: dict[str, int] = {"lowlevel": 12, "colour": 4, "category": 8}
#: BIDS task label.
TASK = "images"
#: BIDS space label of every image.
SPACE = "synth"
#: Stimulus duration and slot length (stimulus + gap), seconds, as in NSD.
STIM_DURATION_S = 3.0
SLOT_S = 4.0
#: Rest after the last slot, seconds.
TAIL_S = 16.0
#: Number of shared structured-noise time courses.
N_STRUCTURED = 5
#: Minimum ROI size at 6 mm; scaled by voxel volume for other voxel sizes.
MIN_ROI_VOXELS_6MM = 20

_SOURCE = "synthetic config"

# Ellipsoids (right-hemisphere centre in MNI mm, mirrored to the left; radii in mm).
_ROI_ELLIPSOIDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "V1": ((8.0, -94.0, 4.0), (12.0, 14.0, 16.0)),
    "V4": ((28.0, -80.0, -12.0), (10.0, 12.0, 9.0)),
    "LOC": ((46.0, -66.0, 0.0), (10.0, 16.0, 12.0)),
}

# Tags separating the random streams (np.random.default_rng([seed, tag, ...])).
_TAG_REPEATS, _TAG_RESPONSE, _TAG_ANAT, _TAG_TUNING, _TAG_TRIALS, _TAG_RUN = range(1, 7)
_TAG_TOPOGRAPHY = 7
_TAG_PRF = 8


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic dataset; every field has a small, NSD-like default.

    Amplitudes and noise levels are in percent signal change. Values are validated
    on construction; errors raise :class:`~brainpipe.errors.BrainpipeInputError`
    naming the field.
    """

    seed: int = 0
    n_subjects: int = 4
    n_sessions: int = 2
    n_runs: int = 3
    trials_per_run: int = 40
    blank_fraction: float = 0.15
    tr: float = 1.6
    voxel_size_mm: float = 6.0
    n_shared: int = 24
    max_repeats: int = 3
    image_size: int = 64
    signal_sd: float = 2.0
    trial_noise_sd: float = 1.0
    noise_sd: float = 1.0
    ar1: float = 0.4
    drift_sd: float = 1.0
    structured_noise_sd: float = 0.5
    n_hrfs: int = 20
    # A network layer behind the lowlevel block (random-init weights of the real
    # architecture, seeded with ``seed``), e.g. "alexnet" + "features.5": encoding then
    # has a known best layer. Empty: pooled edge energy.
    response_network: str = ""
    response_layer: str = ""
    # Share of the spatially smooth part of every voxel's tuning that is common to all
    # subjects at the same template-space position (the rest is the subject's own smooth
    # deviation): > 0, subjects share a topography and anatomical alignment carries
    # signal (as in NSD, whose subjects share a coarse topography); 0, their maps are
    # unrelated.
    tuning_shared: float = 0.8
    # 1: captions also name the shape's place (3,888 distinct captions, image-level, as
    # NSD's COCO captions; 0: 432, size, colour and category alone, so top-1 caption
    # retrieval among NSD's 1,000 test images could not pass ~0.1).
    caption_place: int = 1
    # > 0: V1 and V4 voxels have spatially local tuning, a population receptive field of
    # this size (Gaussian sd, fraction of the image side; twice as large in V4) on a
    # spatial map of the stimulus (:mod:`brainpipe.datasets.synthetic_prf`); 0: the
    # low-level block pools the whole image.
    response_prf: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("str", str):
                if not isinstance(value, str):
                    raise BrainpipeInputError(_SOURCE, f.name, f"got {value!r}; expected a string")
                continue
            is_int_type = f.type in ("int", int)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise BrainpipeInputError(
                    _SOURCE,
                    f.name,
                    f"got {value!r}; expected a {'integer' if is_int_type else 'number'}",
                )
            if is_int_type:
                if not float(value).is_integer():
                    raise BrainpipeInputError(
                        _SOURCE, f.name, f"got {value!r}; expected an integer"
                    )
                object.__setattr__(self, f.name, int(value))
            else:
                if not math.isfinite(float(value)):
                    raise BrainpipeInputError(
                        _SOURCE, f.name, f"got {value!r}; expected a finite number"
                    )
                object.__setattr__(self, f.name, float(value))
        _check_range("seed", self.seed, 0, None)
        for name in (
            "n_subjects",
            "n_sessions",
            "n_runs",
            "trials_per_run",
            "max_repeats",
            "n_hrfs",
        ):
            _check_range(name, getattr(self, name), 1, None)
        _check_range("n_shared", self.n_shared, 0, None)
        _check_range("image_size", self.image_size, 16, None)
        _check_range("tr", self.tr, 0.1, 10.0)
        _check_range("voxel_size_mm", self.voxel_size_mm, 2.0, 12.0)
        for name in ("signal_sd", "trial_noise_sd", "noise_sd", "drift_sd", "structured_noise_sd"):
            _check_range(name, getattr(self, name), 0.0, None)
        _check_range("tuning_shared", self.tuning_shared, 0.0, 1.0)
        _check_range("caption_place", self.caption_place, 0, 1)
        _check_range("response_prf", self.response_prf, 0.0, 1.0)
        if not 0.0 <= self.blank_fraction < 1.0:
            raise BrainpipeInputError(
                _SOURCE, "blank_fraction", f"got {self.blank_fraction!r}; expected 0 <= value < 1"
            )
        if self.response_network or self.response_layer:
            from brainpipe.features.networks import get_network

            net = get_network(self.response_network, _SOURCE, "response_network")
            if self.response_layer not in net.layers:
                raise BrainpipeInputError(
                    _SOURCE,
                    "response_layer",
                    f"got {self.response_layer!r}; {net.name} layers: {', '.join(net.layers)}",
                )
        if not -1.0 < self.ar1 < 1.0:
            raise BrainpipeInputError(_SOURCE, "ar1", f"got {self.ar1!r}; expected -1 < value < 1")
        n_trials = self.n_sessions * self.n_runs * self.trials_per_run
        if self.n_shared * self.max_repeats > n_trials:
            raise BrainpipeInputError(
                _SOURCE,
                "n_shared",
                f"got {self.n_shared}: n_shared * max_repeats = {self.n_shared * self.max_repeats}"
                f" exceeds the {n_trials} trials per subject"
                " (n_sessions * n_runs * trials_per_run)",
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> SyntheticParams:
        """Build parameters from a config mapping (e.g. the ``synthetic:`` block of config.yaml).

        Parameters
        ----------
        cfg : mapping or None
            Keys are field names of :class:`SyntheticParams`; missing keys keep
            their defaults.

        Returns
        -------
        SyntheticParams

        Raises
        ------
        BrainpipeInputError
            On an unknown key (named in the message) or an invalid value.
        """
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise BrainpipeInputError(_SOURCE, "synthetic", f"got {cfg!r}; expected a mapping")
        known = [f.name for f in fields(cls)]
        for key in cfg:
            if key not in known:
                raise BrainpipeInputError(
                    _SOURCE, str(key), f"unknown key; expected one of {', '.join(known)}"
                )
        return cls(**dict(cfg))


def _check_range(name: str, value: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"{'' if lo is None else f'{lo} <= '}value{'' if hi is None else f' <= {hi}'}"
        raise BrainpipeInputError(_SOURCE, name, f"got {value!r}; expected {bounds}")


def subject_ids(params: SyntheticParams) -> list[str]:
    """Subject labels without the ``sub-`` prefix: ``["01", "02", ...]``.

    Parameters
    ----------
    params : SyntheticParams

    Returns
    -------
    list of str
    """
    return [f"{i:02d}" for i in range(1, params.n_subjects + 1)]


def stimulus_id(index: int) -> str:
    """Stimulus label of the 1-based ``index``: ``stim-0001``."""
    return f"stim-{index:04d}"


def ground_truth_path(root: Path | str, subject: str) -> Path:
    """Path of a subject's ground-truth store under the dataset ``root``."""
    return Path(root) / "derivatives" / "groundtruth" / f"sub-{_bare(subject)}.zarr"


def load_ground_truth(root: Path | str, subject: str) -> xr.Dataset:
    """Load a subject's ground truth (``derivatives/groundtruth/sub-XX.zarr``) into memory.

    Parameters
    ----------
    root : path
        Dataset root written by :func:`generate`.
    subject : str
        ``"01"`` or ``"sub-01"``.

    Returns
    -------
    xarray.Dataset
        Variables ``amplitude``, ``stimulus_response`` (trial, voxel), ``mapping``
        (component, voxel), ``hrf_index``, ``roi``, ``baseline``, ``ncsnr``,
        ``ncsnr_amplitude``, ``noise_ceiling`` (voxel); see the module docstring.
    """
    return open_zarr(ground_truth_path(root, subject)).load()


def _bare(subject: str) -> str:
    return subject[4:] if subject.startswith("sub-") else subject


def _rng(params: SyntheticParams, *keys: int) -> np.random.Generator:
    return np.random.default_rng([params.seed, *keys])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """A z-scored, spatially smooth Gaussian random field on the grid."""
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return (z - z.mean()) / (z.std() + 1e-12)


def _shared_topography(params: SyntheticParams, shape: tuple[int, ...], n_comp: int) -> np.ndarray:
    """Smooth tuning fields ``(n_comp, *shape)`` on the template grid, the same for every
    subject of a dataset (drawn from the dataset seed alone)."""
    rng = _rng(params, _TAG_TOPOGRAPHY)
    return np.stack([_smooth_field(rng, shape, 1.5) for _ in range(n_comp)])


def _zscore(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    sd = a.std(axis=0)
    return np.divide(a, sd, out=np.zeros_like(a), where=sd > 1e-12)


# --------------------------------------------------------------------------- anatomy


@lru_cache(maxsize=8)
def _template_grid(voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """MNI152 brain mask resampled to ``voxel_size`` mm and cropped with a 2-voxel margin.

    The grid is aligned so that MNI (0, 0, 0) is a voxel centre. Returns the
    boolean mask and its affine (voxel -> MNI mm).
    """
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    tmpl = load_mni152_brain_mask(resolution=2)
    data = np.asarray(tmpl.get_fdata(), dtype=np.float32)
    src = nib.Nifti1Image(data, tmpl.affine)
    corners = np.array([[0, 0, 0], np.array(tmpl.shape) - 1], dtype=float)
    mm = nib.affines.apply_affine(tmpl.affine, corners)
    lo, hi = mm.min(axis=0), mm.max(axis=0)
    origin = np.floor(lo / voxel_size) * voxel_size
    shape = (np.floor((hi - origin) / voxel_size).astype(int) + 1).tolist()
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = origin
    with warnings.catch_warnings():
        # Linear interpolation of the binary mask, thresholded at 0.5, is intended.
        warnings.filterwarnings("ignore", message="Resampling binary images", category=UserWarning)
        res = resample_img(
            src,
            target_affine=affine,
            target_shape=tuple(shape),
            interpolation="linear",
            force_resample=True,
            copy_header=True,
        )
    mask = np.asarray(res.get_fdata()) > 0.5
    idx = np.argwhere(mask)
    margin = 2
    start, stop = idx.min(axis=0), idx.max(axis=0) + 1
    cropped = np.zeros(tuple((stop - start + 2 * margin).tolist()), dtype=bool)
    cropped[margin:-margin, margin:-margin, margin:-margin] = mask[
        start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]
    ]
    affine[:3, 3] = origin + (start - margin) * voxel_size
    return cropped, affine


def _subject_mask(template: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Template mask shifted by up to one voxel with a randomly eroded/dilated boundary."""
    mask = np.roll(template, shift=rng.integers(-1, 2, size=3).tolist(), axis=(0, 1, 2))
    field = _smooth_field(rng, mask.shape, 1.0)
    inner = mask & ~ndimage.binary_erosion(mask)
    outer = ndimage.binary_dilation(mask) & ~mask
    t_remove, t_add = rng.uniform(0.3, 1.5, size=2)
    mask = (mask & ~(inner & (field > t_remove))) | (outer & (field < -t_add))
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return mask


def _subject_rois(
    mask: np.ndarray, affine: np.ndarray, rng: np.random.Generator, voxel_size: float
) -> np.ndarray:
    """ROI label per brain voxel (``np.argwhere(mask)`` order): "V1", "V4", "LOC" or "none".

    Each ROI is a pair of mirrored ellipsoids in MNI mm with per-subject jitter of
    centres (sd 2 mm per hemisphere) and radii (x0.9-1.15) and a rough boundary.
    """
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(affine, ijk)
    roughness = _smooth_field(rng, mask.shape, 1.0)[mask]
    dist = np.empty((len(ROI_NAMES), len(ijk)))
    for r, name in enumerate(ROI_NAMES):
        centre, radii = (np.asarray(a) for a in _ROI_ELLIPSOIDS[name])
        per_hemi = []
        for sign in (1.0, -1.0):
            c = centre * np.array([sign, 1.0, 1.0]) + rng.normal(0.0, 2.0, size=3)
            rad = radii * rng.uniform(0.9, 1.15, size=3)
            per_hemi.append((((xyz - c) / rad) ** 2).sum(axis=1))
        dist[r] = np.minimum(*per_hemi) + 0.15 * roughness
    best = dist.argmin(axis=0)
    inside = dist[best, np.arange(len(ijk))] < 1.0
    labels = np.full(len(ijk), "none", dtype="<U4")
    labels[inside] = np.asarray(ROI_NAMES)[best[inside]]
    minimum = max(3, math.ceil(MIN_ROI_VOXELS_6MM * (6.0 / voxel_size) ** 3))
    for name in ROI_NAMES:
        count = int((labels == name).sum())
        if count < minimum:
            raise BrainpipeInputError(
                _SOURCE,
                "voxel_size_mm",
                f"ROI {name} has only {count} voxels at {voxel_size} mm;"
                f" expected at least {minimum} (use a smaller voxel size)",
            )
    return labels


# --------------------------------------------------------------------------- stimuli


def _unique_repeat_counts(n_trials: int, max_repeats: int, rng: np.random.Generator) -> list[int]:
    """Presentations of each unique image (1..max_repeats, more often many), summing to n_trials."""
    p = np.arange(1, max_repeats + 1, dtype=float)
    p /= p.sum()
    counts: list[int] = []
    left = n_trials
    while left > 0:
        r = min(int(rng.choice(max_repeats, p=p)) + 1, left)
        counts.append(r)
        left -= r
    return counts


def _response_space(
    params: SyntheticParams, images: np.ndarray, factors: list[synthetic_stimuli.StimulusFactors]
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """The shared response space, shape (n_stimuli, n_components), each component's block
    and, with ``response_prf``, the image positions of the spatially local lowlevel block."""
    rng = _rng(params, _TAG_RESPONSE)
    positions = None
    if params.response_prf > 0:  # pRFs: one component per grid position and channel
        low, positions = synthetic_prf.local_response(
            params.response_network, params.response_layer, images, params.seed
        )
        # the draw the pooled block takes, so the colour and category blocks stay the same
        rng.standard_normal((12 if params.response_network else 16, COMPONENT_BLOCKS["lowlevel"]))
    elif params.response_network:  # a network layer drives V1 / V4: a known best layer
        from brainpipe.features.extract import layer_activations

        # the layer's leading principal components (of the centred activations, as the
        # feature store's PCA sees them), so only that layer spans the response exactly
        acts = layer_activations(
            params.response_network, params.response_layer, images, seed=params.seed
        ).astype(np.float64)
        u, s, _ = np.linalg.svd(acts - acts.mean(axis=0), full_matrices=False)
        n_low = COMPONENT_BLOCKS["lowlevel"]
        energy = _zscore(u[:, :n_low] * s[:n_low])
    else:  # V1-like voxels pool edge energy over a coarse 4x4 retinotopic lattice.
        energy = _zscore(np.stack([synthetic_stimuli.edge_energy(im, grid=4) for im in images]))
    if positions is None:
        low = _zscore(energy @ rng.standard_normal((energy.shape[1], COMPONENT_BLOCKS["lowlevel"])))
    colours = list(synthetic_stimuli.COLOURS)
    colour_onehot = np.eye(len(colours))[[colours.index(f.colour) for f in factors]]
    colour = _zscore(
        colour_onehot @ rng.standard_normal((len(colours), COMPONENT_BLOCKS["colour"]))
    )
    cats = list(synthetic_stimuli.CATEGORIES)
    sups = list(synthetic_stimuli.SUPERORDINATES)
    cat_onehot = np.concatenate(
        [
            np.eye(len(cats))[[cats.index(f.category) for f in factors]],
            np.eye(len(sups))[[sups.index(f.superordinate) for f in factors]],
        ],
        axis=1,
    )
    category = _zscore(
        cat_onehot @ rng.standard_normal((cat_onehot.shape[1], COMPONENT_BLOCKS["category"]))
    )
    sizes = {**COMPONENT_BLOCKS, "lowlevel": low.shape[1]}
    blocks = [b for b, n in sizes.items() for _ in range(n)]
    return np.concatenate([low, colour, category], axis=1), blocks, positions


# --------------------------------------------------------------------------- writing helpers


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, tr: float | None = None) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms((*img.header.get_zooms()[:3], tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _write_tsv(df: pd.DataFrame, path: Path, **kwargs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, sep="\t", index=False, lineterminator="\n", **kwargs)


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _derivative_description(name: str, params: SyntheticParams) -> dict[str, Any]:
    return {
        "Name": name,
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "brainpipe",
                "Version": __version__,
                "Description": f"brainpipe.datasets.synthetic, seed={params.seed}",
            }
        ],
    }


# --------------------------------------------------------------------------- generation


def generate(root: Path | str, params: SyntheticParams) -> None:
    """Write the synthetic BIDS dataset into ``root``.

    Parameters
    ----------
    root : path
        Output folder, created if missing. Files are written in place; the caller
        is responsible for writing to a temporary folder and renaming it.
    params : SyntheticParams
        Everything that defines the dataset; the output is a deterministic
        function of ``params``.

    Notes
    -----
    Layout (``XX`` subject, ``SS`` session, ``RR`` run)::

        dataset_description.json, participants.tsv
        sub-XX/anat/sub-XX_space-synth_desc-brain_mask.nii.gz
        sub-XX/ses-SS/func/sub-XX_ses-SS_task-images_run-RR_{bold.nii.gz,bold.json,events.tsv}
        derivatives/rois/sub-XX/sub-XX_space-synth_roi-{V1,V4,LOC}_mask.nii.gz
        stimuli/stimuli.tsv, stimuli/images/stim-NNNN.png
        derivatives/groundtruth/{hrf_library.tsv,shared_responses.zarr,sub-XX.zarr}
    """
    # Many small matrix products: threaded BLAS only spins here, and a single
    # thread also makes the float results independent of the machine's core count.
    with threadpool_limits(limits=1, user_api="blas"):
        _generate(Path(root), params)


def _generate(root: Path, params: SyntheticParams) -> None:
    root.mkdir(parents=True, exist_ok=True)
    subjects = subject_ids(params)
    n_trials = params.n_sessions * params.n_runs * params.trials_per_run
    n_unique_trials = n_trials - params.n_shared * params.max_repeats

    # Stimuli: shared first, then each subject's unique images.
    shared_ids = [stimulus_id(i) for i in range(1, params.n_shared + 1)]
    unique: dict[str, list[tuple[str, int]]] = {}
    next_index = params.n_shared + 1
    for s, sub in enumerate(subjects):
        counts = _unique_repeat_counts(
            n_unique_trials, params.max_repeats, _rng(params, _TAG_REPEATS, s)
        )
        unique[sub] = [(stimulus_id(next_index + k), c) for k, c in enumerate(counts)]
        next_index += len(counts)
    all_ids = [stimulus_id(i) for i in range(1, next_index)]
    factors, images, rows = [], [], []
    for index, sid in enumerate(all_ids, start=1):
        f, image, caption = synthetic_stimuli.make_stimulus(
            params.seed, index, params.image_size, bool(params.caption_place)
        )
        factors.append(f)
        images.append(image)
        rel = f"images/{sid}.png"
        path = root / "stimuli" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="RGB").save(path, format="PNG")
        rows.append(
            {
                "stimulus": sid,
                "image": rel,
                "caption": caption,
                "shared": int(index <= params.n_shared),
                "category": f.category,
                "superordinate": f.superordinate,
                "colour": f.colour,
                "size": f.size,
                "x": f.x,
                "y": f.y,
                "orientation": f.orientation,
            }
        )
    _write_tsv(pd.DataFrame(rows), root / "stimuli" / "stimuli.tsv")

    response, blocks, positions = _response_space(params, np.stack(images), factors)
    counts = {b: blocks.count(b) for b in COMPONENT_BLOCKS}
    components = [
        f"{b}_{i:0{max(2, len(str(n - 1)))}d}" for b, n in counts.items() for i in range(n)
    ]
    gt_dir = root / "derivatives" / "groundtruth"
    shared_ds = xr.Dataset(
        {"response": (("stimulus", "component"), response.astype(np.float32))},
        coords={
            "stimulus": _strings(all_ids),
            "component": _strings(components),
            "component_block": ("component", _strings(blocks)),
        },
        attrs={"seed": params.seed, **provenance_attrs(asdict(params))},
    )
    write_zarr(shared_ds, gt_dir / "shared_responses.zarr")
    lib_params = hrf_library_parameters(params.n_hrfs)
    _write_tsv(
        pd.DataFrame([{"hrf_index": i, **p} for i, p in enumerate(lib_params)]),
        gt_dir / "hrf_library.tsv",
    )
    _write_json(
        _derivative_description("brainpipe synthetic ground truth", params),
        gt_dir / "dataset_description.json",
    )
    _write_json(
        _derivative_description("brainpipe synthetic ROIs", params),
        root / "derivatives" / "rois" / "dataset_description.json",
    )

    template, affine = _template_grid(params.voxel_size_mm)
    kernels = hrf_library(FINE_DT, params.n_hrfs)
    stim_row = {sid: i for i, sid in enumerate(all_ids)}
    writer = _BackgroundWriter()
    try:
        for s, sub in enumerate(subjects):
            _generate_subject(
                root,
                params,
                s,
                sub,
                template,
                affine,
                kernels,
                response,
                components,
                blocks,
                shared_ids,
                unique[sub],
                stim_row,
                writer,
                positions,
            )
    finally:
        writer.close()

    _write_json(
        {
            "Name": "brainpipe synthetic NSD-like dataset",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "GeneratedBy": [
                {
                    "Name": "brainpipe",
                    "Version": __version__,
                    "Description": f"brainpipe.datasets.synthetic, seed={params.seed}",
                }
            ],
            "SyntheticParams": asdict(params),
        },
        root / "dataset_description.json",
    )
    _write_tsv(
        pd.DataFrame({"participant_id": [f"sub-{x}" for x in subjects]}), root / "participants.tsv"
    )


def _schedule(
    params: SyntheticParams,
    shared_ids: list[str],
    unique: list[tuple[str, int]],
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, dict[tuple[int, int], int]]:
    """Trials (session, run, onset, stimulus) in session/run/onset order and scans per run."""
    trials = [sid for sid in shared_ids for _ in range(params.max_repeats)]
    trials += [sid for sid, count in unique for _ in range(count)]
    order = rng.permutation(len(trials))
    per_run = np.asarray(trials, dtype=object)[order].reshape(
        params.n_sessions, params.n_runs, params.trials_per_run
    )
    rows, n_scans = [], {}
    for ses in range(params.n_sessions):
        for run in range(params.n_runs):
            n_blank = int(rng.binomial(params.trials_per_run, params.blank_fraction))
            n_slots = params.trials_per_run + n_blank
            blanks = set(rng.choice(n_slots, size=n_blank, replace=False).tolist())
            slots = [k for k in range(n_slots) if k not in blanks]
            lead_ms = int(rng.integers(3000, 5001))
            slot_ms = round(SLOT_S * 1000)
            for k, sid in zip(slots, per_run[ses, run], strict=True):
                rows.append(
                    {
                        "session": ses + 1,
                        "run": run + 1,
                        # Integer milliseconds / 1000: the same float as the TSV text parses to.
                        "onset": (lead_ms + slot_ms * k) / 1000.0,
                        "stimulus": str(sid),
                    }
                )
            total = lead_ms / 1000.0 + n_slots * SLOT_S + TAIL_S
            n_scans[(ses + 1, run + 1)] = math.ceil(total / params.tr)
    return pd.DataFrame(rows), n_scans


def _ar1(rng: np.random.Generator, shape: tuple[int, int], sd: float, rho: float) -> np.ndarray:
    """Stationary AR(1) noise along axis 0 with marginal sd ``sd``."""
    innov = rng.standard_normal(shape)
    innov[1:] *= math.sqrt(1.0 - rho**2)
    return sd * lfilter([1.0], [1.0, -rho], innov, axis=0)


def _generate_subject(
    root: Path,
    params: SyntheticParams,
    s: int,
    sub: str,
    template: np.ndarray,
    affine: np.ndarray,
    kernels: np.ndarray,
    response: np.ndarray,
    components: list[str],
    blocks: list[str],
    shared_ids: list[str],
    unique: list[tuple[str, int]],
    stim_row: dict[str, int],
    writer: _BackgroundWriter,
    positions: np.ndarray | None = None,
) -> None:
    anat_rng = _rng(params, _TAG_ANAT, s)
    mask = _subject_mask(template, anat_rng)
    shape = mask.shape
    ijk = np.argwhere(mask)
    n_vox = len(ijk)
    roi = _subject_rois(mask, affine, anat_rng, params.voxel_size_mm)

    # Per-voxel HRF (spatially smooth ranks), baseline intensity, structured-noise loadings.
    field = _smooth_field(anat_rng, shape, 1.5)[mask] + 0.3 * anat_rng.standard_normal(n_vox)
    ranks = np.empty(n_vox, dtype=np.int64)
    ranks[np.argsort(field, kind="stable")] = np.arange(n_vox)
    hrf_index = (ranks * params.n_hrfs // n_vox).astype(np.int16)
    baseline = 1000.0 + 200.0 * np.clip(_smooth_field(anat_rng, shape, 2.0)[mask], -2.4, 2.4)
    baseline = baseline.astype(np.float32)
    loadings = np.stack([_smooth_field(anat_rng, shape, 2.0)[mask] for _ in range(N_STRUCTURED)])
    loadings *= params.structured_noise_sd / np.linalg.norm(loadings, axis=0, keepdims=True)

    # Trials and the subject's stimuli.
    trials, n_scans = _schedule(params, shared_ids, unique, _rng(params, _TAG_TRIALS, s))
    seen = sorted(set(trials["stimulus"]), key=stim_row.__getitem__)
    resp_seen = response[[stim_row[x] for x in seen]]

    # Tuning: mapping(component, voxel), smooth in space, scaled to signal_sd * gain.
    tune_rng = _rng(params, _TAG_TUNING, s)
    n_comp = response.shape[1]
    if positions is not None:  # pRFs: one weight per channel, spread in space by the pRF
        n_low = blocks.count("lowlevel")
        n_comp -= n_low - n_low // len(positions)
    # The smooth part: a topography every subject shares at the same template position
    # (all subjects are on the template grid) mixed with the subject's own deviation.
    smooth = np.stack([_smooth_field(tune_rng, shape, 1.5)[mask] for _ in range(n_comp)])
    if params.tuning_shared > 0:
        shared = _shared_topography(params, shape, n_comp)[:, mask]
        smooth = (
            math.sqrt(params.tuning_shared) * shared
            + math.sqrt(1.0 - params.tuning_shared) * smooth
        )
    mapping = math.sqrt(0.5) * smooth + math.sqrt(0.5) * tune_rng.standard_normal((n_comp, n_vox))
    if positions is not None:
        prfs = synthetic_prf.draw_prfs(
            roi,
            nib.affines.apply_affine(affine, ijk),
            params.response_prf,
            _rng(params, _TAG_PRF, s),
        )
        n_ch = blocks.count("lowlevel") // len(positions)
        g = synthetic_prf.prf_weights(prfs, positions)
        mapping = np.concatenate([synthetic_prf.expand(mapping[:n_ch], g), mapping[n_ch:]])
    block_arr = np.asarray(blocks)
    weights = {
        "V1": {"lowlevel": 1.0},
        "V4": {"lowlevel": 0.6, "colour": 1.0},
        "LOC": {"category": 1.0, "colour": 0.25},
    }
    scale = np.zeros(mapping.shape)
    for name, w in weights.items():
        for block, value in w.items():
            scale[np.ix_(block_arr == block, roi == name)] = value
    mapping *= scale
    gain = np.exp(0.2 * _smooth_field(tune_rng, shape, 2.0)[mask])
    sd = (resp_seen @ mapping).std(axis=0)
    in_roi = (roi != "none") & (sd > 0)
    mapping[:, in_roi] *= params.signal_sd * gain[in_roi] / sd[in_roi]
    mapping = mapping.astype(np.float32)
    offset = np.where(
        roi != "none",
        params.signal_sd
        * np.clip(1.0 + 0.3 * _smooth_field(tune_rng, shape, 2.0)[mask], 0.2, None),
        0.0,
    )
    stim_idx = np.asarray([stim_row[x] for x in trials["stimulus"]])
    stimulus_response = (offset + response[stim_idx] @ mapping.astype(np.float64)).astype(
        np.float32
    )
    amplitude = stimulus_response + params.trial_noise_sd * tune_rng.standard_normal(
        stimulus_response.shape
    )
    amplitude = amplitude.astype(np.float32)

    # BOLD, run by run; also the LSA measurement-noise variance per trial and HRF.
    groups = {int(h): np.flatnonzero(hrf_index == h) for h in np.unique(hrf_index)}
    meas_var_sum = np.zeros(params.n_hrfs)
    meas_noise_var = params.noise_sd**2 + params.structured_noise_sd**2
    func_prefix = f"sub-{sub}"
    for (ses, run), run_trials in trials.groupby(["session", "run"], sort=True):
        rows = run_trials.index.to_numpy()
        onsets = run_trials["onset"].to_numpy()
        durations = np.full(len(rows), STIM_DURATION_S)
        T = n_scans[(ses, run)]
        lags = np.abs(np.arange(T)[:, None] - np.arange(T)[None, :])
        rho_mat = params.ar1**lags
        amp_run = amplitude[rows].astype(np.float64)
        psc = np.empty((T, n_vox))
        for h, vox in groups.items():
            X = trial_regressors(onsets, durations, T, params.tr, kernels[h])
            psc[:, vox] = X @ amp_run[:, vox]
            Xc = np.column_stack([X, np.ones(T)])
            lsa = np.linalg.solve(Xc.T @ Xc, Xc.T)[: len(rows)]  # (XᵀX)⁻¹Xᵀ, trial rows
            meas_var_sum[h] += ((lsa @ rho_mat) * lsa).sum()
        run_rng = _rng(params, _TAG_RUN, s, ses, run)
        if params.noise_sd > 0:
            psc += _ar1(run_rng, (T, n_vox), params.noise_sd, params.ar1)
        if params.drift_sd > 0:
            t = np.arange(T) * params.tr
            basis = [(t - t.mean()) / (t.std() + 1e-12)]
            for _ in range(2):
                period = run_rng.uniform(1.5 * 128.0, 600.0)
                basis.append(np.cos(2 * np.pi * t / period + run_rng.uniform(0, 2 * np.pi)))
            drift = np.stack(basis, axis=1) @ run_rng.standard_normal((len(basis), n_vox))
            drift -= drift.mean(axis=0)
            dsd = drift.std(axis=0)
            psc += params.drift_sd * np.divide(drift, dsd, out=np.zeros_like(drift), where=dsd > 0)
        if params.structured_noise_sd > 0:
            courses = _zscore(_ar1(run_rng, (T, N_STRUCTURED), 1.0, params.ar1))
            psc += courses @ loadings
        bold = np.full((*shape, T), 1.0, dtype=np.float32)
        bold[mask] = (baseline.astype(np.float64) * (1.0 + psc / 100.0)).T.astype(np.float32)
        stem = f"{func_prefix}_ses-{ses:02d}_task-{TASK}_run-{run:02d}"
        func = root / func_prefix / f"ses-{ses:02d}" / "func"
        writer.submit(_save_nifti, bold, affine, func / f"{stem}_bold.nii.gz", tr=params.tr)
        _write_json({"RepetitionTime": params.tr, "TaskName": TASK}, func / f"{stem}_bold.json")
        events = pd.DataFrame(
            {
                "onset": onsets,
                "duration": durations,
                "trial_type": "image",
                "stimulus": run_trials["stimulus"].to_numpy(),
            }
        )
        _write_tsv(events, func / f"{stem}_events.tsv", float_format="%.3f")

    # Anatomy and ROIs.
    _save_nifti(
        mask.astype(np.uint8),
        affine,
        root / func_prefix / "anat" / f"{func_prefix}_space-{SPACE}_desc-brain_mask.nii.gz",
    )
    for name in ROI_NAMES:
        vol = np.zeros(shape, dtype=np.uint8)
        vol[tuple(ijk[roi == name].T)] = 1
        _save_nifti(
            vol,
            affine,
            root
            / "derivatives"
            / "rois"
            / func_prefix
            / f"{func_prefix}_space-{SPACE}_roi-{name}_mask.nii.gz",
        )

    # Noise ceiling implied by the generator.
    n_trials = len(trials)
    meas_var = meas_noise_var * (meas_var_sum / n_trials)[hrf_index]
    signal_sd = (offset + resp_seen @ mapping.astype(np.float64)).std(axis=0)
    signal_sd[roi == "none"] = 0.0
    noise_sd = np.sqrt(params.trial_noise_sd**2 + meas_var)
    ncsnr = _ratio(signal_sd, noise_sd)
    ncsnr_amplitude = _ratio(signal_sd, np.full(n_vox, params.trial_noise_sd))
    with np.errstate(invalid="ignore"):
        ceiling = np.where(np.isinf(ncsnr), 100.0, 100.0 * ncsnr**2 / (ncsnr**2 + 1.0))

    xyz = nib.affines.apply_affine(affine, ijk)
    tps = params.n_runs * params.trials_per_run
    chunks_tv = {"chunks": (tps, min(n_vox, 8192))}
    ds = xr.Dataset(
        {
            "amplitude": (("trial", "voxel"), amplitude, {"units": "percent signal change"}),
            "stimulus_response": (
                ("trial", "voxel"),
                stimulus_response,
                {"units": "percent signal change"},
            ),
            "mapping": (("component", "voxel"), mapping),
            "hrf_index": ("voxel", hrf_index),
            "roi": ("voxel", _strings(roi)),
            "baseline": ("voxel", baseline),
            "response_offset": (
                "voxel",
                offset.astype(np.float32),
                {"units": "percent signal change"},
            ),
            "ncsnr": ("voxel", ncsnr.astype(np.float32)),
            "ncsnr_amplitude": ("voxel", ncsnr_amplitude.astype(np.float32)),
            "noise_ceiling": ("voxel", ceiling.astype(np.float32), {"units": "percent"}),
            **(
                {}
                if positions is None
                else {
                    k: ("voxel", v.astype(np.float32), {"units": "fraction of the image side"})
                    for k, v in prfs.items()
                }
            ),
        },
        coords={
            "stimulus": ("trial", _strings(trials["stimulus"])),
            "session": ("trial", trials["session"].to_numpy().astype(np.int64)),
            "run": ("trial", trials["run"].to_numpy().astype(np.int64)),
            "onset": ("trial", trials["onset"].to_numpy().astype(np.float64)),
            "i": ("voxel", ijk[:, 0].astype(np.int64)),
            "j": ("voxel", ijk[:, 1].astype(np.int64)),
            "k": ("voxel", ijk[:, 2].astype(np.int64)),
            "x": ("voxel", xyz[:, 0]),
            "y": ("voxel", xyz[:, 1]),
            "z": ("voxel", xyz[:, 2]),
            "component": _strings(components),
            "component_block": ("component", _strings(blocks)),
        },
        attrs={
            "subject": sub,
            "seed": params.seed,
            "space": SPACE,
            "affine": affine.tolist(),
            "volume_shape": list(shape),
            "tr": params.tr,
            "stimulus_duration": STIM_DURATION_S,
            "n_hrfs": params.n_hrfs,
            "units": "percent signal change",
            **provenance_attrs(asdict(params)),
        },
    )
    ds["amplitude"].encoding["chunks"] = chunks_tv["chunks"]
    ds["stimulus_response"].encoding["chunks"] = chunks_tv["chunks"]
    write_zarr(ds, ground_truth_path(root, sub))


def _strings(values: Any) -> np.ndarray:
    """Strings as an object array (stored as Zarr v3 variable-length UTF-8)."""
    return np.asarray([str(v) for v in values], dtype=object)


class _BackgroundWriter:
    """Run writes (gzip releases the GIL) in threads, with a bounded number in flight."""

    def __init__(self, max_workers: int = 2, max_pending: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers)
        self._pending: deque[Future[Any]] = deque()
        self._max_pending = max_pending

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for every write; re-raise the first error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 -> 0 and x/0 -> inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    out[(num == 0) & (den == 0)] = 0.0
    return out
