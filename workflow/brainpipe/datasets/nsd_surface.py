"""NSD betas on the fsaverage surface (``source.space: fsaverage``) into betas.zarr.

Bucket keys (``{subj}`` = ``subj01`` …, ``{version}`` e.g. ``betas_fithrf_GLMdenoise_RR``,
``{hemi}`` = ``lh`` or ``rh``)::

    nsddata_betas/ppdata/{subj}/fsaverage/{version}/{hemi}.betas_session{NN}.mgh
    nsddata_betas/ppdata/{subj}/fsaverage/{version}/{hemi}.ncsnr.mgh
    nsddata/freesurfer/fsaverage/label/{hemi}.{roi}.mgz      ROI labels on fsaverage
    nsddata/freesurfer/{subj}/label/{hemi}.{roi}.mgz         ROI labels on the native surface
    nsddata/ppdata/{subj}/transforms/{hemi}.white-to-fsaverage.mgz   native -> fsaverage
    nsddata/experiments/nsd/nsd_expdesign.mat, nsddata_stimuli/...  (as for the volume path)

File formats. A betas file is an MGH volume of shape ``(163842, 1, 1, 750)``
(vertices × 1 × 1 × trials). NSD writes the fsaverage betas as float32 already
in percent signal change (unlike the volume HDF5, which is int16 × 300); if a
file is integer-typed (MGH ``short`` or ``int``) it is read as × 300 and
divided, like the volume path, so both land in % signal change. MGH stores
vertices fastest (Fortran order), so a batch of trials is one contiguous read.

ROI labels. ``nsddata/freesurfer/fsaverage/label/`` holds the labels NSD defines on
fsaverage (``nsdgeneral``, … ; the same for every subject); they are used where
published (HEAD requests say which). Other label files (prf-visualrois, floc-*,
streams) exist only on each subject's *native* surface,
``nsddata/freesurfer/subjNN/label/{hemi}.{roi}.mgz`` (another vertex count, e.g.
227,021 for subj01's left hemisphere); those are fetched with NSD's transform
``nsddata/ppdata/subjNN/transforms/{hemi}.white-to-fsaverage.mgz`` (per fsaverage
vertex, the 1-based native vertex it takes its value from) and mapped nearest-neighbour,
as cvnlab/nsdcode's ``nsd_mapdata`` does (:func:`map_native_to_fsaverage`). A label on
neither surface is skipped with a warning; a label or transform whose vertex count
differs from the betas stops the ingest naming the file.

Store layout (the betas.zarr contract on a surface). The dimension keeps the
name ``voxel`` so every downstream stage reads it unchanged; a "voxel" is one
vertex of one hemisphere, left hemisphere first, then right, each in vertex
order. Instead of ``i, j, k`` / ``x, y, z`` its coordinates are ``hemi``
(``"lh"`` / ``"rh"``) and ``vertex`` (int32, the fsaverage vertex index within
the hemisphere). Attrs: ``space = "nsd-fsaverage"``, ``surface = "fsaverage"``,
``n_vertices = {"lh": n, "rh": n}``; there is no ``affine`` or
``volume_shape``. Training and evaluation select voxels by ``roi_*`` and run
unchanged; cross-subject alignment runs its functional methods unchanged, does
anatomical alignment by matching ``(hemi, vertex)`` (subjects share fsaverage
vertices), takes piecewise parcels from a per-hemisphere label file
(``align.atlas`` with ``{hemi}``), and refuses to mix such a store with volume
stores (:mod:`brainpipe.align.store`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brainpipe.betas.store import BetasLayout, close_store, noise_ceiling_vars
from brainpipe.config import VOXEL_CHUNK
from brainpipe.datasets.nsd_download import assemble_from_cache
from brainpipe.datasets.nsd_layout import (
    BETA_SCALE,
    EXPDESIGN_KEY,
    STIM_INFO_KEY,
    TRIALS_PER_SESSION,
    ExpDesign,
    NsdOptions,
    check_sessions,
    read_expdesign,
    session_number,
    stimulus_name,
    subject_label,
)
from brainpipe.datasets.nsd_store import betas_codec, zscore_with_train_stats
from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import RemoteAccessError, fetch_objects, safe_local_path
from brainpipe.splits import read_splits
from brainpipe.storage import atomic_path, provenance_attrs

log = logging.getLogger(__name__)

SPACE = "fsaverage"
HEMIS = ("lh", "rh")
#: The FreeSurfer subject whose labels index fsaverage vertices.
LABEL_SUBJECT = "fsaverage"


# --- keys in the bucket -------------------------------------------------------------------
def _betas_dir(subject: str, opts: NsdOptions) -> str:
    return f"nsddata_betas/ppdata/{subject_label(subject)}/{SPACE}/{opts.beta_version}"


def _check_hemi(hemi: str) -> str:
    if hemi not in HEMIS:
        raise BrainpipeInputError("<call>", "hemi", f"expected one of {list(HEMIS)}, got {hemi!r}")
    return hemi


def surface_betas_key(subject: str, session: str, hemi: str, opts: NsdOptions) -> str:
    """Key of one hemisphere's betas MGH for one session."""
    n = session_number(session)
    return f"{_betas_dir(subject, opts)}/{_check_hemi(hemi)}.betas_session{n:02d}.mgh"


def surface_ncsnr_key(subject: str, hemi: str, opts: NsdOptions) -> str:
    """Key of one hemisphere's noise-ceiling SNR MGH."""
    return f"{_betas_dir(subject, opts)}/{_check_hemi(hemi)}.ncsnr.mgh"


def surface_roi_key(hemi: str, roi_file: str) -> str:
    """Key of one hemisphere's ROI label file on fsaverage (shared by all subjects)."""
    return f"nsddata/freesurfer/{LABEL_SUBJECT}/label/{_check_hemi(hemi)}.{roi_file}.mgz"


def native_roi_key(subject: str, hemi: str, roi_file: str) -> str:
    """Key of a subject's ROI label file on its *native* surface (``white``)."""
    return f"nsddata/freesurfer/{subject_label(subject)}/label/{_check_hemi(hemi)}.{roi_file}.mgz"


def native_to_fsaverage_key(subject: str, hemi: str) -> str:
    """Key of NSD's ``{hemi}.white-to-fsaverage.mgz`` transform of a subject.

    One value per fsaverage vertex: the 1-based index of the subject's native (white)
    vertex it takes its value from, nearest neighbour (cvnlab/nsdcode ``parse_case``,
    ``transform_data`` case 3: ``sourcedata[a1_data - 1]``).
    """
    folder = f"nsddata/ppdata/{subject_label(subject)}/transforms"
    return f"{folder}/{_check_hemi(hemi)}.white-to-fsaverage.mgz"


def map_native_to_fsaverage(native: np.ndarray, transform: np.ndarray, where: Path) -> np.ndarray:
    """Values on fsaverage of a native-surface map, through NSD's nearest-neighbour transform."""
    index = np.asarray(transform).reshape(len(transform), -1)[:, 0]
    if not np.all(index == np.round(index)) or index.min() < 1 or index.max() > len(native):
        raise BrainpipeInputError(
            where, "vertices", f"expected 1-based native vertex indices 1..{len(native)}"
        )
    return np.asarray(native)[index.astype(np.int64) - 1]


def surface_subject_keys(subject: str, sessions: list[str], opts: NsdOptions) -> list[str]:
    """Keys ingest cannot do without for one subject (betas and ncsnr, both hemispheres)."""
    keys = [surface_ncsnr_key(subject, h, opts) for h in HEMIS]
    for ses in sessions:
        keys += [surface_betas_key(subject, ses, h, opts) for h in HEMIS]
    return keys


def surface_roi_keys(opts: NsdOptions) -> list[str]:
    """Label keys of every ``roi_files`` entry, both hemispheres."""
    return [surface_roi_key(h, f) for f in opts.roi_files for h in HEMIS]


def _check_space(opts: NsdOptions) -> None:
    if opts.space != SPACE:
        raise BrainpipeInputError(
            "config", "source.space", f"the surface path needs 'fsaverage', got {opts.space!r}"
        )


# --- download -----------------------------------------------------------------------------
def download_nsd_surface(
    dest: str | Path,
    subjects: list[str],
    sessions: list[str],
    opts: NsdOptions,
    cache: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fetch what surface ingest needs and lay it out under ``dest`` (bucket keys as paths).

    Betas and ncsnr of both hemispheres are required; ROI label files are
    fetched where NSD publishes them on fsaverage (HEAD first; a missing one is
    logged and skipped, except ``nsdgeneral`` when ``source.mask: nsdgeneral``).
    ``stimuli/`` is built as in :func:`brainpipe.datasets.nsd.download_nsd`.
    """
    _check_space(opts)
    check_sessions(subjects, sessions)
    dest = Path(dest)
    cache = Path(cache) if cache else dest.with_name(f".{dest.name}-objects")
    source = opts.source()
    keys = [EXPDESIGN_KEY, STIM_INFO_KEY]
    for subject in subjects:
        keys += surface_subject_keys(subject, sessions, opts)
    objects: list[Any] = list(keys)

    def add_if_published(key: str) -> bool:
        try:
            objects.append(source.head(key))
        except RemoteAccessError as err:
            if "no such object" not in str(err):
                raise
            return False
        keys.append(key)
        return True

    transforms: set[str] = set()
    for roi_file in opts.roi_files:
        for hemi in HEMIS:
            key = surface_roi_key(hemi, roi_file)
            if add_if_published(key):
                continue
            if opts.mask == "nsdgeneral" and roi_file == "nsdgeneral":
                raise BrainpipeInputError(key, "<file>", "source.mask: nsdgeneral needs it")
            # not on fsaverage: each subject's native-surface label, mapped with NSD's
            # white-to-fsaverage transform at ingest
            for subject in subjects:
                native = native_roi_key(subject, hemi, roi_file)
                if not add_if_published(native):
                    log.warning("%s: on neither fsaverage nor %s's native surface, no roi "
                                "coords from it", key, subject_label(subject))  # fmt: skip
                    continue
                transform = native_to_fsaverage_key(subject, hemi)
                if transform not in transforms:
                    transforms.add(transform)
                    objects.append(transform)
                    keys.append(transform)
    log.info("NSD fsaverage: %d objects from %s into %s", len(objects), source.url(""), cache)
    fetch_objects(source, objects, cache, workers=opts.workers, progress=progress)
    return assemble_from_cache(dest, cache, keys, source, opts, subjects, sessions)


# --- reading MGH --------------------------------------------------------------------------
def _load_mgh(path: Path, what: str) -> nib.MGHImage:
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", f"{what} file is missing (run the fetch)")
    try:
        img = nib.load(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises several types
        raise BrainpipeInputError(path, "<file>", f"not a readable MGH/MGZ file ({err})") from err
    if len(img.shape) < 3 or img.shape[1:3] != (1, 1):
        raise BrainpipeInputError(
            path, "shape", f"expected a surface map (vertices, 1, 1[, frames]), got {img.shape}"
        )
    return img


def read_surface_map(path: Path, n_vertices: int | None, what: str) -> np.ndarray:
    """A single-frame surface map (ncsnr, ROI labels), shape (n_vertices,)."""
    img = _load_mgh(path, what)
    if n_vertices is not None and img.shape[0] != n_vertices:
        raise BrainpipeInputError(
            path,
            "vertices",
            f"{what} has {img.shape[0]} vertices, the betas {n_vertices} (labels must be on "
            "fsaverage, not a subject's native surface)",
        )
    data = np.asanyarray(img.dataobj)
    return data.reshape(img.shape[0], -1)[:, 0]


def mgh_scale(img: nib.MGHImage) -> float:
    """Divisor that turns the file's values into % signal change (300 for integer files)."""
    return BETA_SCALE if np.issubdtype(img.get_data_dtype(), np.integer) else 1.0


def read_surface_session(path: Path, keep: np.ndarray, trial_batch: int = 50) -> np.ndarray:
    """One hemisphere's betas of one session at the kept vertices, in % signal change.

    Parameters
    ----------
    path : Path
        ``{hemi}.betas_sessionNN.mgh``, shape ``(n_vertices, 1, 1, 750)``.
    keep : ndarray of int, shape (n_kept,)
        Vertex indices to keep.
    trial_batch : int
        Trials read at once (memory: batch × n_vertices × 4 bytes).

    Returns
    -------
    ndarray of float32, shape (750, n_kept)
    """
    img = _load_mgh(path, "betas")
    if len(img.shape) != 4 or img.shape[3] != TRIALS_PER_SESSION:
        raise BrainpipeInputError(
            path, "shape", f"expected (vertices, 1, 1, {TRIALS_PER_SESSION}), got {img.shape}"
        )
    if len(keep) and keep.max() >= img.shape[0]:
        raise BrainpipeInputError(path, "vertices", f"has {img.shape[0]} vertices, need more")
    scale = mgh_scale(img)
    out = np.empty((TRIALS_PER_SESSION, len(keep)), dtype=np.float32)
    for t0 in range(0, TRIALS_PER_SESSION, trial_batch):
        t1 = min(TRIALS_PER_SESSION, t0 + trial_batch)
        raw = np.asarray(img.dataobj[:, 0, 0, t0:t1])  # (n_vertices, batch), contiguous
        np.divide(raw[keep].T, scale, out=out[t0:t1], dtype=np.float32, casting="unsafe")
        del raw
    return out


# --- ingest -------------------------------------------------------------------------------
def trial_coords(
    design: ExpDesign, subject: str, sessions: list[str], opts: NsdOptions
) -> dict[str, np.ndarray]:
    """``stimulus, session, run, onset`` of every trial, as the volume ingest makes them
    (runs and onsets from ``stimpattern``, see :meth:`ExpDesign.trial_timing`)."""
    timing = [design.trial_timing(s, opts.trial_period_s) for s in sessions]
    return {
        "stimulus": np.concatenate(
            [[stimulus_name(i) for i in design.trial_stimuli(subject, s)] for s in sessions]
        ),
        "session": np.repeat(np.asarray(sessions, dtype=str), TRIALS_PER_SESSION),
        "run": np.concatenate([[f"{r:02d}" for r in run] for run, _ in timing]),
        "onset": np.concatenate([onset for _, onset in timing]).astype(float),
    }


def ingest_nsd_surface_subject(
    root: str | Path,
    subject: str,
    sessions: list[str],
    out_path: str | Path,
    opts: NsdOptions,
    splits_tsv: str | Path | None = None,
    voxel_chunk: int = VOXEL_CHUNK,
    config: dict[str, Any] | None = None,
) -> Path:
    """Convert NSD's fsaverage betas of one subject into ``betas.zarr``.

    Session by session: both hemispheres' MGH files are read in batches of
    ``opts.trial_batch`` trials, the kept vertices (all, or ``nsdgeneral`` with
    ``source.mask: nsdgeneral``) taken, scaled to % signal change, optionally
    z-scored with training-trial statistics only, and written as the
    session's rows. Peak memory: one session of kept vertices (750 × n × 4 B)
    plus one batch of one hemisphere.

    Writes ``betas(trial, voxel)`` float32 with trial coords ``stimulus,
    session, run, onset``; voxel coords ``hemi``, ``vertex`` and ``roi_<name>``
    for the labels of every ROI file present on fsaverage; ``ncsnr``,
    ``nc_1trial``, ``nc_3trial``; ``r2`` NaN and ``hrf_index`` -1.

    Raises
    ------
    BrainpipeInputError
        A file is missing, is not a surface map, or its vertex count differs
        between files.
    """
    _check_space(opts)
    root = Path(root)
    design = read_expdesign(safe_local_path(root, EXPDESIGN_KEY))
    ncsnr_h, keep, roi_h = {}, {}, {}
    for hemi in HEMIS:
        ncsnr_h[hemi] = read_surface_map(
            safe_local_path(root, surface_ncsnr_key(subject, hemi, opts)), None, "ncsnr"
        ).astype(np.float32)
        n = len(ncsnr_h[hemi])
        labels = {}
        for roi_file in opts.roi_files:
            path = safe_local_path(root, surface_roi_key(hemi, roi_file))
            native = safe_local_path(root, native_roi_key(subject, hemi, roi_file))
            if path.exists():
                labels[roi_file] = read_surface_map(path, n, f"{roi_file} label")
            elif native.exists():  # the subject's native-surface label, mapped to fsaverage
                tpath = safe_local_path(root, native_to_fsaverage_key(subject, hemi))
                transform = read_surface_map(tpath, n, "white-to-fsaverage transform")
                labels[roi_file] = map_native_to_fsaverage(
                    read_surface_map(native, None, f"{roi_file} native label"), transform, tpath
                )
        roi_h[hemi] = labels
        kept = np.ones(n, dtype=bool)
        if opts.mask == "nsdgeneral":
            if "nsdgeneral" not in labels:
                raise BrainpipeInputError(
                    safe_local_path(root, surface_roi_key(hemi, "nsdgeneral")),
                    "<file>",
                    "source.mask: nsdgeneral needs this label file",
                )
            kept &= labels["nsdgeneral"] > 0
        keep[hemi] = np.flatnonzero(kept)
    hemi_of = np.concatenate([np.full(len(keep[h]), h) for h in HEMIS])
    vertex = np.concatenate([keep[h] for h in HEMIS]).astype(np.int32)
    n_vox = len(vertex)
    ncsnr = np.concatenate([ncsnr_h[h][keep[h]] for h in HEMIS])
    roi_coords: dict[str, tuple[str, np.ndarray]] = {}
    for roi_file, names in opts.roi_files.items():
        if not all(roi_file in roi_h[h] for h in HEMIS):
            log.warning("%s: no label file on fsaverage for both hemispheres, skipped", roi_file)
            continue
        values = np.concatenate([roi_h[h][roi_file][keep[h]] for h in HEMIS])
        for name, labels in names.items():
            roi_coords[f"roi_{name}"] = ("voxel", np.isin(values, labels))

    trials = trial_coords(design, subject, sessions, opts)
    split = None
    if splits_tsv is not None:
        mapped = pd.Series(trials["stimulus"]).map(read_splits(splits_tsv))
        if mapped.isna().any():
            raise BrainpipeInputError(
                splits_tsv,
                "stimulus",
                f"{trials['stimulus'][mapped.isna().to_numpy()][0]} has no split",
            )
        split = mapped.to_numpy(str)
    elif opts.zscore:
        raise BrainpipeInputError("config", "source.zscore", "z-scoring needs splits.tsv")

    n_trials = TRIALS_PER_SESSION * len(sessions)
    chunks = (TRIALS_PER_SESSION, min(voxel_chunk, max(n_vox, 1)))
    store = BetasLayout(
        compressors=(betas_codec(),),
        data_vars={
            "r2": ("voxel", np.full(n_vox, np.nan, np.float32)),
            "hrf_index": ("voxel", np.full(n_vox, -1, np.int16)),
            **noise_ceiling_vars(ncsnr),
        },
        coords={
            **{name: ("trial", values) for name, values in trials.items()},
            "hemi": ("voxel", hemi_of),
            "vertex": ("voxel", vertex),
            **roi_coords,
        },
        attrs={
            "subject": str(subject),
            "space": f"nsd-{SPACE}",
            "surface": SPACE,
            "n_vertices": {h: int(len(ncsnr_h[h])) for h in HEMIS},
            "tr": float(opts.tr),
            "units": "z-score (per session, training-trial statistics)"
            if opts.zscore
            else "percent signal change",
            "method": f"nsd:{opts.beta_version}",
            "source": f"s3://{opts.bucket}",
            "zscore": bool(opts.zscore),
            "stage": "betas",
            **provenance_attrs(config),
        },
    )
    with atomic_path(out_path) as tmp:
        betas = store.write(tmp, (n_trials, n_vox), chunks)
        store.finish()
        for n, ses in enumerate(
            tqdm(sessions, desc=f"NSD fsaverage sub-{subject}", unit="session")
        ):
            block = np.empty((TRIALS_PER_SESSION, n_vox), dtype=np.float32)
            start = 0
            for hemi in HEMIS:
                path = safe_local_path(root, surface_betas_key(subject, ses, hemi, opts))
                img = _load_mgh(path, "betas")
                if img.shape[0] != len(ncsnr_h[hemi]):
                    raise BrainpipeInputError(
                        path, "vertices", f"{img.shape[0]} vertices, ncsnr has {len(ncsnr_h[hemi])}"
                    )
                stop = start + len(keep[hemi])
                block[:, start:stop] = read_surface_session(path, keep[hemi], opts.trial_batch)
                start = stop
            rows = slice(n * TRIALS_PER_SESSION, (n + 1) * TRIALS_PER_SESSION)
            if opts.zscore:
                block = zscore_with_train_stats(block, split[rows] == "train", path)
            betas[rows, :] = block
            del block
            log.info("sub-%s session %s: %d trials × %d vertices", subject, ses,
                     TRIALS_PER_SESSION, n_vox)  # fmt: skip
        close_store(tmp)
    return Path(out_path)
