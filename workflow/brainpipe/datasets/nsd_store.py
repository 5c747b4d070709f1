"""Writing NSD betas into betas.zarr: the store's small variables, and session blocks.

Volume betas not z-scored are stored as the int16 × 300 NSD ships, through a
``FixedScaleOffset`` filter (read back as float32 % signal change); their chunk files
are written directly (:class:`BlockWriter`, :class:`ChunkRowWriter`). Z-scored betas are
float32.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from brainpipe.datasets.nsd_hdf5 import KeptVoxels, scratch_array
from brainpipe.datasets.nsd_layout import BETA_SCALE, TRIALS_PER_SESSION
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import (
    quiet_consolidated,
)

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    # made on first use: zarr is imported where a store is written (in an ingest, while
    # the sessions already stream), not by importing the NSD modules
    if name == "BETAS_CODEC":
        return betas_codec()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def betas_codec() -> Any:
    """A fast compressor for betas arrays (``BETAS_CODEC``): Blosc-LZ4 with bit shuffle
    compresses float32 betas as well as byte shuffle at ~2x its speed, ~5x zstd's; any
    reader decodes it."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


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

    with quiet_consolidated():
        return FixedScaleOffset(offset=0, scale=int(BETA_SCALE), dtype="<f4", astype="<i2")


class ChunkRowWriter:
    """A rows sink writing a session's trials straight into its int16 chunk files.

    The chunk files of an int16 store (:func:`raw_int16_root`) are ``(750,
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

    def __enter__(self) -> ChunkRowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        betas = self.target.result()[0]  # once the store is laid out
        raw_root = raw_int16_root(betas)
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


#: Voxels per tile when a voxel-major buffer is turned into trial-major blocks: a tile's
#: rows (256 × 750 int16, and their float32) stay in cache, where one strided pass over a
#: whole block misses it: a quarter less CPU per session (``benchmarks/nsd_blocks.py``;
#: where the chunk files' writes bound the step, as on its machine, that does not show:
#: docs/datasets/nsd.md).
TILE_VOXELS = 256


def _voxel_major(src: np.ndarray) -> bool:
    """Whether ``src`` (trials × voxels) is the transposed view of a voxel-major buffer."""
    return src.ndim == 2 and src.shape[1] > 1 and src.strides[0] < src.strides[1]


class BlockWriter:
    """Writes int16 ×300 blocks of a session as Zarr chunks, on a small thread pool.

    Each ``(750, voxel_chunk)`` block is one Zarr chunk. Into an int16 store
    (:func:`betas_int16_filter`, not z-scored) the block's bytes *are* the encoded
    chunk, so they are written as the chunk file directly (around the page cache),
    with no float conversion. Otherwise the block is divided by 300 into a per-thread
    float32 buffer, z-scored with ``train``'s statistics if given (each voxel's
    statistics are its own, so block by block equals the whole session) and written
    as its chunk file directly too where the store's chunks are plain little-endian
    float32 (:func:`raw_float32_root`: the bytes zarr would write, without zarr's encoding
    and its fresh buffers per chunk), else through zarr. The division and file writes
    release the GIL. With ``stats`` (:class:`TrainStats` of the same training trials,
    summed as the session arrived) a block is z-scored in two passes, without its
    statistics' passes.
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
        stats: TrainStats | None = None,
    ) -> None:
        self.betas, self.rows, self.voxel_chunk = betas, rows, voxel_chunk
        # the session's per-voxel statistics, already summed: z-scoring in two passes
        self.center_scale = None
        if stats is not None and train is not None:
            self.center_scale = stats.center_scale()
        self.invalid = invalid if invalid is not None and invalid.any() else None
        self.train, self.source = train, source
        self.raw_root = raw_int16_root(betas) if train is None else None
        self.float_root = raw_float32_root(betas) if self.raw_root is None else None
        self.local = threading.local()
        if workers is None:  # threads writing chunk files themselves wait for the disk: more
            workers = min(2, os.cpu_count() or 1)
            workers *= 2 if self.raw_root is not None or self.float_root is not None else 1
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, src: np.ndarray, c0: int, first_voxel: int) -> None:
        w = min(self.voxel_chunk, src.shape[1] - c0)
        if self.raw_root is not None:
            self._one_raw(src, c0, first_voxel, w)
            return
        buf = getattr(self.local, "buf", None)
        if buf is None:  # page-aligned, reused: no fresh memory per block
            buf = self.local.buf = scratch_array((src.shape[0], self.voxel_chunk), np.float32)
        if self.float_root is not None:
            block = buf[:, :w]  # the chunk's valid columns; the edge chunk's rest: fill
            buf[:, w:] = np.nan
        else:
            block = buf if w == self.voxel_chunk else np.empty((src.shape[0], w), np.float32)
        v0 = first_voxel + c0
        if _voxel_major(src):  # the buffer's rows are voxels: converted a tile at a time
            rows = src.T[c0 : c0 + w]
            for t0, t1, tile in self._tiles(rows.shape):
                self._convert(rows[t0:t1], v0 + t0, v0 + t1, tile, voxel_rows=True)
                block[:, t0:t1] = tile.T
        else:
            self._convert(src[:, c0 : c0 + w], v0, v0 + w, block, voxel_rows=False)
        if self.train is not None:
            if self.center_scale is None:
                zscore_with_train_stats(block, self.train, self.source)
            if self.invalid is not None:  # NSD's calczscore: invalid voxels become NaN
                block[:, self.invalid[v0 : v0 + w]] = np.nan
        if self.float_root is not None:
            self._write_chunk(self.float_root, buf, first_voxel + c0)
            return
        self.betas[self.rows, first_voxel + c0 : first_voxel + c0 + w] = block

    def _write_chunk(self, root: Path, buf: np.ndarray, first: int) -> None:
        """Write ``buf`` (a whole chunk, little-endian) as the chunk file of voxels ``first`` on."""
        from brainpipe.directio import write_file_direct

        n_rows = buf.shape[0]
        if self.rows.start % n_rows or first % self.voxel_chunk:
            raise ValueError("raw chunk writes need session- and chunk-aligned blocks")
        coords = (self.rows.start // n_rows, first // self.voxel_chunk)
        path = root / self.betas.metadata.encode_chunk_key(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_direct(path, buf)

    def _one_raw(self, src: np.ndarray, c0: int, first_voxel: int, w: int) -> None:
        """Write the int16 block as its chunk file (the edge chunk padded, as zarr does)."""
        from brainpipe.directio import write_file_direct

        n_rows = src.shape[0]
        if self.rows.start % n_rows or (first_voxel + c0) % self.voxel_chunk:
            raise ValueError("int16 chunk writes need session- and chunk-aligned blocks")
        buf = getattr(self.local, "buf16", None)
        if buf is None:  # page-aligned: written as it is (O_DIRECT)
            buf = self.local.buf16 = scratch_array((n_rows, self.voxel_chunk), "<i2")
        if _voxel_major(src):  # a tile of the buffer's voxel rows at a time (cache-sized)
            rows = src.T[c0 : c0 + w]
            for t0 in range(0, w, TILE_VOXELS):
                t1 = min(w, t0 + TILE_VOXELS)
                buf[:, t0:t1] = rows[t0:t1].T
        else:
            buf[:, :w] = src[:, c0 : c0 + w]
        buf[:, w:] = 0
        coords = (self.rows.start // n_rows, (first_voxel + c0) // self.voxel_chunk)
        path = self.raw_root / self.betas.metadata.encode_chunk_key(coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_direct(path, buf)

    def _tiles(self, shape: tuple[int, int]) -> Any:
        """``(t0, t1, tile)`` over ``shape[0]`` voxel rows: a per-thread float32 tile each."""
        buf = getattr(self.local, "tile", None)
        if buf is None or buf.shape[1] != shape[1]:
            buf = self.local.tile = np.empty((TILE_VOXELS, shape[1]), np.float32)
        for t0 in range(0, shape[0], TILE_VOXELS):
            t1 = min(shape[0], t0 + TILE_VOXELS)
            yield t0, t1, buf[: t1 - t0]

    def _convert(
        self, values: np.ndarray, v0: int, v1: int, out: np.ndarray, voxel_rows: bool
    ) -> None:
        """``out`` = the int16 ``values`` of voxels ``v0:v1`` as float32 % signal change, or
        centred and scaled by the summed statistics (``voxel_rows``: a voxel per row)."""
        if self.center_scale is not None:  # z = (x - mean) / SD in int16 units: two passes
            center, scale = (a[v0:v1, None] if voxel_rows else a[v0:v1] for a in self.center_scale)
            np.subtract(values, center, out=out, dtype=np.float32)
            np.multiply(out, scale, out=out)
        else:
            np.divide(values, BETA_SCALE, out=out, dtype=np.float32)

    def submit(self, src: np.ndarray, first_voxel: int) -> list[Any]:
        """Queue the blocks of ``src`` (voxels ``first_voxel`` on); return their futures."""
        return [
            self.pool.submit(self._one, src, c0, first_voxel)
            for c0 in range(0, src.shape[1], self.voxel_chunk)
        ]


def raw_int16_root(betas: Any) -> Path | None:
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


def raw_float32_root(betas: Any) -> Path | None:
    """Folder of ``betas``' chunk files if a chunk's bytes are its float32 values as they
    are (a local store, chunks of whole sessions, codecs exactly ``[bytes little-endian]``,
    fill NaN, every chunk written), else None: then the chunk files are written directly,
    as zarr would write them (the same bytes), without its encoding and fresh buffers."""
    from zarr.codecs import BytesCodec
    from zarr.storage import LocalStore

    codecs = betas.metadata.codecs
    store = betas.store_path.store
    fill = betas.metadata.fill_value
    if (
        not isinstance(store, LocalStore)
        or betas.dtype != np.float32
        or betas.chunks[0] != TRIALS_PER_SESSION
        or len(codecs) != 1
        or not isinstance(codecs[0], BytesCodec)
        or str(getattr(codecs[0].endian, "value", codecs[0].endian)) != "little"
        or not np.isnan(fill)
        or not betas._async_array.config.write_empty_chunks
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

    Block by block (one Zarr chunk each) on a thread pool; see :class:`BlockWriter`.
    """
    with BlockWriter(betas, rows, voxel_chunk, train, source, workers, invalid) as writer:
        for fut in writer.submit(session, 0):
            fut.result()


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
    rows = block[train]  # a copy: the statistics' scratch
    n = len(rows)
    # float64 sums of the training rows, as np.nanmean / np.nanstd take them (the same
    # operations in the same order, so the same bits) without their NaN masks and copies
    mean64 = np.add.reduce(rows, axis=0, dtype=np.float64) / n
    if np.isfinite(mean64).all():
        np.subtract(rows, mean64, out=rows, casting="unsafe")  # float32, as nanvar does
        np.multiply(rows, rows, out=rows)
        var = np.add.reduce(rows, axis=0, dtype=np.float64) / n
        mean, sd = mean64.astype(np.float32), np.sqrt(var).astype(np.float32)
    else:  # NaN vertices (NSD fsaverage) stay NaN; each voxel's statistics skip them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(block[train], axis=0, dtype=np.float64).astype(np.float32)
            sd = np.nanstd(block[train], axis=0, dtype=np.float64).astype(np.float32)
    sd[(sd == 0) | ~np.isfinite(sd)] = 1.0
    block -= mean
    block /= sd
    return block


class TrainStats:
    """Per-voxel sums of a session's int16 betas over its training trials, exact.

    Summed voxel by voxel as the session's rows are placed (:meth:`add`, e.g. as each
    voxel's chunk arrives), so that after the last byte only the z-scoring pass is left.
    The sums of ``x`` and ``x**2`` over the training trials are taken in float64 from the
    int16 values: every term and partial sum is an integer below 2**53, so they are exact
    whatever the order. The training trials are the ones :func:`zscore_with_train_stats`
    uses (``train``: the session's trials whose split is ``train``); test trials never
    enter them.

    Parameters
    ----------
    n_voxels : int
        Rows of the session's voxel-major buffer.
    train : callable returning ndarray of bool, shape (n_trials,), or None
        The training trials, or None while they are not known yet (the store is still
        being laid out): rows added before are left to :meth:`complete`.
    source : path
        Named in errors.
    """

    #: Rows :meth:`complete` takes at once.
    BATCH = 4096

    def __init__(self, n_voxels: int, train: Any, source: Path | str) -> None:
        self._train, self.source = train, source
        self.weights: np.ndarray | None = None
        self.sum = np.zeros(n_voxels, np.float64)
        self.sum_sq = np.zeros(n_voxels, np.float64)
        self.done = np.zeros(n_voxels, bool)
        self.late = 0  # voxels summed by complete()
        self._tile: np.ndarray | None = None  # float64 rows summed at once (reused)

    def _weights(self) -> np.ndarray | None:
        if self.weights is None:
            train = self._train()
            if train is None:
                return None
            train = np.asarray(train, bool)
            if train.sum() < 2:
                raise BrainpipeInputError(
                    self.source, "betas", "z-scoring needs >= 2 training trials per session"
                )
            self.weights = train.astype(np.float64)
        return self.weights

    def add(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Sum voxels ``rows`` of the buffer, whose trials are ``values`` (int16, (n, T))."""
        weights = self._weights()
        if weights is None:  # summed by complete()
            return
        tile = self._tile
        if tile is None or tile.shape[1] != values.shape[1]:
            tile = self._tile = np.empty((TILE_VOXELS, values.shape[1]), np.float64)
        # a cache-sized tile of rows at a time, and a matrix-vector product each (BLAS:
        # 2x numpy's einsum over float64 copies, benchmarks/nsd_blocks.py; run
        # under one BLAS thread, see ingest_nsd_subject)
        for a in range(0, len(rows), TILE_VOXELS):
            x = tile[: min(TILE_VOXELS, len(rows) - a)]
            r = rows[a : a + len(x)]
            np.copyto(x, values[a : a + len(x)])
            self.sum[r] = x @ weights
            np.multiply(x, x, out=x)
            self.sum_sq[r] = x @ weights
            self.done[r] = True

    def complete(self, buffer: np.ndarray) -> None:
        """Sum the voxels not summed yet from the finished voxel-major ``buffer``."""
        if self._weights() is None:
            raise RuntimeError("TrainStats: the training trials are not known")
        rows = np.flatnonzero(~self.done)
        self.late = len(rows)
        for a in range(0, len(rows), self.BATCH):
            r = rows[a : a + self.BATCH]
            self.add(r, buffer[r])

    def center_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Per voxel, float32: the training mean and 1 / SD, both in int16 units.

        ``(x - mean) * (1 / SD)`` is the z-score of ``x / 300`` with the training
        trials' mean and (population) SD, as :func:`zscore_with_train_stats` gives it
        (SD 0: divided by 1 in % signal change units). Raises unless every voxel was summed.
        """
        if not self.done.all():
            raise RuntimeError("TrainStats: voxels not summed (call complete)")
        n = float(self._weights().sum())
        center = self.sum / n
        # n * sum_sq - sum**2 is an exact integer (< 2**53): no cancellation error
        var = np.maximum(n * self.sum_sq - self.sum * self.sum, 0.0) / (n * n)
        sd = np.sqrt(var)
        scale = np.divide(1.0, sd, out=np.full_like(sd, 1.0 / BETA_SCALE), where=sd > 0)
        return center.astype(np.float32), scale.astype(np.float32)
