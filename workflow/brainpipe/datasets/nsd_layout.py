"""What NSD publishes and where: spaces, sessions, bucket keys, the experiment design.

Conventions and the published source of each: ``docs/datasets/nsd.md``. Every other
NSD module builds on these names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.io

from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import WORKERS, S3Source
from brainpipe.storage import (
    write_text_atomic,
)

log = logging.getLogger(__name__)


#: Scale of the int16 betas in the HDF5 files (percent signal change × 300).
BETA_SCALE = 300.0
TRIALS_PER_SESSION = 750
#: Beta versions NSD publishes.
BETA_VERSIONS = ("betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf")


#: Spaces ingest supports: volumes here, the fsaverage surface in nsd_surface.
SPACES = ("func1pt8mm", "func1mm", "fsaverage")
#: TR of each volume space's preparation (s): ``tr = [1 4/3]`` for func1mm, func1pt8mm in
#: cvnlab/nsddatapaper ``main/export.m``.
SPACE_TR = {"func1pt8mm": 4.0 / 3.0, "func1mm": 1.0}
#: Sessions each subject completed (all released since 2023):
#: ``nsess = [40 40 32 30 40 32 40 30]`` in cvnlab/nsddatapaper ``main/export_noiseceiling.m``.
SESSIONS_PER_SUBJECT = {
    f"subj{n:02d}": k for n, k in enumerate((40, 40, 32, 30, 40, 32, 40, 30), 1)
}
#: The public bucket's region (``source.region`` overrides it).
BUCKET_REGION = "us-east-2"


def check_sessions(subjects: list[str], sessions: list[str]) -> None:
    """Raise, naming subject and session, if a requested session was never recorded.

    Called before any download, so a request for, say, session 35 of subject 03 stops
    with a clear message instead of a 404 after other files were fetched.
    """
    for subject in subjects:
        label = subject_label(subject)
        n_max = SESSIONS_PER_SUBJECT[label]
        for ses in sessions:
            if session_number(ses) > n_max:
                raise BrainpipeInputError(
                    "config",
                    "sessions",
                    f"NSD subject {subject} ({label}) has sessions 1-{n_max}; "
                    f"session {ses} does not exist",
                )


@dataclass(frozen=True)
class NsdOptions:
    """What to fetch and how to ingest it (the ``source`` block merged over the registry)."""

    bucket: str = "natural-scenes-dataset"
    endpoint_url: str | None = None
    anonymous: bool = True
    region: str = BUCKET_REGION
    space: str = "func1pt8mm"
    beta_version: str = "betas_fithrf_GLMdenoise_RR"
    mask: str = "brainmask"  # voxels kept: "brainmask" or "nsdgeneral"
    zscore: bool = False  # per-session z-scoring, statistics from training trials only
    stimuli: bool = True  # extract the images the trials use (range reads of the HDF5)
    stimuli_file: str | None = None  # a local copy of nsd_stimuli.hdf5 instead of range reads
    workers: int = WORKERS  # source.workers: in a workflow run, the job's threads
    stream_betas: bool = True  # fetch each session's betas during ingest, gathering as it arrives
    cache_dir: str | None = None  # fetched objects (None: beside the data folder)
    trial_batch: int = 50  # trials read from HDF5 at once (memory: batch × volume × 2 bytes)
    trial_period_s: float = 4.0
    roi_files: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # COCO caption files joined on cocoId (brainpipe.datasets.nsd_captions); None: no captions
    captions: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, block: dict[str, Any] | None) -> NsdOptions:
        """Build from a mapping, checking each value (unknown keys are ignored)."""
        block = dict(block or {})
        kwargs = {k: block[k] for k in cls.__dataclass_fields__ if k in block}
        opts = cls(**kwargs)
        if opts.space not in SPACES:
            raise BrainpipeInputError(
                "config", "source.space", f"expected one of {list(SPACES)}, got {opts.space!r}"
            )
        if opts.beta_version not in BETA_VERSIONS:
            raise BrainpipeInputError(
                "config",
                "source.beta_version",
                f"expected one of {list(BETA_VERSIONS)}, got {opts.beta_version!r}",
            )
        if opts.space == "func1mm" and opts.beta_version == "betas_assumehrf":
            raise BrainpipeInputError(
                "config",
                "source.beta_version",
                "NSD publishes betas_assumehrf at func1pt8mm only (use betas_fithrf or "
                "betas_fithrf_GLMdenoise_RR at func1mm)",
            )
        if opts.mask not in ("brainmask", "nsdgeneral"):
            raise BrainpipeInputError(
                "config", "source.mask", f"expected 'brainmask' or 'nsdgeneral', got {opts.mask!r}"
            )
        return opts

    def source(self) -> S3Source:
        """The bucket to fetch from."""
        return S3Source(
            self.bucket, endpoint_url=self.endpoint_url, anonymous=self.anonymous,
            region=self.region,
        )  # fmt: skip

    @property
    def tr(self) -> float:
        """TR (s) of the space's preparation: 1 s at func1mm, 4/3 s at func1pt8mm.

        fsaverage betas carry no TR of their own; 4/3 s (the registry's) is recorded.
        """
        return SPACE_TR.get(self.space, SPACE_TR["func1pt8mm"])


def subject_label(subject: str) -> str:
    """NSD's subject folder name: ``"01"`` or ``"1"`` -> ``"subj01"``."""
    try:
        n = int(str(subject).removeprefix("subj"))
    except ValueError as err:
        raise BrainpipeInputError("config", "subjects", f"NSD subject {subject!r}") from err
    if not 1 <= n <= 8:
        raise BrainpipeInputError("config", "subjects", f"NSD has subjects 1-8, got {subject!r}")
    return f"subj{n:02d}"


def session_number(session: str) -> int:
    """``"01"`` -> 1 (NSD has up to 40 sessions)."""
    try:
        n = int(session)
    except ValueError as err:
        raise BrainpipeInputError("config", "sessions", f"NSD session {session!r}") from err
    if not 1 <= n <= 40:
        raise BrainpipeInputError("config", "sessions", f"NSD has sessions 1-40, got {session!r}")
    return n


# --- keys in the bucket -------------------------------------------------------------------
EXPDESIGN_KEY = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO_KEY = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI_KEY = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"


def betas_key(subject: str, session: str, opts: NsdOptions) -> str:
    """Key of one session's betas HDF5."""
    return (
        f"nsddata_betas/ppdata/{subject_label(subject)}/{opts.space}/{opts.beta_version}/"
        f"betas_session{session_number(session):02d}.hdf5"
    )


def ncsnr_key(subject: str, opts: NsdOptions) -> str:
    """Key of the subject's noise-ceiling SNR volume."""
    return betas_key(subject, "01", opts).rsplit("/", 1)[0] + "/ncsnr.nii.gz"


def brainmask_key(subject: str, opts: NsdOptions) -> str:
    """Key of the subject's brain mask in functional space."""
    return f"nsddata/ppdata/{subject_label(subject)}/{opts.space}/brainmask.nii.gz"


def valid_key(subject: str, session: str, opts: NsdOptions) -> str:
    """Key of the session's valid-voxel volume (1: data valid in every run of the session).

    NSD's export (``main/export.m``) writes ``valid_sessionNN.nii.gz`` beside the brain
    mask; its betas of invalid voxels are all 0 (``main/export_noiseceiling.m``).
    """
    return (
        f"nsddata/ppdata/{subject_label(subject)}/{opts.space}/"
        f"valid_session{session_number(session):02d}.nii.gz"
    )


def roi_key(subject: str, roi_file: str, opts: NsdOptions) -> str:
    """Key of one ROI label volume (``nsdgeneral``, ``prf-visualrois``, ``floc-faces``, …)."""
    return f"nsddata/ppdata/{subject_label(subject)}/{opts.space}/roi/{roi_file}.nii.gz"


def subject_keys(
    subject: str, sessions: list[str], opts: NsdOptions, betas: bool = True
) -> list[str]:
    """Every key ingest needs for one subject (``betas=False``: all but the session betas)."""
    return [
        brainmask_key(subject, opts),
        ncsnr_key(subject, opts),
        *(roi_key(subject, name, opts) for name in opts.roi_files),
        *(valid_key(subject, ses, opts) for ses in sessions),
        *(betas_key(subject, ses, opts) for ses in sessions if betas),
    ]


def object_cache(data_root: str | Path, opts: NsdOptions | None = None) -> Path:
    """Where fetched objects persist across runs: ``source.cache_dir`` if set, else
    ``data/.nsd-objects`` beside ``data/nsd``."""
    if opts is not None and opts.cache_dir:
        return Path(opts.cache_dir)
    data_root = Path(data_root)
    return data_root.with_name(f".{data_root.name}-objects")


# --- design -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpDesign:
    """``nsd_expdesign.mat``, converted to 0-based indices."""

    masterordering: np.ndarray  # (30000,) index into the subject's 10,000 images
    subjectim: np.ndarray  # (8, 10000) 73k id of each subject image
    sharedix: np.ndarray  # (1000,) 73k ids of the shared images
    stimpattern: np.ndarray | None = None  # (40, 12, 75) bool: a trial starts in the slot

    def trial_timing(self, session: str, period_s: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
        """Task run (1-12) and onset (s from the run's start) of a session's 750 trials.

        From ``stimpattern``: the trials of the session fill, in order, the slots marked
        1 of runs 1..12; slot ``s`` (0-based) starts at ``s × period_s``. Runs start with
        blank slots and hold blanks at random (NSD's export checks the design tsv
        onsets against it: cvnlab/nsddatapaper ``main/export.m``).
        """
        if self.stimpattern is None:
            raise BrainpipeInputError(
                "nsd_expdesign.mat", "stimpattern", "variable is missing (needed for onsets)"
            )
        pattern = self.stimpattern[session_number(session) - 1]
        run, slot = np.nonzero(pattern)  # row-major: run by run, slots in order
        if len(run) != TRIALS_PER_SESSION:
            raise BrainpipeInputError(
                "nsd_expdesign.mat",
                "stimpattern",
                f"session {session} has {len(run)} trial slots, expected {TRIALS_PER_SESSION}",
            )
        return run + 1, slot * float(period_s)

    def trial_stimuli(self, subject: str, session: str) -> np.ndarray:
        """0-based 73k ids of the 750 trials of one session, shape (750,)."""
        s = int(subject_label(subject)[4:]) - 1
        n = session_number(session) - 1
        order = self.masterordering[n * TRIALS_PER_SESSION : (n + 1) * TRIALS_PER_SESSION]
        return self.subjectim[s, order]


def read_expdesign(path: str | Path) -> ExpDesign:
    """Read ``nsd_expdesign.mat`` (MATLAB v5, scipy.io) and check its fields.

    Raises
    ------
    BrainpipeInputError
        A field is missing, or an index is out of range.
    """
    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except (OSError, ValueError, NotImplementedError) as err:
        raise BrainpipeInputError(path, "<file>", f"not a readable MATLAB file ({err})") from err
    fields = {}
    for name in ("masterordering", "subjectim", "sharedix"):
        if name not in mat:
            raise BrainpipeInputError(path, name, "variable is missing")
        fields[name] = np.asarray(mat[name]).astype(np.int64)
    pattern = None
    if "stimpattern" in mat:
        pattern = np.asarray(mat["stimpattern"]) > 0
        if pattern.ndim != 3 or pattern.shape[0] < 1:
            raise BrainpipeInputError(
                path, "stimpattern", f"expected (sessions, runs, slots), got {pattern.shape}"
            )
    order = fields["masterordering"].ravel() - 1
    subjectim = np.atleast_2d(fields["subjectim"]) - 1
    shared = fields["sharedix"].ravel() - 1
    if order.min() < 0 or order.max() >= subjectim.shape[1]:
        raise BrainpipeInputError(
            path, "masterordering", f"values must be in 1..{subjectim.shape[1]} (1-based)"
        )
    if subjectim.min() < 0 or shared.min() < 0:
        raise BrainpipeInputError(path, "subjectim", "73k ids must be >= 1 (1-based)")
    return ExpDesign(order, subjectim, shared, pattern)


def stimulus_name(nsd_id: int) -> str:
    """brainpipe's stimulus label of a 0-based 73k id."""
    return f"nsd-{int(nsd_id):05d}"


def make_nsd_splits(
    expdesign: str | Path, subjects: list[str], sessions: list[str], out_tsv: str | Path
) -> pd.DataFrame:
    """Write ``splits.tsv``: every image the subjects see in ``sessions``; shared-1000 = test."""
    design = read_expdesign(expdesign)
    ids = np.unique(
        np.concatenate([design.trial_stimuli(s, ses) for s in subjects for ses in sessions])
    )
    shared = np.isin(ids, design.sharedix)
    table = pd.DataFrame(
        {
            "stimulus": [stimulus_name(i) for i in ids],
            "split": np.where(shared, "test", "train"),
            "shared": shared.astype(int),
        }
    )
    write_text_atomic(table.to_csv(sep="\t", index=False), out_tsv)
    return table
