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

from brainpipe.bids import ALL_RUNS, BidsLayout, RunKey
from brainpipe.datasets.nsd_download import extract_stimuli, link_or_copy
from brainpipe.datasets.nsd_layout import (
    EXPDESIGN_KEY,
    STIM_INFO_KEY,
    NsdOptions,
    brainmask_key,
    check_sessions,
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


#: Task runs of every NSD session (cvnlab/nsddatapaper ``main/export.m``:
#: ``assert(length(a1.stimulus)==12)``).
TASK_RUNS = 12


# --- keys in the bucket -------------------------------------------------------------------
def run_number(run: str) -> int:
    """``"01"`` -> 1: a task run of an NSD session (1-12)."""
    try:
        n = int(run)
    except ValueError as err:
        raise BrainpipeInputError("config", "runs", f"NSD run {run!r}") from err
    if not 1 <= n <= TASK_RUNS:
        raise BrainpipeInputError(
            "config", "runs", f"NSD sessions have task runs 1-{TASK_RUNS}, got {run!r}"
        )
    return n


def rest_session(subject: str, session: str) -> bool:
    """Whether the session has resting-state runs (then 14 runs, first and last rest).

    cvnlab/nsddatapaper ``main/nsdsetup.m``: sessions 21-30 of every subject and 31-38
    of subjects 1 and 5 ("THIS DEFINES WHEN RESTING-STATE HAPPENED").
    """
    s, n = int(subject_label(subject)[4:]), session_number(session)
    return 21 <= n <= 30 or (s in (1, 5) and 31 <= n <= 38)


def file_run(subject: str, session: str, run: str) -> int:
    """Run number of a task run's files: the task run, + 1 in a resting-state session.

    NSD's export writes a resting-state session's runs as ``allruns([13 1:12 14])``:
    run 01 and run 14 are rest (all-zero design), task run n is file run n + 1.
    """
    return run_number(run) + (1 if rest_session(subject, session) else 0)


def _timeseries_dir(subject: str, opts: NsdOptions) -> str:
    return f"nsddata_timeseries/ppdata/{subject_label(subject)}/{opts.space}"


def _stem(subject: str, session: str, run: str) -> str:
    return f"session{session_number(session):02d}_run{file_run(subject, session, run):02d}"


def timeseries_key(subject: str, session: str, run: str, opts: NsdOptions) -> str:
    """Key of one task run's preprocessed 4-D time series (``run``: task run 1-12)."""
    stem = _stem(subject, session, run)
    return f"{_timeseries_dir(subject, opts)}/timeseries/timeseries_{stem}.nii.gz"


def design_key(subject: str, session: str, run: str, opts: NsdOptions) -> str:
    """Key of one task run's design file (one row per volume; ``run``: task run 1-12)."""
    return f"{_timeseries_dir(subject, opts)}/design/design_{_stem(subject, session, run)}.tsv"


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


def _place_bold(
    src: Path, dst: Path, tr: float, shape: tuple[int, ...], n_design: int | None = None
) -> int:
    """Put one run's time series at ``dst``; return its number of volumes.

    NSD's time series have one volume more than their design file (cvnlab/nsddatapaper
    ``main/export.m``: "trailing volumes of fMRI data must be dropped in order to
    match"): with ``n_design`` given, volumes past it are dropped (the run is rewritten;
    fewer volumes than the design is an error). Otherwise the file is hard-linked when
    its header's TR (pixdim[4]) is the space's TR or unset, and rewritten with that TR
    if not, so the header, the sidecar and the config agree (brainpipe.validation
    checks all three).
    """
    if not src.exists():
        raise BrainpipeInputError(src, "<file>", "time series is missing (run the fetch)")
    img = nib.load(src)
    if img.ndim != 4 or tuple(img.shape[:3]) != shape:
        raise BrainpipeInputError(
            src, "shape", f"expected a 4-D time series over the brain mask {shape}, got {img.shape}"
        )
    n_volumes = int(img.shape[3])
    if n_design is not None and n_volumes < n_design:
        raise BrainpipeInputError(
            src, "shape", f"{n_volumes} volumes, fewer than the design's {n_design} rows"
        )
    keep = n_volumes if n_design is None else n_design
    header_tr = float(img.header.get_zooms()[3])
    if keep == n_volumes and (header_tr <= 0 or np.isclose(header_tr, tr, rtol=TR_RTOL)):
        link_or_copy(src, dst)
    else:
        if keep < n_volumes:
            log.info("%s: %d trailing volume(s) past the design dropped", src.name,
                     n_volumes - keep)  # fmt: skip
        if not np.isclose(header_tr, tr, rtol=TR_RTOL):
            log.info("%s: header TR %.4g s rewritten to %.6g s", src.name, header_tr, tr)
        header = img.header.copy()
        header.set_zooms((*img.header.get_zooms()[:3], tr))
        header.set_xyzt_units(xyz="mm", t="sec")
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = np.asanyarray(img.dataobj[..., :keep])
        nib.save(nib.Nifti1Image(data, img.affine, header), dst)
    return keep


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
            design = read_design_tsv(safe_local_path(objects, design_key(subject, ses, run, opts)))
            n_volumes = _place_bold(src, layout.bold(key), tr, shape, n_design=len(design))
            if not (design > 0).any():
                raise BrainpipeInputError(
                    safe_local_path(objects, design_key(subject, ses, run, opts)),
                    "<rows>",
                    "no trial in this run's design (a resting-state run?)",
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
    runs: list[str] | str,
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
        Config keys ``subjects``, ``sessions``, ``runs`` (``"01"`` …; ``"all"``: the 12
        task runs).
    opts : NsdOptions
        ``space`` must be a volume space (:data:`TIMESERIES_TR`).
    task : str
        BIDS task label (config key ``task``).
    """
    check_timeseries_space(opts)
    check_sessions(subjects, sessions)
    if runs == ALL_RUNS:  # every NSD session has 12 task runs
        runs = [f"{n:02d}" for n in range(1, TASK_RUNS + 1)]
    if not runs:
        raise BrainpipeInputError("config", "runs", "the NSD time-series path needs runs")
    dest = Path(dest)
    cache = Path(cache) if cache else dest.with_name(f".{dest.name}-objects")
    source = opts.source()
    keys = [EXPDESIGN_KEY, *([STIM_INFO_KEY] if opts.captions else [])]
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
        extract_stimuli(
            source, opts, np.array(sorted(ids)), design.sharedix, tmp / "stimuli", cache
        )
    return dest
