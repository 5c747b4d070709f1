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

Modules: :mod:`.nsd_layout` (what NSD publishes and where: options, keys, design),
:mod:`.nsd_download` (fetch, stimuli), :mod:`.nsd_hdf5` and :mod:`.nsd_chunks` (reading
the betas files), :mod:`.nsd_store` (writing betas.zarr), :mod:`.nsd_captions`, and this
module: ingest, which ties them together and re-exports their public names.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from brainpipe.betas.store import BetasLayout, noise_ceiling_vars
from brainpipe.config import VOXEL_CHUNK
from brainpipe.datasets.nsd_chunks import read_chunked_voxels, voxel_chunk_addresses
from brainpipe.datasets.nsd_download import (  # noqa: F401 - NSD's public API, one import
    assemble_from_cache,
    download_nsd,
    extract_stimuli,
    link_or_copy,
)
from brainpipe.datasets.nsd_hdf5 import (  # noqa: F401
    CHUNKED_GROUP_VOXELS,
    KeptVoxels,
    check_betas,
    contiguous_offset,
    hdf5_voxel_index,
    open_betas,
    read_session_betas,
    read_session_int16,
    scratch_array,
)
from brainpipe.datasets.nsd_layout import (  # noqa: F401
    BETA_SCALE,
    BETA_VERSIONS,
    BUCKET_REGION,
    EXPDESIGN_KEY,
    SESSIONS_PER_SUBJECT,
    SPACE_TR,
    SPACES,
    STIM_INFO_KEY,
    STIMULI_KEY,
    TRIALS_PER_SESSION,
    ExpDesign,
    NsdOptions,
    betas_key,
    brainmask_key,
    check_sessions,
    make_nsd_splits,
    ncsnr_key,
    object_cache,
    read_expdesign,
    roi_key,
    session_number,
    stimulus_name,
    subject_keys,
    subject_label,
    valid_key,
)
from brainpipe.datasets.nsd_store import (  # noqa: F401
    BETAS_COMPRESSORS,
    BlockWriter,
    ChunkRowWriter,
    TrainStats,
    betas_int16_filter,
    raw_int16_root,
    write_session_blocks,
    zscore_with_train_stats,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import safe_local_path
from brainpipe.splits import read_splits
from brainpipe.storage import (
    atomic_path,
    provenance_attrs,
    quiet_consolidated,
)

log = logging.getLogger(__name__)


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
    voxel_chunk: int = VOXEL_CHUNK,
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

    from threadpoolctl import threadpool_limits

    store = None
    with atomic_path(out_path) as tmp, quiet_consolidated():
        try:
            # one BLAS thread while sessions stream: the statistics' small products
            # (TrainStats) would wake OpenBLAS's threads, which spin for the cores the
            # download, its hashing and the gather need
            with (
                threadpool_limits(limits=1, user_api="blas"),
                ThreadPoolExecutor(max(1, min(workers, len(stream)))) as pool,
            ):
                fetching = [pool.submit(one, item) for item in stream]
                try:
                    store, train, valid = _subject_layout(
                        root, subject, sessions, opts, mask_img, mask, ijk, splits_tsv, config
                    )
                    betas = store.write(
                        tmp, (TRIALS_PER_SESSION * len(sessions), len(ijk)), chunks, direct=True
                    )
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
) -> tuple[BetasLayout, np.ndarray | None, np.ndarray]:
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

    store = BetasLayout(
        # betas as NSD ships them (int16 / 300, exact) unless z-scored
        filters=None if opts.zscore else [betas_int16_filter()],
        compressors=BETAS_COMPRESSORS,
        data_vars={
            "r2": ("voxel", np.full(n_vox, np.nan, np.float32)),
            "hrf_index": ("voxel", np.full(n_vox, -1, np.int16)),
            **noise_ceiling_vars(ncsnr),
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


#: One session at a time per process is gathered voxel-major from NSD's per-voxel chunked
#: layout (its buffer is a session of kept voxels); sessions streaming alongside it are
#: read from their files after their download, as are sessions whose buffer would
#: exceed :data:`CHUNKED_STREAM_MAX_BYTES` (1 mm: read in voxel groups instead).
_CHUNKED_STREAM = threading.Lock()
CHUNKED_STREAM_MAX_BYTES = 1 << 30


class _VoxelBuffer:
    """The voxel-major session buffer a per-voxel chunked session streams into.

    Called (by the stream, once it has parsed the file's header) it returns the buffer,
    or None when another session holds it or it would be too big; :meth:`release` gives
    it back. Calling it again returns the same buffer (a transfer that starts over).
    """

    def __init__(self, n_voxels: int, scratch: dict[str, np.ndarray]) -> None:
        self.n_voxels, self.scratch = n_voxels, scratch
        self.buffer: np.ndarray | None = None

    def __call__(self) -> np.ndarray | None:
        if self.buffer is not None:
            return self.buffer
        nbytes = self.n_voxels * TRIALS_PER_SESSION * 2
        if nbytes > CHUNKED_STREAM_MAX_BYTES or not _CHUNKED_STREAM.acquire(blocking=False):
            return None
        buf = self.scratch.get("voxel_stream")
        if buf is None or buf.shape[0] != self.n_voxels:
            buf = self.scratch["voxel_stream"] = scratch_array(
                (self.n_voxels, TRIALS_PER_SESSION), np.int16
            )
        self.buffer = buf
        return buf

    def release(self) -> None:
        if self.buffer is not None:
            self.buffer = None
            _CHUNKED_STREAM.release()


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
    are gathered into a session buffer, then written. A session chunked one voxel per
    chunk (as NSD publishes them) is gathered into a voxel-major session buffer as it
    arrives, then written block by block (z-scored or int16). Returns None when done,
    or the downloaded file to ingest from (see
    :func:`~brainpipe.datasets.nsd_stream.fetch_session_betas`).
    """
    from brainpipe.datasets.nsd_stream import fetch_session_betas, gather_into

    voxels = _VoxelBuffer(len(flat), scratch)
    stats = None
    if opts.zscore:  # summed voxel by voxel as a per-voxel chunked session arrives
        stats = TrainStats(
            len(flat), lambda: target.result()[1][rows] if target.done() else None, cache / key
        )
    try:
        if not opts.zscore:
            with ChunkRowWriter(target, rows, flat, voxel_chunk) as writer:
                path = fetch_session_betas(
                    opts, key, cache, shape, writer, flat=flat, voxel_buffer=voxels
                )
        else:
            session = scratch.get("session")
            if session is None:
                session = scratch["session"] = scratch_array(
                    (TRIALS_PER_SESSION, len(flat)), np.int16
                )
            gather = gather_into(session, flat)

            def once_laid_out(t0: int, slab: np.ndarray) -> None:
                target.result()  # no download goes on past a store that could not be laid out
                gather(t0, slab)

            path = fetch_session_betas(
                opts, key, cache, shape, once_laid_out, flat=flat, voxel_buffer=voxels,
                on_rows=stats.add,
            )  # fmt: skip
        if path is not None:
            return path
        last_byte = time.perf_counter()
        betas, train, valid = target.result()
        invalid = ~valid[rows.start // TRIALS_PER_SESSION]
        if voxels.buffer is not None:  # gathered voxel-major: its blocks, transposed
            if stats is not None:  # the voxels read from the file at the end, or placed
                stats.complete(voxels.buffer)  # before the training trials were known
                log.info("%s: %d voxels' statistics summed after the download", key, stats.late)
            with BlockWriter(
                betas, rows, voxel_chunk, train[rows] if opts.zscore else None, cache / key,
                invalid=invalid, stats=stats,
            ) as writer:  # fmt: skip
                for fut in writer.submit(voxels.buffer.T, 0):
                    fut.result()
        elif opts.zscore:
            write_session_blocks(
                betas, session, rows, voxel_chunk, train[rows], cache / key, invalid=invalid
            )
        log.info(
            "%s: written into the store %.2f s after its download", key,
            time.perf_counter() - last_byte,
        )  # fmt: skip
        return None
    finally:
        voxels.release()


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
    with open_betas(path, shape) as dset:
        offset = contiguous_offset(dset)
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
                session = scratch["session"] = scratch_array((TRIALS_PER_SESSION, n_vox), np.int16)
            read_session_int16(path, flat, shape, trial_batch, out=session)
            write_session_blocks(betas, session, rows, voxel_chunk, train, path, invalid=invalid)
            return
        volume = int(np.prod(shape))
        batch = max(1, min(trial_batch, TRIALS_PER_SESSION))
        width = min(n_vox, voxel_chunk * max(1, group_chunks))
        bufs = [scratch.get(f"group{b}") for b in (0, 1)]
        for b in (0, 1):
            if bufs[b] is None or bufs[b].size < TRIALS_PER_SESSION * width:
                bufs[b] = scratch[f"group{b}"] = scratch_array(
                    (TRIALS_PER_SESSION * width,), np.int16
                )
        pending: list[list[Any]] = [[], []]
        with BlockWriter(betas, rows, voxel_chunk, train, path, invalid=invalid) as writer:
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
            buf = scratch[f"voxels{b}"] = scratch_array((width, TRIALS_PER_SESSION), np.int16)
        bufs.append(buf)
    pending: list[list[Any]] = [[], []]
    with BlockWriter(betas, rows, voxel_chunk, train, path, invalid=invalid) as writer:
        for g, v0 in enumerate(range(0, n_vox, width)):
            for fut in pending[g % 2]:
                fut.result()  # the buffer's previous group is written
            v1 = min(n_vox, v0 + width)
            group = bufs[g % 2][: v1 - v0]
            read_chunked_voxels(path, addresses[v0:v1], group, fill=fill)
            pending[g % 2] = writer.submit(group.T, v0)
        for fut in pending[0] + pending[1]:
            fut.result()
