"""The Natural Scenes Dataset (NSD): download from its public bucket and ingest its betas.

Bucket layout (``s3://natural-scenes-dataset``, anonymous), as documented in the
NSD data manual; ``{subj}`` is ``subj01`` … ``subj08``, ``{space}`` is
``func1pt8mm`` or ``func1mm``, ``{version}`` e.g. ``betas_fithrf_GLMdenoise_RR``::

    nsddata/experiments/nsd/nsd_expdesign.mat             masterordering, subjectim, sharedix
    nsddata/experiments/nsd/nsd_stim_info_merged.csv      one row per 73k image (nsdId 0-based)
    nsddata/ppdata/{subj}/{space}/brainmask.nii.gz        voxels brainpipe keeps (or nsdgeneral)
    nsddata/ppdata/{subj}/{space}/roi/{roi}.nii.gz        label volumes: nsdgeneral,
                                                          prf-visualrois, floc-faces, ...
    nsddata_betas/ppdata/{subj}/{space}/{version}/betas_session{NN}.hdf5   /betas int16 ×300
    nsddata_betas/ppdata/{subj}/{space}/{version}/ncsnr.nii.gz
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5          /imgBrick 73000×425×425×3 uint8

Axis order. The betas HDF5 files were written by MATLAB, so HDF5 (C order)
sees the axes reversed: ``/betas`` has shape ``(750, K, J, I)`` = ``(750, 83,
104, 81)`` at 1.8 mm, while the NIfTI volumes (brain mask, ROIs, ncsnr) have
shape ``(I, J, K)`` = ``(81, 104, 83)``. Voxel ``(i, j, k)`` of the NIfTI is
``betas[t, k, j, i]``; :func:`hdf5_voxel_index` does that mapping explicitly.

Design. ``masterordering`` (1 × 30000, 1-based) gives, for the t-th trial of
the experiment (session ``t // 750``), the index of the image among the
subject's 10,000; ``subjectim`` (8 × 10000, 1-based) maps that to the 73k id;
``sharedix`` (1 × 1000, 1-based) lists the shared-1000 images, the test split.
brainpipe names stimuli ``nsd-NNNNN`` with the 0-based 73k id (the ``nsdId``
of ``nsd_stim_info_merged.csv`` and the row of ``imgBrick``).

Runs and onsets. Each session has 12 task runs of 75 four-second slots; which
slots hold a trial is ``stimpattern`` (40 × 12 × 75) in ``nsd_expdesign.mat``, so
the ``run`` coord is the task run (01-12) and ``onset`` the slot's start in its run
(runs start with blank slots and hold random blanks). Sessions with resting state
have two more runs (first and last, all blank); the time-series files number runs
with them (see :mod:`.nsd_timeseries`), the task runs here do not.

Which published file each convention comes from: ``docs/datasets/nsd.md``.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from tqdm.auto import tqdm
from zarr.codecs import BloscCodec

from brainpipe.datasets.nsd_chunks import read_chunked_voxels, voxel_chunk_addresses
from brainpipe.errors import BrainpipeInputError
from brainpipe.metrics import noise_ceiling
from brainpipe.remote import RangeFile, S3Source, fetch_objects, safe_local_path
from brainpipe.splits import read_splits
from brainpipe.storage import (
    atomic_path,
    provenance_attrs,
    quiet_consolidated,
    write_text_atomic,
)

log = logging.getLogger(__name__)

#: Scale of the int16 betas in the HDF5 files (percent signal change × 300).
BETA_SCALE = 300.0
TRIALS_PER_SESSION = 750
#: Beta versions NSD publishes.
BETA_VERSIONS = ("betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf")
#: A fast compressor for betas arrays: Blosc-LZ4 with bit shuffle compresses float32 betas
#: as well as byte shuffle at ~2x its speed, ~5x zstd's; any reader decodes it.
BETAS_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
#: Compressors of the volume betas in betas.zarr: none. NSD's betas (int16 / 300 as
#: float32) are high-entropy; Blosc saved 8 % of the bytes (0.92 ratio on a session) but
#: cost ~40 % of the ingest's write time (and every later read's decode).
BETAS_COMPRESSORS: tuple = ()


def betas_int16_filter() -> Any:
    """The filter that stores NSD's betas as the int16 × 300 they ship as, read as float32.

    Exact: decoding gives ``np.divide(int16, 300, dtype=float32)`` bit for bit, so
    readers see the contract's float32 % signal change, from half the bytes (NSD at
    1.8 mm: ~125 GB instead of ~250 GB). Z-scored betas are not on that grid and stay
    float32.
    """
    from zarr.codecs.numcodecs import FixedScaleOffset

    from brainpipe.storage import quiet_consolidated

    with quiet_consolidated():
        return FixedScaleOffset(offset=0, scale=int(BETA_SCALE), dtype="<f4", astype="<i2")


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
    workers: int = 4
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


# --- download -----------------------------------------------------------------------------
def download_nsd(
    dest: str | Path,
    subjects: list[str],
    sessions: list[str],
    opts: NsdOptions,
    cache: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Fetch what ingest needs for ``subjects`` × ``sessions`` and lay it out under ``dest``.

    Objects go to ``cache`` (a mirror of the bucket's keys that persists across
    failed runs, so transfers resume); ``dest`` is then built atomically from
    hard links to them (copies across file systems), plus ``stimuli/`` with the
    images the trials use (read by range requests from the 40 GB stimulus file,
    never downloaded whole) and ``stimuli/stimuli.tsv``. With
    ``opts.stream_betas`` the session betas are left to ingest, which fetches
    them into the same cache while it converts them (:mod:`.nsd_stream`).
    """
    check_sessions(subjects, sessions)
    dest = Path(dest)
    cache = Path(cache) if cache else object_cache(dest)
    source = opts.source()
    keys = [EXPDESIGN_KEY, STIM_INFO_KEY]
    for subject in subjects:
        keys += subject_keys(subject, sessions, opts, betas=not opts.stream_betas)
    log.info("NSD: %d objects from %s into %s", len(keys), source.url(""), cache)
    fetch_objects(source, keys, cache, workers=opts.workers, progress=progress)
    return assemble_from_cache(dest, cache, keys, source, opts, subjects, sessions)


def assemble_from_cache(
    dest: Path,
    cache: Path,
    keys: list[str],
    source: S3Source,
    opts: NsdOptions,
    subjects: list[str],
    sessions: list[str],
) -> Path:
    """Build ``dest`` atomically from hard links to the fetched ``keys`` in ``cache``.

    Adds ``stimuli/`` (the images the trials of ``subjects`` x ``sessions`` use, by range
    reads) when ``opts.stimuli``. Shared by the volume and the fsaverage downloads.
    """
    with atomic_path(dest) as tmp:
        for key in keys:
            link_or_copy(safe_local_path(cache, key), safe_local_path(tmp, key))
        if opts.stimuli:
            design = read_expdesign(safe_local_path(cache, EXPDESIGN_KEY))
            ids = np.unique(
                np.concatenate([design.trial_stimuli(s, ses) for s in subjects for ses in sessions])
            )
            extract_stimuli(source, opts, ids, design.sharedix, Path(tmp) / "stimuli", cache)
    return dest


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy across file systems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copy2(src, dst)


def extract_stimuli(
    source: S3Source,
    opts: NsdOptions,
    ids: np.ndarray,
    shared: np.ndarray,
    out_dir: Path,
    cache: Path | None = None,
) -> pd.DataFrame:
    """Write images ``ids`` (0-based 73k) as PNGs, and ``stimuli.tsv`` listing them.

    Columns of ``stimuli.tsv``: stimulus, image, caption, shared. NSD's bucket has no
    captions: with ``opts.captions`` they come from COCO's caption files joined on
    ``cocoId`` (:mod:`.nsd_captions`; ``nsd_stim_info_merged.csv`` read from ``cache``),
    otherwise the column is empty.

    Reads only those rows of ``imgBrick`` — from ``opts.stimuli_file`` if set,
    else by range requests on the bucket's HDF5 — in index order, one at a time.
    """
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(exist_ok=True)
    captions: dict[int, str] = {}
    if opts.captions:
        from brainpipe.datasets import nsd_captions

        if cache is None:
            raise ValueError("captions need the object cache (nsd_stim_info_merged.csv)")
        files = nsd_captions.fetch_caption_files(opts.captions, cache, opts.workers)
        captions = nsd_captions.nsd_captions(
            safe_local_path(cache, STIM_INFO_KEY), files, [int(i) for i in ids]
        )
    raw = open(opts.stimuli_file, "rb") if opts.stimuli_file else RangeFile(source, STIMULI_KEY)
    with raw, h5py.File(raw, "r") as h5:
        if "imgBrick" not in h5:
            raise BrainpipeInputError(STIMULI_KEY, "imgBrick", "dataset is missing")
        brick = h5["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or ids.max() >= brick.shape[0]:
            raise BrainpipeInputError(
                STIMULI_KEY,
                "imgBrick",
                f"expected (73000, H, W, 3) covering id {ids.max()}, got {brick.shape}",
            )
        rows = []
        shared_set = set(shared.tolist())
        for i in tqdm(sorted(int(i) for i in ids), desc="NSD stimuli", unit="img", mininterval=1.0):
            name = stimulus_name(i)
            Image.fromarray(np.asarray(brick[i], dtype=np.uint8)).save(
                out_dir / "images" / f"{name}.png"
            )
            rows.append((name, f"images/{name}.png", captions.get(i, ""), int(i in shared_set)))
    table = pd.DataFrame(rows, columns=["stimulus", "image", "caption", "shared"])
    write_text_atomic(table.to_csv(sep="\t", index=False), out_dir / "stimuli.tsv")
    return table


# --- ingest -------------------------------------------------------------------------------
def hdf5_voxel_index(ijk: np.ndarray, volume_shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices into a MATLAB-written ``(K, J, I)`` volume of NIfTI voxels ``(i, j, k)``.

    Parameters
    ----------
    ijk : ndarray of int, shape (n_voxels, 3)
        NIfTI voxel indices.
    volume_shape : (I, J, K)
        NIfTI volume shape, e.g. (81, 104, 83).

    Returns
    -------
    ndarray of int64, shape (n_voxels,)
        Index into ``betas[t].reshape(-1)`` where ``betas[t]`` has shape (K, J, I).
    """
    ni, nj, nk = volume_shape
    return np.ravel_multi_index((ijk[:, 2], ijk[:, 1], ijk[:, 0]), (nk, nj, ni))


class KeptVoxels:
    """Gathers the kept voxels of MATLAB-written volumes, in the store's voxel order.

    The store's order (C order of the NIfTI volume) strides across each HDF5 volume
    (C order of its transpose), so gathering it directly misses the cache at almost
    every voxel. Reading the kept voxels in file order, then putting them in the
    store's order within the much smaller row of kept voxels, takes 0.7–0.8× the time
    of one ``np.take`` (``benchmarks/gather.py``).

    Parameters
    ----------
    flat : ndarray of int, shape (n_voxels,)
        From :func:`hdf5_voxel_index`, in the store's order.
    """

    def __init__(self, flat: np.ndarray) -> None:
        flat = np.asarray(flat, dtype=np.intp)
        order = np.argsort(flat, kind="stable")
        self.file_order = flat[order]
        self.to_store = np.empty_like(order)
        self.to_store[order] = np.arange(len(order))
        self._rows: tuple[np.ndarray, np.ndarray] | None = None  # row()'s buffers

    def gather(self, slab: np.ndarray, out: np.ndarray) -> None:
        """Kept voxels of each volume of ``slab`` (n, K*J*I) into ``out`` (n, n_voxels).

        Safe to call from several threads at once (its own scratch row per call).
        """
        kept = np.empty(len(self.file_order), slab.dtype)
        for volume, row in zip(slab, out, strict=True):
            # indices are in range by construction: "clip" skips numpy's buffered check
            np.take(volume, self.file_order, out=kept, mode="clip")
            np.take(kept, self.to_store, out=row, mode="clip")

    def row(self, volume: np.ndarray) -> np.ndarray:
        """Kept voxels of one int16 volume, in a buffer reused by the next call (one thread)."""
        if self._rows is None:
            n = len(self.file_order)
            self._rows = (np.empty(n, np.int16), np.empty(n, np.int16))
        kept, row = self._rows
        np.take(volume, self.file_order, out=kept, mode="clip")
        return np.take(kept, self.to_store, out=row, mode="clip")


def _voxel_mm(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Voxel centres in mm (float32), computed without a BLAS call.

    ``apply_affine``'s matrix product starts OpenBLAS's worker threads, which then
    spin through the download that follows: ~0.2 s of a core per ingest job (perf).
    """
    affine = np.asarray(affine, dtype=np.float64)
    xyz = np.broadcast_to(affine[:3, 3], (len(ijk), 3)).copy()
    for n in range(3):
        xyz += ijk[:, n, None] * affine[:3, n]
    return xyz.astype(np.float32)


def _load_volume(path: Path, shape: tuple[int, ...] | None, field_name: str) -> nib.Nifti1Image:
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", f"{field_name} volume is missing")
    img = nib.load(path)
    if shape is not None and img.shape[:3] != shape:
        raise BrainpipeInputError(
            path, "shape", f"{field_name} must match the brain mask {shape}, got {img.shape}"
        )
    return img


def ingest_nsd_subject(
    root: str | Path,
    subject: str,
    sessions: list[str],
    out_path: str | Path,
    opts: NsdOptions,
    splits_tsv: str | Path | None = None,
    voxel_chunk: int = 4096,
    config: dict[str, Any] | None = None,
) -> Path:
    """Convert NSD's betas of one subject into ``betas.zarr`` (the brainpipe contract).

    Session by session: read ``/betas`` in batches of trials, keep the mask's
    voxels, optionally z-score each voxel within the session with mean and SD of
    the session's *training* trials only (test = the shared 1000, from
    ``splits_tsv``), and write the session's rows into the store: as the int16 × 300
    NSD ships (:func:`betas_int16_filter`, read as float32 % signal change), or as
    float32 when z-scored. With ``opts.stream_betas``, sessions not in ``root`` are
    fetched here and converted as their bytes arrive (:mod:`.nsd_stream`), up to
    ``opts.workers`` at once when nothing is z-scored (each: two batches of volumes
    in memory); otherwise memory is one session of kept voxels as int16 plus a batch.

    Writes ``betas(trial, voxel)`` float32; trial coords ``stimulus, session,
    run, onset``; voxel coords ``i, j, k, x, y, z``; ``roi_<name>`` for every
    label of every ROI file present; ``ncsnr`` and ``nc_1trial`` /
    ``nc_3trial`` from NSD's ncsnr volume; ``r2`` NaN and ``hrf_index`` -1
    (NSD's own per-voxel R² and HRF index are not ingested).

    Raises
    ------
    BrainpipeInputError
        A file is missing, has the wrong shape, or ``/betas`` is not int16
        ``(750, K, J, I)``.
    """
    root = Path(root)
    mask_img = _load_volume(safe_local_path(root, brainmask_key(subject, opts)), None, "brainmask")
    shape = tuple(int(n) for n in mask_img.shape[:3])
    mask = np.asarray(mask_img.dataobj) > 0
    if opts.mask == "nsdgeneral":
        path = safe_local_path(root, roi_key(subject, "nsdgeneral", opts))
        mask &= np.asarray(_load_volume(path, shape, "nsdgeneral").dataobj) > 0
    ijk = np.argwhere(mask).astype(np.int32)  # C order = the contract's voxel order
    flat = hdf5_voxel_index(ijk, shape)
    chunks = (TRIALS_PER_SESSION, min(voxel_chunk, max(len(ijk), 1)))
    todo = []  # (session, rows, local file)
    for n, ses in enumerate(sessions):
        rows = slice(n * TRIALS_PER_SESSION, (n + 1) * TRIALS_PER_SESSION)
        todo.append((ses, rows, safe_local_path(root, betas_key(subject, ses, opts))))
    stream = [t for t in todo if opts.stream_betas and not t[2].exists()]
    cache = object_cache(root, opts)
    scratch: dict[str, np.ndarray] = {}  # buffers reused session after session
    # The streams start first; the store is laid out while their requests are under way
    # and they wait for it (``target``: the betas array, the training trials) at their
    # first trials. Sessions of an int16 store go straight into their own chunk files:
    # several at once (one S3 connection rarely fills a link; opts.workers, as for the
    # fetch). Z-scoring needs a session buffer: one session at a time.
    target: Future = Future()
    workers = 1 if opts.zscore else opts.workers
    if stream:  # the streams' modules and S3 client, loaded here: no imports race the store's
        from brainpipe.datasets import nsd_stream  # noqa: F401

        _ = opts.source().client

    def one(item: tuple) -> Path | None:
        ses, rows, _ = item
        key = betas_key(subject, ses, opts)
        path = _stream_session(target, opts, key, cache, flat, shape, rows, chunks[1], scratch)
        if path is None:
            log.info("sub-%s session %s: streamed into %s", subject, ses, out_path)
        return path

    store = None
    with atomic_path(out_path) as tmp, quiet_consolidated():
        try:
            with ThreadPoolExecutor(max(1, min(workers, len(stream)))) as pool:
                fetching = [pool.submit(one, item) for item in stream]
                try:
                    store, train, valid = _subject_layout(
                        root, subject, sessions, opts, mask_img, mask, ijk, splits_tsv, config
                    )
                    betas = store.write(tmp, (TRIALS_PER_SESSION * len(sessions), len(ijk)), chunks)
                except BaseException as err:
                    target.set_exception(err)  # the streams stop at their first trials
                    raise
                target.set_result((betas, train, valid))
                from_file = {t[0]: f.result() for t, f in zip(stream, fetching, strict=True)}
            for ses, rows, path in tqdm(todo, desc=f"NSD betas sub-{subject}", unit="session"):
                if ses in from_file:
                    if from_file[ses] is None:  # streamed into the store
                        continue
                    path = from_file[ses]  # downloaded, to be read (see _stream_session)
                ingest_session(
                    betas, path, flat, shape, rows, chunks[1], opts.trial_batch,
                    train[rows] if opts.zscore else None, scratch,
                    invalid=~valid[rows.start // TRIALS_PER_SESSION],
                )  # fmt: skip
                log.info(
                    "sub-%s session %s: %d trials × %d voxels",
                    subject, ses, TRIALS_PER_SESSION, len(ijk),
                )  # fmt: skip
        finally:
            if store is not None:
                store.finish()
        scratch.clear()
        import zarr

        zarr.consolidate_metadata(tmp, zarr_format=3)
    return Path(out_path)


def _subject_layout(
    root: Path,
    subject: str,
    sessions: list[str],
    opts: NsdOptions,
    mask_img: Any,
    mask: np.ndarray,
    ijk: np.ndarray,
    splits_tsv: str | Path | None,
    config: dict[str, Any] | None,
) -> tuple[_StoreLayout, np.ndarray | None, np.ndarray]:
    """Everything of a subject's betas.zarr but the betas, its training trials, and
    which voxels are valid in each session ``(n_sessions, n_voxels)``.

    Reads the experiment design, ROI volumes, ncsnr and ``splits_tsv``; returns the
    store layout and, with ``splits_tsv``, which trials are training trials.
    """
    design = read_expdesign(safe_local_path(root, EXPDESIGN_KEY))
    shape = tuple(int(n) for n in mask_img.shape[:3])
    n_vox = len(ijk)
    xyz = _voxel_mm(mask_img.affine, ijk)
    roi_coords: dict[str, tuple[str, np.ndarray]] = {}
    for roi_file, labels in opts.roi_files.items():
        path = safe_local_path(root, roi_key(subject, roi_file, opts))
        if not path.exists():
            log.warning("%s missing: no roi coords from %s", path, roi_file)
            continue
        vol = np.asarray(_load_volume(path, shape, roi_file).dataobj)[mask]
        for name, values in labels.items():
            roi_coords[f"roi_{name}"] = ("voxel", np.isin(vol, values))
    ncsnr_path = safe_local_path(root, ncsnr_key(subject, opts))
    ncsnr = np.asarray(_load_volume(ncsnr_path, shape, "ncsnr").dataobj, dtype=np.float32)[mask]

    stimuli, sess, runs, onsets = [], [], [], []
    valid = np.ones((len(sessions), n_vox), dtype=bool)
    for n, ses in enumerate(sessions):
        stimuli.append([stimulus_name(i) for i in design.trial_stimuli(subject, ses)])
        sess.append(np.full(TRIALS_PER_SESSION, ses))
        run_of_trial, onset = design.trial_timing(ses, opts.trial_period_s)
        runs.append(np.array([f"{r:02d}" for r in run_of_trial]))
        onsets.append(onset)
        valid_path = safe_local_path(root, valid_key(subject, ses, opts))
        valid[n] = np.asarray(_load_volume(valid_path, shape, "valid").dataobj)[mask] > 0
    stimuli_all = np.concatenate(stimuli)
    split = None
    if splits_tsv is not None:
        table = read_splits(splits_tsv)
        split = pd.Series(stimuli_all).map(table)
        if split.isna().any():
            raise BrainpipeInputError(
                splits_tsv, "stimulus", f"{stimuli_all[split.isna().to_numpy()][0]} has no split"
            )
        split = split.to_numpy(str)
    elif opts.zscore:
        raise BrainpipeInputError("config", "source.zscore", "z-scoring needs splits.tsv")

    nc = {n: noise_ceiling(ncsnr, n).astype(np.float32) for n in (1, 3)}
    store = _StoreLayout(
        int16_betas=not opts.zscore,
        data_vars={
            "r2": ("voxel", np.full(n_vox, np.nan, np.float32)),
            "hrf_index": ("voxel", np.full(n_vox, -1, np.int16)),
            "ncsnr": ("voxel", ncsnr),
            "nc_1trial": ("voxel", nc[1]),
            "nc_3trial": ("voxel", nc[3]),
            # NSD's valid_sessionNN: False where the session's data are invalid (betas 0)
            "valid": (("ses", "voxel"), valid),
        },
        coords={
            "ses": ("ses", np.asarray(sessions, dtype=str)),
            "stimulus": ("trial", stimuli_all),
            "session": ("trial", np.concatenate(sess)),
            "run": ("trial", np.concatenate(runs)),
            "onset": ("trial", np.concatenate(onsets).astype(float)),
            **{c: ("voxel", ijk[:, n]) for n, c in enumerate("ijk")},
            **{c: ("voxel", xyz[:, n]) for n, c in enumerate("xyz")},
            **roi_coords,
        },
        attrs={
            "subject": str(subject),
            "affine": np.asarray(mask_img.affine).tolist(),
            "volume_shape": list(shape),
            "space": f"nsd-{opts.space}",
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
    return store, None if split is None else split == "train", valid


def _stream_session(
    target: Future,
    opts: NsdOptions,
    key: str,
    cache: Path,
    flat: np.ndarray,
    shape: tuple[int, int, int],
    rows: slice,
    voxel_chunk: int,
    scratch: dict[str, np.ndarray],
) -> Path | None:
    """Fetch one session and put it into ``betas[rows]`` as its bytes arrive.

    ``target`` gives the betas array and the training trials once the store is laid
    out; the trials wait for it (and stop if laying it out failed). Into an int16
    store the gathered trials are appended straight to the session's chunk files (no
    session buffer, nothing left to write once the download ends); z-scored, they
    are gathered into a session buffer, then written. Returns None when done, or the
    downloaded file to ingest from (see
    :func:`~brainpipe.datasets.nsd_stream.fetch_session_betas`).
    """
    from brainpipe.datasets.nsd_stream import fetch_session_betas, gather_into

    if not opts.zscore:
        with _ChunkRowWriter(target, rows, flat, voxel_chunk) as writer:
            return fetch_session_betas(opts, key, cache, shape, writer)
    session = scratch.get("session")
    if session is None:
        session = scratch["session"] = _scratch((TRIALS_PER_SESSION, len(flat)), np.int16)
    gather = gather_into(session, flat)

    def once_laid_out(t0: int, slab: np.ndarray) -> None:
        target.result()  # no download goes on past a store that could not be laid out
        gather(t0, slab)

    path = fetch_session_betas(opts, key, cache, shape, once_laid_out)
    if path is None:
        betas, train, valid = target.result()
        write_session_blocks(
            betas, session, rows, voxel_chunk, train[rows], cache / key,
            invalid=~valid[rows.start // TRIALS_PER_SESSION],
        )  # fmt: skip
    return path


class _ChunkRowWriter:
    """A rows sink writing a session's trials straight into its int16 chunk files.

    The chunk files of an int16 store (:func:`_raw_int16_root`) are ``(750,
    voxel_chunk)`` int16, trial-major: the trials of a batch are one contiguous
    range of every chunk file of the session. Each batch is gathered trial by trial
    (:class:`KeptVoxels`) into its chunks' blocks in a page-aligned buffer, and the
    buffer's blocks are written at their offsets
    by :data:`WRITERS` threads (``O_DIRECT`` when the offsets are block-aligned, as
    for the default 4096-voxel chunks) while the next batch is gathered into the
    other buffer: a synchronous O_DIRECT write waits for the disk, and one at a time
    those waits took longer than the gathering (0.65 s per 1 GB session, measured).
    A transfer that starts over rewrites the same ranges. Files are opened on the
    first batch, so a session ingested from its file instead leaves nothing behind.
    """

    #: Threads writing blocks (each mostly waits for the disk: several keep it busy).
    WRITERS = 4

    def __init__(self, target: Future, rows: slice, flat: np.ndarray, voxel_chunk: int) -> None:
        from brainpipe.directio import ALIGN

        n_chunks = -(-len(flat) // voxel_chunk)
        padded = np.full(n_chunks * voxel_chunk, flat[0] if len(flat) else 0, np.intp)
        padded[: len(flat)] = flat  # the edge chunk's padding: any voxel (never read)
        self.shape = (n_chunks, voxel_chunk)
        self.kept = KeptVoxels(padded)
        self.target, self.row_chunk = target, rows.start // TRIALS_PER_SESSION
        self.row_bytes = 2 * voxel_chunk
        self.direct = self.row_bytes % ALIGN == 0
        self.fds: list[int] = []
        self.bufs: list[mmap.mmap | None] = [None, None]  # page-aligned, a batch's blocks
        self.pending: list[list[Future]] = [[], []]  # writes from each buffer
        self.cur = 0
        self.pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _ChunkRowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        betas = self.target.result()[0]  # once the store is laid out
        raw_root = _raw_int16_root(betas)
        if raw_root is None:
            raise RuntimeError(f"{betas.store_path}: betas chunks are not plain int16 ×300")
        n_chunks = self.shape[0]
        paths = [
            raw_root / betas.metadata.encode_chunk_key((self.row_chunk, c)) for c in range(n_chunks)
        ]
        flags = os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if self.direct else 0)
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.fds.append(os.open(path, flags, 0o644))
            except OSError:  # no O_DIRECT on this file system
                self.direct = False
                self.fds.append(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        self.pool = ThreadPoolExecutor(self.WRITERS, thread_name_prefix="chunk-writer")

    def _buffer(self, nbytes: int) -> mmap.mmap:
        """The next batch buffer (at least ``nbytes``), once its earlier writes are done."""
        from brainpipe.directio import ALIGN

        self.cur ^= 1
        self._wait(self.cur)
        buf = self.bufs[self.cur]
        if buf is None or len(buf) < nbytes:
            buf = self.bufs[self.cur] = mmap.mmap(-1, max(-(-nbytes // ALIGN) * ALIGN, ALIGN))
        return buf

    def _wait(self, b: int) -> None:
        pending, self.pending[b] = self.pending[b], []
        for future in pending:
            future.result()

    def __call__(self, t0: int, slab: np.ndarray) -> None:
        """Write trials ``t0 .. t0 + len(slab)`` into every chunk file."""
        if self.pool is None:
            self._open()
        n, (n_chunks, width) = len(slab), self.shape
        size = n * self.row_bytes  # one chunk's block: a multiple of ALIGN when direct
        buf = self._buffer(size * n_chunks)
        blocks = np.frombuffer(buf, "<i2", count=n_chunks * n * width)
        blocks = blocks.reshape(n_chunks, n, width)
        for r, volume in enumerate(slab):
            blocks[:, r, :] = self.kept.row(volume).reshape(n_chunks, width)
        view = memoryview(buf)
        groups = [range(g, len(self.fds), self.WRITERS) for g in range(self.WRITERS)]
        self.pending[self.cur] = [
            self.pool.submit(_write_blocks, self.fds, view, group, size, t0 * self.row_bytes)
            for group in groups
            if len(group)
        ]

    def close(self) -> None:
        """Finish the writes and close the chunk files (750 rows once every batch arrived)."""
        try:
            for b in (0, 1):
                self._wait(b)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None
            for fd in self.fds:
                os.close(fd)
            self.fds = []
            # not closed: after a failed write its traceback may still view them
            self.bufs = [None, None]


def _write_blocks(fds: list[int], view: memoryview, chunks: range, size: int, offset: int) -> None:
    """Write block ``c`` of ``view`` (``size`` bytes each) at ``offset`` of file ``fds[c]``."""
    for c in chunks:
        block, written = view[c * size : (c + 1) * size], 0
        while written < size:  # a short write (rare): the rest
            written += os.pwrite(fds[c], block[written:], offset + written)


def read_session_betas(
    path: Path, flat: np.ndarray, shape: tuple[int, int, int], trial_batch: int = 50
) -> np.ndarray:
    """One session's betas at the kept voxels, in % signal change.

    Parameters
    ----------
    path : Path
        ``betas_sessionNN.hdf5`` with ``/betas`` int16 of shape ``(750, K, J, I)``.
    flat : ndarray, shape (n_voxels,)
        From :func:`hdf5_voxel_index`.
    shape : (I, J, K)
        NIfTI volume shape.

    Returns
    -------
    ndarray of float32, shape (750, n_voxels)
    """
    raw = read_session_int16(path, flat, shape, trial_batch)
    return np.divide(raw, BETA_SCALE, dtype=np.float32)


def read_session_int16(
    path: Path,
    flat: np.ndarray,
    shape: tuple[int, int, int],
    trial_batch: int = 50,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One session's raw int16 betas (×300) at the kept voxels, shape (750, n_voxels).

    Reads ``/betas`` in contiguous slabs of ``trial_batch`` trials into one reused
    buffer and gathers the kept voxels into ``out`` (allocated if not given), so
    memory is ``out`` plus one slab whatever the session count.

    Raises
    ------
    BrainpipeInputError
        The file is missing or unreadable, or ``/betas`` is not int16 ``(750, K, J, I)``.
    """
    want = (TRIALS_PER_SESSION, *shape[::-1])
    with _open_betas(path, shape) as dset:
        if out is None:
            out = np.empty((TRIALS_PER_SESSION, len(flat)), dtype=np.int16)
        addresses = None
        if _contiguous_offset(dset) is None:
            addresses = voxel_chunk_addresses(dset, path)
        if addresses is not None:  # one chunk per voxel: read them in file order
            for v0 in range(0, len(flat), CHUNKED_GROUP_VOXELS):
                v1 = min(len(flat), v0 + CHUNKED_GROUP_VOXELS)
                group = np.empty((v1 - v0, TRIALS_PER_SESSION), np.int16)
                read_chunked_voxels(path, addresses[flat[v0:v1]], group, fill=dset.fillvalue)
                out[:, v0:v1] = group.T
            return out
        batch = max(1, min(trial_batch, TRIALS_PER_SESSION))
        local = threading.local()
        kept = KeptVoxels(flat)

        def gather(t0: int) -> None:
            n = min(batch, TRIALS_PER_SESSION - t0)
            slab = getattr(local, "slab", None)
            if slab is None:
                slab = local.slab = _scratch((batch, *want[1:]), np.int16)
            dset.read_direct(slab, np.s_[t0 : t0 + n], np.s_[0:n])
            kept.gather(slab[:n].reshape(n, -1), out[t0 : t0 + n])

        # HDF5 reads are serialised by h5py's lock; the gathers (no GIL) run side by side.
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            for fut in [pool.submit(gather, t0) for t0 in range(0, TRIALS_PER_SESSION, batch)]:
                fut.result()
    return out


def _open_betas(path: Path, shape: tuple[int, int, int]) -> Any:
    """``/betas`` of a session file, checked to be int16 ``(750, K, J, I)``.

    Returns the h5py dataset; use as a context manager (closes the file).
    """
    if not path.exists():
        raise BrainpipeInputError(path, "<file>", "betas file is missing (run the download)")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise BrainpipeInputError(path, "<file>", f"not a readable HDF5 file ({err})") from err
    try:
        dset = _check_betas(h5, path, shape)
    except BrainpipeInputError:
        h5.close()
        raise
    return _ClosingDataset(h5, dset)


def _check_betas(h5: Any, where: str | Path, shape: tuple[int, int, int]) -> Any:
    """``h5["betas"]``, checked to be int16 ``(750, K, J, I)`` for a volume ``(I, J, K)``."""
    want = (TRIALS_PER_SESSION, *shape[::-1])
    if "betas" not in h5 or not isinstance(h5["betas"], h5py.Dataset):
        raise BrainpipeInputError(where, "betas", "dataset is missing")
    dset = h5["betas"]
    if dset.shape != want or dset.dtype != np.int16:
        got = f"{dset.dtype} {dset.shape}"
        raise BrainpipeInputError(
            where, "betas", f"expected int16 {want} (trials, K, J, I), got {got}"
        )
    return dset


class _ClosingDataset:
    def __init__(self, h5: Any, dset: Any) -> None:
        self.h5, self.dset = h5, dset

    def __enter__(self) -> Any:
        return self.dset

    def __exit__(self, *exc: object) -> None:
        self.h5.close()


def _contiguous_offset(dset: Any) -> int | None:
    """File offset of ``/betas`` if it is stored contiguous and unfiltered, else None.

    Such a dataset can be read through a memory map of the file, without a copy (the
    bytes come straight from the page cache); chunked or compressed datasets are read
    through h5py.
    """
    offset = dset.id.get_offset()
    if (
        offset is None
        or dset.chunks is not None
        or dset.id.get_create_plist().get_nfilters()
        or dset.id.get_storage_size() != dset.size * dset.dtype.itemsize
    ):
        return None
    return int(offset)


def ingest_session(
    betas: Any,
    path: Path,
    flat: np.ndarray,
    shape: tuple[int, int, int],
    rows: slice,
    voxel_chunk: int,
    trial_batch: int = 50,
    train: np.ndarray | None = None,
    scratch: dict[str, np.ndarray] | None = None,
    group_chunks: int = 16,
    invalid: np.ndarray | None = None,
) -> None:
    """Read one session's betas at the kept voxels and write them into ``betas[rows]``.

    A contiguous ``/betas`` (how NSD-shaped files are usually written) is gathered
    straight from memory maps of the file (``trial_batch`` trials mapped at a time),
    ``group_chunks`` Zarr chunks of voxels (all 750 trials) at a time into one of two
    alternating int16 buffers: while the writer threads convert and write one group,
    the next is gathered. Memory is the two group buffers (2 × 750 × group_chunks ×
    voxel_chunk × 2 bytes, ~200 MB) and one mapped batch of trials. Other layouts are
    read in ``trial_batch`` slabs into one session-sized buffer.
    ``scratch`` keeps buffers for the next session. ``invalid`` (n_voxels,) marks the
    voxels NSD says are invalid in this session: NaN once z-scored (their betas are all 0).
    """
    scratch = {} if scratch is None else scratch
    n_vox = len(flat)
    with _open_betas(path, shape) as dset:
        offset = _contiguous_offset(dset)
        addresses = None if offset is not None else voxel_chunk_addresses(dset, path)
        if addresses is not None:  # NSD's published layout: one chunk per voxel
            _ingest_voxel_chunks(
                betas, path, addresses[flat], rows, voxel_chunk, train, scratch,
                dset.fillvalue, invalid,
            )  # fmt: skip
            return
        if offset is None:
            session = scratch.get("session")
            if session is None:
                session = scratch["session"] = _scratch((TRIALS_PER_SESSION, n_vox), np.int16)
            read_session_int16(path, flat, shape, trial_batch, out=session)
            write_session_blocks(betas, session, rows, voxel_chunk, train, path, invalid=invalid)
            return
        volume = int(np.prod(shape))
        batch = max(1, min(trial_batch, TRIALS_PER_SESSION))
        width = min(n_vox, voxel_chunk * max(1, group_chunks))
        bufs = [scratch.get(f"group{b}") for b in (0, 1)]
        for b in (0, 1):
            if bufs[b] is None or bufs[b].size < TRIALS_PER_SESSION * width:
                bufs[b] = scratch[f"group{b}"] = _scratch((TRIALS_PER_SESSION * width,), np.int16)
        pending: list[list[Any]] = [[], []]
        with _BlockWriter(betas, rows, voxel_chunk, train, path, invalid=invalid) as writer:
            for g, v0 in enumerate(range(0, n_vox, width)):
                for fut in pending[g % 2]:
                    fut.result()  # the buffer's previous group is written
                v1 = min(n_vox, v0 + width)
                group = bufs[g % 2][: TRIALS_PER_SESSION * (v1 - v0)]
                group = group.reshape(TRIALS_PER_SESSION, v1 - v0)
                kept = KeptVoxels(flat[v0:v1])
                for t0 in range(0, TRIALS_PER_SESSION, batch):
                    n = min(batch, TRIALS_PER_SESSION - t0)
                    window = np.memmap(
                        path, np.int16, "r", offset=offset + 2 * t0 * volume, shape=(n, volume)
                    )
                    kept.gather(window, group[t0 : t0 + n])
                    del window  # unmapped: resident memory stays one batch of trials
                pending[g % 2] = writer.submit(group, v0)
            for fut in pending[0] + pending[1]:
                fut.result()


#: Voxels whose trials one buffer of the chunked read holds (two buffers alternate):
#: 2 × 131,072 × 750 × 2 bytes = 375 MB, a 1.8 mm session (~270k kept voxels) in two
#: passes, a 1 mm session in a few more; each pass reads only its voxels' chunks.
CHUNKED_GROUP_VOXELS = 1 << 17


def _ingest_voxel_chunks(
    betas: Any,
    path: Path,
    addresses: np.ndarray,
    rows: slice,
    voxel_chunk: int,
    train: np.ndarray | None,
    scratch: dict[str, np.ndarray],
    fill: int = 0,
    invalid: np.ndarray | None = None,
) -> None:
    """Ingest a session stored one chunk per voxel (NSD's ``ChunkSize [1 1 1 750]``).

    The kept voxels are taken in groups of :data:`CHUNKED_GROUP_VOXELS` (whole Zarr
    chunks, store order); a group's chunks are read in file order straight into the
    rows of a voxel-major buffer (:func:`~brainpipe.datasets.nsd_chunks.read_chunked_voxels`),
    and the writer threads transpose its voxel blocks into Zarr chunks while the next
    group is read into the other buffer. Memory: the two buffers, whatever the session.
    """
    n_vox = len(addresses)
    width = max(voxel_chunk, CHUNKED_GROUP_VOXELS // voxel_chunk * voxel_chunk)
    width = min(width, n_vox)
    bufs = []
    for b in (0, 1):
        buf = scratch.get(f"voxels{b}")
        if buf is None or buf.shape[0] < width:
            buf = scratch[f"voxels{b}"] = _scratch((width, TRIALS_PER_SESSION), np.int16)
        bufs.append(buf)
    pending: list[list[Any]] = [[], []]
    with _BlockWriter(betas, rows, voxel_chunk, train, path, invalid=invalid) as writer:
        for g, v0 in enumerate(range(0, n_vox, width)):
            for fut in pending[g % 2]:
                fut.result()  # the buffer's previous group is written
            v1 = min(n_vox, v0 + width)
            group = bufs[g % 2][: v1 - v0]
            read_chunked_voxels(path, addresses[v0:v1], group, fill=fill)
            pending[g % 2] = writer.submit(group.T, v0)
        for fut in pending[0] + pending[1]:
            fut.result()


class _BlockWriter:
    """Writes int16 ×300 blocks of a session as Zarr chunks, on a small thread pool.

    Each ``(750, voxel_chunk)`` block is one Zarr chunk. Into an int16 store
    (:func:`betas_int16_filter`, not z-scored) the block's bytes *are* the encoded
    chunk, so they are written as the chunk file directly (around the page cache),
    with no float conversion. Otherwise the block is divided by 300 into a per-thread
    float32 buffer, z-scored with ``train``'s statistics if given (each voxel's
    statistics are its own, so block by block equals the whole session) and written
    through zarr. The division and file writes release the GIL.
    """

    def __init__(
        self,
        betas: Any,
        rows: slice,
        voxel_chunk: int,
        train: np.ndarray | None,
        source: Path | None,
        workers: int | None = None,
        invalid: np.ndarray | None = None,
    ) -> None:
        self.betas, self.rows, self.voxel_chunk = betas, rows, voxel_chunk
        self.invalid = invalid if invalid is not None and invalid.any() else None
        self.train, self.source = train, source
        self.raw_root = _raw_int16_root(betas) if train is None else None
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers or min(2, os.cpu_count() or 1)))

    def __enter__(self) -> _BlockWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, src: np.ndarray, c0: int, first_voxel: int) -> None:
        w = min(self.voxel_chunk, src.shape[1] - c0)
        if self.raw_root is not None:
            self._one_raw(src, c0, first_voxel, w)
            return
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = np.empty((src.shape[0], self.voxel_chunk), np.float32)
        block = buf if w == self.voxel_chunk else np.empty((src.shape[0], w), np.float32)
        np.divide(src[:, c0 : c0 + w], BETA_SCALE, out=block, dtype=np.float32)
        if self.train is not None:
            zscore_with_train_stats(block, self.train, self.source)
            if self.invalid is not None:  # NSD's calczscore: invalid voxels become NaN
                v0 = first_voxel + c0
                block[:, self.invalid[v0 : v0 + w]] = np.nan
        self.betas[self.rows, first_voxel + c0 : first_voxel + c0 + w] = block

    def _one_raw(self, src: np.ndarray, c0: int, first_voxel: int, w: int) -> None:
        """Write the int16 block as its chunk file (the edge chunk padded, as zarr does)."""
        from brainpipe.directio import write_file_direct

        n_rows = src.shape[0]
        if self.rows.start % n_rows or (first_voxel + c0) % self.voxel_chunk:
            raise ValueError("int16 chunk writes need session- and chunk-aligned blocks")
        buf = getattr(self.local, "buf16", None)
        if buf is None:
            buf = self.local.buf16 = np.zeros((n_rows, self.voxel_chunk), "<i2")
        buf[:, :w] = src[:, c0 : c0 + w]
        buf[:, w:] = 0
        coords = (self.rows.start // n_rows, (first_voxel + c0) // self.voxel_chunk)
        path = self.raw_root / self.betas.metadata.encode_chunk_key(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_direct(path, buf)

    def submit(self, src: np.ndarray, first_voxel: int) -> list[Any]:
        """Queue the blocks of ``src`` (voxels ``first_voxel`` on); return their futures."""
        return [
            self.pool.submit(self._one, src, c0, first_voxel)
            for c0 in range(0, src.shape[1], self.voxel_chunk)
        ]


def _raw_int16_root(betas: Any) -> Path | None:
    """Folder of ``betas``' chunk files if its chunks are plain int16 ×300, else None.

    That is: a local store, chunks of whole sessions, and codecs exactly
    ``[FixedScaleOffset(scale=300, astype <i2), bytes little-endian]`` — then a
    chunk's encoded bytes are the raw int16 betas, written without zarr's encoding.
    """
    from zarr.codecs import BytesCodec
    from zarr.storage import LocalStore

    codecs = betas.metadata.codecs
    store = betas.store_path.store
    if (
        not isinstance(store, LocalStore)
        or betas.chunks[0] != TRIALS_PER_SESSION
        or len(codecs) != 2
        or getattr(codecs[0], "codec_name", "") != "numcodecs.fixedscaleoffset"
        or codecs[0].codec_config != betas_int16_filter().codec_config
        or not isinstance(codecs[1], BytesCodec)
        or str(getattr(codecs[1].endian, "value", codecs[1].endian)) != "little"
    ):
        return None
    return Path(store.root) / betas.store_path.path


def write_session_blocks(
    betas: Any,
    session: np.ndarray,
    rows: slice,
    voxel_chunk: int,
    train: np.ndarray | None = None,
    source: Path | None = None,
    workers: int | None = None,
    invalid: np.ndarray | None = None,
) -> None:
    """Write one session (int16 ×300, shape (750, n_voxels)) into ``betas[rows]``.

    Block by block (one Zarr chunk each) on a thread pool; see :class:`_BlockWriter`.
    """
    with _BlockWriter(betas, rows, voxel_chunk, train, source, workers, invalid) as writer:
        for fut in writer.submit(session, 0):
            fut.result()


def _scratch(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A large scratch array in plain anonymous memory.

    numpy advises transparent huge pages for big arrays; where the kernel then
    compacts memory on first touch (``defrag=madvise``) that stalls for seconds
    per GB. Page-sized anonymous memory avoids the stall; it is freed with the array.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < 1 << 22:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


@dataclass
class _StoreLayout:
    """The small variables of betas.zarr, written the way xarray writes a Dataset.

    ``betas.zarr`` is built with zarr directly: building an ``xarray.Dataset``
    imports Dask (seconds on a busy machine) and gains nothing for a store whose
    big array is filled chunk by chunk. The result is what ``Dataset.to_zarr``
    writes: Zarr v3 arrays with ``dimension_names``, variable-length strings,
    NaN fill values (``_FillValue``) for floats, and a ``coordinates`` attribute on
    each data variable naming its coordinates; ``xr.open_zarr`` reads it back as
    the same Dataset.
    """

    data_vars: dict[str, tuple[str | tuple[str, ...], Any]]
    coords: dict[str, tuple[str | tuple[str, ...], Any]]
    attrs: dict[str, Any]
    int16_betas: bool = False  # betas stored through betas_int16_filter (not z-scored)

    def write(self, path: Path, betas_shape: tuple[int, int], chunks: tuple[int, int]):
        """Create the store with every variable, plus an empty ``betas``; return ``betas``.

        Call :meth:`finish` before the store is used.
        """
        import zarr

        from brainpipe.directio import DirectWriteStore

        # betas chunks are written once and read by later jobs: around the page cache
        group = zarr.open_group(
            DirectWriteStore(path), mode="w", zarr_format=3, attributes=self.attrs
        )
        dims_of = {name: _dims(dims) for name, (dims, _) in self.coords.items()}

        def coordinates(dims: tuple[str, ...]) -> str:
            return " ".join(sorted(c for c, d in dims_of.items() if set(d) <= set(dims)))

        def write_one(name: str, dims: str | tuple[str, ...], values: Any) -> None:
            values = np.asarray(values)
            attrs = {} if name in self.coords else {"coordinates": coordinates(_dims(dims))}
            kwargs: dict[str, Any] = {}
            if values.dtype.kind in "UO":
                values = values.astype(object)
                kwargs["dtype"] = str  # Zarr v3 variable-length UTF-8, as portable_strings
            elif values.dtype.kind == "f":
                kwargs["fill_value"] = np.nan
                attrs["_FillValue"] = _nan_fill_attr()
            if name in self.data_vars:
                # chunks aligned with betas' voxel chunks, all in one shard: one file, not
                # one per chunk (file creation dominates writing these small arrays)
                lead = values.shape[:-1]  # (ses, voxel) variables: whole sessions per chunk
                kwargs["chunks"] = (*lead, chunks[1])
                kwargs["shards"] = (*lead, -(-max(values.shape[-1], 1) // chunks[1]) * chunks[1])
            arr = group.create_array(
                name,
                shape=values.shape,
                dtype=kwargs.pop("dtype", values.dtype),
                dimension_names=_dims(dims),
                attributes=attrs,
                **kwargs,
            )
            arr[...] = values

        betas = group.create_array(
            "betas",
            shape=betas_shape,
            chunks=chunks,
            dtype=np.float32,
            compressors=BETAS_COMPRESSORS or None,
            filters=[betas_int16_filter()] if self.int16_betas else None,
            fill_value=np.nan,
            config={"write_empty_chunks": True},  # every chunk is written: skip the NaN scan
            dimension_names=("trial", "voxel"),
            attributes={
                "coordinates": coordinates(("trial", "voxel")),
                "_FillValue": _nan_fill_attr(),
            },
        )
        # The small arrays (file creation is their cost) are written in the background,
        # while the first session is read; finish() waits for them.
        self._pool = ThreadPoolExecutor(max_workers=2)
        self._pending = [
            self._pool.submit(write_one, name, dims, values)
            for name, (dims, values) in {**self.coords, **self.data_vars}.items()
        ]
        return betas

    def finish(self) -> None:
        """Wait for the arrays :meth:`write` left writing; raise the first error."""
        pool, pending = getattr(self, "_pool", None), getattr(self, "_pending", [])
        self._pool, self._pending = None, []
        if pool is None:
            return
        try:
            for fut in pending:
                fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _dims(dims: str | tuple[str, ...]) -> tuple[str, ...]:
    return (dims,) if isinstance(dims, str) else tuple(dims)


def _nan_fill_attr() -> str:
    """xarray's ``_FillValue`` attribute for NaN (base64 of the float64 bytes)."""
    import base64

    return base64.standard_b64encode(np.float64(np.nan).tobytes()).decode()


def zscore_with_train_stats(block: np.ndarray, train: np.ndarray, source: Path) -> np.ndarray:
    """Z-score each voxel (in place) with the mean and SD of the training trials only.

    Parameters
    ----------
    block : ndarray of float32, shape (n_trials, n_voxels)
    train : ndarray of bool, shape (n_trials,)
        Training trials; test trials are transformed but never enter the statistics.
    """
    if train.sum() < 2:
        raise BrainpipeInputError(
            source, "betas", "z-scoring needs >= 2 training trials per session"
        )
    with warnings.catch_warnings():  # NaN vertices (NSD fsaverage) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(block[train], axis=0, dtype=np.float64).astype(np.float32)
        sd = np.nanstd(block[train], axis=0, dtype=np.float64).astype(np.float32)
    sd[(sd == 0) | ~np.isfinite(sd)] = 1.0
    block -= mean
    block /= sd
    return block
