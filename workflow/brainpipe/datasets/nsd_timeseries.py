"""NSD from its preprocessed time series: fetch them and lay them out for our own betas stage.

Selected with ``source.betas: estimate`` for ``dataset: nsd`` (the default,
``ingest``, converts NSD's own betas; see :mod:`brainpipe.datasets.nsd`).
Instead of a new betas path, this module translates NSD's files into the BIDS
layout the synthetic and OpenNeuro datasets use (:class:`brainpipe.bids.BidsLayout`),
so ``validate_inputs → preprocess → betas → splits`` run unchanged.

Bucket keys (``{subj}`` = ``subj01`` …, ``{space}`` = ``func1pt8mm`` or ``func1mm``)::

    nsddata_timeseries/ppdata/{subj}/{space}/timeseries/timeseries_session{SS}_run{RR}.nii.gz
    nsddata_timeseries/ppdata/{subj}/{space}/design/design_session{SS}_run{RR}.tsv
    nsddata/ppdata/{subj}/{space}/brainmask.nii.gz, roi/{roi}.nii.gz   (as for betas ingest)
    nsddata/experiments/nsd/nsd_expdesign.mat                          (sharedix: test split)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5                       (range reads only)

A time series is 4-D ``(I, J, K, T)`` in the volume space (TR 4/3 s for
``func1pt8mm`` after NSD's upsampling of the 1.6 s acquisition, 1 s for
``func1mm``). A design file has one row per volume: the 1-based 73k id of the
image whose 3-s presentation starts at that volume, 0 otherwise.

What lands in the data folder (``{data_dir}/nsd``)::

    dataset_description.json
    sub-{S}/anat/sub-{S}_space-synth_desc-brain_mask.nii.gz      brainmask (∧ nsdgeneral)
    sub-{S}/ses-{SS}/func/sub-{S}_ses-{SS}_task-{task}_run-{RR}_bold.nii.gz   (hard link)
    sub-{S}/ses-{SS}/func/..._bold.json                            RepetitionTime
    sub-{S}/ses-{SS}/func/..._events.tsv                           onset = volume × TR, 3 s
    derivatives/rois/sub-{S}/sub-{S}_space-synth_roi-{NAME}_mask.nii.gz   one per ROI label
    stimuli/stimuli.tsv, stimuli/images/nsd-NNNNN.png               shared = NSD shared 1000

``{S}``, ``{SS}``, ``{RR}`` are the config's ``subjects``, ``sessions`` and
``runs`` as written (``"01"``). Stimuli are named ``nsd-NNNNN`` with the 0-based
73k id, as in the ingest path, and the ``shared`` column marks NSD's shared
1000, so the ordinary ``splits`` rule puts them in the test split (with
``splits.shared_train_fraction: 0``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainpipe.bids import BidsLayout, RunKey
from brainpipe.datasets.nsd import (
    EXPDESIGN_KEY,
    NsdOptions,
    brainmask_key,
    extract_stimuli,
    link_or_copy,
    read_expdesign,
    roi_key,
    session_number,
    stimulus_name,
    subject_label,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import fetch_objects, safe_local_path
from brainpipe.storage import atomic_path, write_text_atomic

log = logging.getLogger(__name__)

#: Volume spaces NSD publishes time series in, and their TR in seconds.
TIMESERIES_TR = {"func1pt8mm": 4.0 / 3.0, "func1mm": 1.0}
#: Image presentation time of an NSD trial (3 s image, 1 s gap).
TRIAL_DURATION_S = 3.0
#: ``trial_type`` of every NSD event.
TRIAL_TYPE = "image"
#: Largest 1-based id a design file may hold.
N_IMAGES = 73000
#: Relative tolerance between the NIfTI header's TR and the space's TR.
TR_RTOL = 1e-3


# --- keys in the bucket -------------------------------------------------------------------
def run_number(run: str) -> int:
    """``"01"`` -> 1 (NSD sessions have 12 task runs, 14 with resting-state runs)."""
    try:
        n = int(run)
    except ValueError as err:
        raise BrainpipeInputError("config", "runs", f"NSD run {run!r}") from err
    if not 1 <= n <= 99:
        raise BrainpipeInputError("config", "runs", f"NSD runs are 1-based, got {run!r}")
    return n


def _timeseries_dir(subject: str, opts: NsdOptions) -> str:
    return f"nsddata_timeseries/ppdata/{subject_label(subject)}/{opts.space}"


def _stem(session: str, run: str) -> str:
    return f"session{session_number(session):02d}_run{run_number(run):02d}"


def timeseries_key(subject: str, session: str, run: str, opts: NsdOptions) -> str:
    """Key of one run's preprocessed 4-D time series."""
    return f"{_timeseries_dir(subject, opts)}/timeseries/timeseries_{_stem(session, run)}.nii.gz"


def design_key(subject: str, session: str, run: str, opts: NsdOptions) -> str:
    """Key of one run's design file (one row per volume)."""
    return f"{_timeseries_dir(subject, opts)}/design/design_{_stem(session, run)}.tsv"


def timeseries_subject_keys(
    subject: str, sessions: list[str], runs: list[str], opts: NsdOptions
) -> list[str]:
    """Every key the time-series path needs for one subject."""
    keys = [brainmask_key(subject, opts), *(roi_key(subject, f, opts) for f in opts.roi_files)]
    for ses in sessions:
        for run in runs:
            keys += [timeseries_key(subject, ses, run, opts), design_key(subject, ses, run, opts)]
    return keys


def check_timeseries_space(opts: NsdOptions) -> float:
    """The TR of ``opts.space``; raises if NSD has no time series there."""
    if opts.space not in TIMESERIES_TR:
        raise BrainpipeInputError(
            "config",
            "source.space",
            f"NSD time series exist in {list(TIMESERIES_TR)}, got {opts.space!r} "
            "(use source.betas: ingest for fsaverage)",
        )
    return TIMESERIES_TR[opts.space]


# --- design -------------------------------------------------------------------------------
def read_design_tsv(path: str | Path, n_volumes: int | None = None) -> np.ndarray:
    """Read a design file: 1-based 73k id per volume (0 = no onset).

    Parameters
    ----------
    path : path
        ``design_sessionSS_runRR.tsv`` (one integer per row, no header).
    n_volumes : int, optional
        Volumes of the run's time series; the file must have as many rows.

    Returns
    -------
    ndarray of int64, shape (n_volumes,)

    Raises
    ------
    BrainpipeInputError
        Not one integer per row, a value outside 0..73000, or a row count that
        differs from the time series.
    """
    path = Path(path)
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", "design file is missing (run the fetch)")
    try:
        raw = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as err:
        raise BrainpipeInputError(path, "<rows>", f"expected one integer per row ({err})") from err
    if raw.ndim != 1:
        raise BrainpipeInputError(path, "<rows>", f"expected one column, got shape {raw.shape}")
    ids = raw.astype(np.int64)
    bad = (ids != raw) | (ids < 0) | (ids > N_IMAGES)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BrainpipeInputError(
            path,
            f"row {row + 1}",
            f"expected 0 or a 1-based 73k id (1..{N_IMAGES}), got {raw[row]}",
        )
    if n_volumes is not None and len(ids) != n_volumes:
        raise BrainpipeInputError(
            path, "<rows>", f"{len(ids)} rows, but the time series has {n_volumes} volumes"
        )
    return ids


def design_events(ids: np.ndarray, tr: float) -> pd.DataFrame:
    """BIDS events of one run from its design column.

    Parameters
    ----------
    ids : ndarray of int, shape (n_volumes,)
        From :func:`read_design_tsv`.
    tr : float
        Seconds per volume.

    Returns
    -------
    DataFrame with ``onset`` (volume index × TR, s), ``duration`` (3 s),
    ``trial_type`` (``image``) and ``stimulus`` (``nsd-NNNNN``, 0-based id).
    """
    volumes = np.flatnonzero(ids > 0)
    return pd.DataFrame(
        {
            "onset": volumes * float(tr),
            "duration": TRIAL_DURATION_S,
            "trial_type": TRIAL_TYPE,
            "stimulus": [stimulus_name(i - 1) for i in ids[volumes]],
        }
    )


# --- download and layout ------------------------------------------------------------------


def _place_bold(src: Path, dst: Path, tr: float, shape: tuple[int, ...]) -> int:
    """Put one run's time series at ``dst``; return its number of volumes.

    Hard-linked when its header's TR (pixdim[4]) is the space's TR or unset;
    otherwise rewritten with that TR, so the header, the sidecar and the
    config agree (brainpipe.validation checks all three).
    """
    if not src.exists():
        raise BrainpipeInputError(src, "<file>", "time series is missing (run the fetch)")
    img = nib.load(src)
    if img.ndim != 4 or tuple(img.shape[:3]) != shape:
        raise BrainpipeInputError(
            src, "shape", f"expected a 4-D time series over the brain mask {shape}, got {img.shape}"
        )
    header_tr = float(img.header.get_zooms()[3])
    if header_tr <= 0 or np.isclose(header_tr, tr, rtol=TR_RTOL):
        link_or_copy(src, dst)
    else:
        log.info("%s: header TR %.4g s rewritten to %.6g s", src.name, header_tr, tr)
        header = img.header.copy()
        header.set_zooms((*img.header.get_zooms()[:3], tr))
        header.set_xyzt_units(xyz="mm", t="sec")
        dst.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, header), dst)
    return int(img.shape[3])


def _save_mask(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    nib.save(img, path)


def layout_subject(
    objects: Path,
    tmp: Path,
    subject: str,
    sessions: list[str],
    runs: list[str],
    opts: NsdOptions,
    task: str,
) -> set[int]:
    """Write one subject's BIDS files under ``tmp`` from the fetched ``objects``.

    Returns
    -------
    set of int
        0-based 73k ids of the images the subject's runs show.
    """
    tr = check_timeseries_space(opts)
    layout = BidsLayout(tmp, task)
    mask_path = safe_local_path(objects, brainmask_key(subject, opts))
    if not mask_path.exists():
        raise BrainpipeInputError(mask_path, "<file>", "brainmask volume is missing")
    mask_img = nib.load(mask_path)
    shape = tuple(int(n) for n in mask_img.shape[:3])
    mask = np.asarray(mask_img.dataobj) > 0
    for roi_file, labels in opts.roi_files.items():
        path = safe_local_path(objects, roi_key(subject, roi_file, opts))
        vol = np.asarray(nib.load(path).dataobj)
        if vol.shape[:3] != shape:
            raise BrainpipeInputError(
                path, "shape", f"{roi_file} must match the brain mask {shape}, got {vol.shape}"
            )
        if roi_file == "nsdgeneral" and opts.mask == "nsdgeneral":
            mask &= vol > 0
        for name, values in labels.items():
            _save_mask(np.isin(vol, values), mask_img.affine, layout.roi_mask(subject, name))
    if opts.mask == "nsdgeneral" and "nsdgeneral" not in opts.roi_files:
        raise BrainpipeInputError("config", "source.mask", "nsdgeneral needs roi_files.nsdgeneral")
    _save_mask(mask, mask_img.affine, layout.brain_mask(subject))

    ids: set[int] = set()
    for ses in sessions:
        for run in runs:
            key = RunKey(subject, ses, run)
            src = safe_local_path(objects, timeseries_key(subject, ses, run, opts))
            n_volumes = _place_bold(src, layout.bold(key), tr, shape)
            design = read_design_tsv(
                safe_local_path(objects, design_key(subject, ses, run, opts)), n_volumes
            )
            events = design_events(design, tr)
            write_text_atomic(
                events.to_csv(sep="\t", index=False, float_format="%.6f"), layout.events(key)
            )
            sidecar = {
                "RepetitionTime": tr,
                "TaskName": task,
                "Sources": [f"bucket:{timeseries_key(subject, ses, run, opts)}"],
            }
            write_text_atomic(json.dumps(sidecar, indent=2), layout.sidecar(key))
            ids.update(int(i) - 1 for i in design[design > 0])
            log.info("sub-%s ses-%s run-%s: %d volumes, %d trials", subject, ses, run,
                     n_volumes, len(events))  # fmt: skip
    return ids


def download_nsd_timeseries(
    dest: str | Path,
    subjects: list[str],
    sessions: list[str],
    runs: list[str],
    opts: NsdOptions,
    task: str = "nsd",
    cache: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fetch NSD's time series of ``subjects × sessions × runs`` and lay them out as BIDS.

    Objects go to ``cache`` (a mirror of the bucket's keys that persists, so
    transfers resume); ``dest`` is built atomically: BOLD runs are hard links
    to the cache (rewritten only if their header TR disagrees), events,
    sidecars, masks and ROI masks are written, and ``stimuli/`` holds the
    images the runs show (range reads of the stimulus HDF5).

    Parameters
    ----------
    dest : path
        The data folder (``{data_dir}/nsd``).
    subjects, sessions, runs : list of str
        Config keys ``subjects``, ``sessions``, ``runs`` (``"01"`` …).
    opts : NsdOptions
        ``space`` must be a volume space (:data:`TIMESERIES_TR`).
    task : str
        BIDS task label (config key ``task``).
    """
    check_timeseries_space(opts)
    if not runs:
        raise BrainpipeInputError("config", "runs", "the NSD time-series path needs runs")
    dest = Path(dest)
    cache = Path(cache) if cache else dest.with_name(f".{dest.name}-objects")
    source = opts.source()
    keys = [EXPDESIGN_KEY]
    for subject in subjects:
        keys += timeseries_subject_keys(subject, sessions, runs, opts)
    log.info("NSD time series: %d objects from %s into %s", len(keys), source.url(""), cache)
    fetch_objects(source, keys, cache, workers=opts.workers, progress=progress)
    design = read_expdesign(safe_local_path(cache, EXPDESIGN_KEY))
    with atomic_path(dest) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        description = {
            "Name": "Natural Scenes Dataset (preprocessed time series)",
            "BIDSVersion": "1.8.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "brainpipe", "Description": "nsd_timeseries layout"}],
            "SourceDatasets": [{"URL": source.url(f"nsddata_timeseries/ppdata/ ({opts.space})")}],
        }
        (tmp / "dataset_description.json").write_text(json.dumps(description, indent=2))
        ids: set[int] = set()
        for subject in subjects:
            ids |= layout_subject(cache, tmp, subject, sessions, runs, opts, task)
        if not ids:
            raise BrainpipeInputError(
                safe_local_path(cache, design_key(subjects[0], sessions[0], runs[0], opts)),
                "<rows>",
                "no design file of the selected runs has a trial",
            )
        # The images the runs show; shared = NSD's shared 1000 (the test split).
        extract_stimuli(source, opts, np.array(sorted(ids)), design.sharedix, tmp / "stimuli")
    return dest
