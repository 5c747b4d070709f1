"""NSD betas ingested while they download: each session's bytes gathered as they arrive.

The plain route fetches ``betas_sessionNN.hdf5`` (~1 GB at 1.8 mm, ~6 GB at 1 mm),
then reads it back to gather the kept voxels. Streaming does both in one pass:
:func:`~brainpipe.remote.fetch_object` hands each arriving chunk to a
:class:`SessionGather`, which parses the HDF5 header from the first bytes and,
when ``/betas`` is stored contiguous (how NSD-shaped files are written), gathers
the kept voxels of every complete batch of trials straight from the network
buffers. The download itself is unchanged: resumable (a resumed ``.part`` is
replayed to the sink first), verified, atomic, recorded in the manifest, with
the file kept in the object cache; the gathered session counts only once the
file has verified. Chunked or compressed ``/betas`` is fetched, then read from
the file as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import ObjectInfo, fetch_object, read_manifest, record_fetches
from brainpipe.remote import safe_local_path as _safe_local_path
from brainpipe.remote.rangefile import SizedReader

log = logging.getLogger(__name__)

#: Bytes buffered before the HDF5 header is parsed (object headers precede the data of
#: a contiguous dataset written in one go; if not, the file is ingested after download).
HEADER_BYTES = 1 << 20


#: Bytes of a per-voxel chunked session queued for the chunk walk at most (held by
#: reference): bounds the memory, and how far the walk may trail the last byte.
QUEUED_BYTES = 32 << 20

#: Takes the trials ``[t0, t0 + n)`` of a session as an int16 ``(n, volume)`` slab.
RowsSink = Callable[[int, np.ndarray], None]


def gather_into(out: np.ndarray, flat: np.ndarray) -> RowsSink:
    """A :data:`RowsSink` that gathers the kept voxels ``flat`` into ``out`` (750, n_voxels)."""

    from brainpipe.datasets.nsd_hdf5 import KeptVoxels

    kept = KeptVoxels(flat)

    def take(t0: int, slab: np.ndarray) -> None:
        kept.gather(slab, out[t0 : t0 + len(slab)])

    return take


#: Provides the voxel-major buffer ``(n_voxels, 750)`` int16 a per-voxel chunked session is
#: gathered into, or None (then the session is read from its file after the download).
VoxelBuffer = Callable[[], "np.ndarray | None"]


def fetch_session_betas(
    opts,
    key: str,
    cache: Path,
    shape: tuple[int, int, int],
    rows: RowsSink,
    trial_batch: int = 16,
    flat: np.ndarray | None = None,
    voxel_buffer: VoxelBuffer | None = None,
    on_rows: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Path | None:
    """Fetch one session's betas into ``cache``, handing its trials to ``rows`` on the way.

    Parameters
    ----------
    opts : NsdOptions
        Source (bucket, endpoint) and options.
    key : str
        ``betas_sessionNN.hdf5`` key.
    cache : Path
        Object cache (the file lands at ``cache/key``).
    shape : (I, J, K)
        NIfTI volume shape.
    rows : RowsSink
        Called with every batch of trials, in order, from a background thread (e.g.
        :func:`gather_into`); called again from trial 0 if the transfer starts over.
    flat, voxel_buffer : optional
        The kept voxels (:func:`~brainpipe.datasets.nsd_hdf5.hdf5_voxel_index`) and a
        :data:`VoxelBuffer`: with both, ``/betas`` chunked one voxel per chunk is gathered
        into the buffer's rows (row ``v``: voxel ``flat[v]``) instead of going to ``rows``;
        ``on_rows`` then sees the rows as they are filled
        (:class:`~brainpipe.datasets.nsd_chunks.StreamedChunks`).

    Returns
    -------
    None if every trial went to ``rows`` from verified bytes; otherwise the local file
    to ingest from (the object was already cached, or ``/betas`` is not contiguous).
    """
    source = opts.source()
    dest = _safe_local_path(cache, key)
    trusted = read_manifest(cache).get(key)
    info = source.head(key)
    gather = None
    if not dest.exists():
        gather = SessionGather(info, shape, rows, trial_batch, flat, voxel_buffer, on_rows)
    bar = tqdm(
        total=info.size, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
        desc=f"fetch {Path(key).name}", mininterval=1.0,
    )  # fmt: skip
    try:
        with bar:
            result = fetch_object(source, info, dest, trusted=trusted, sink=gather, progress=bar)
    finally:
        if gather is not None:
            gather.close()
    record_fetches(cache, source, [result])
    if gather is None or result.status == "cached" or not gather.streamed:
        if gather is not None and gather.reason:
            log.info("%s: ingesting after download (%s)", source.url(key), gather.reason)
        return dest
    gather.check_complete(source.url(key), dest)
    return None


class SessionGather:
    """A :class:`~brainpipe.remote.ByteSink` that hands on the trials of a contiguous ``/betas``.

    The first :data:`HEADER_BYTES` are buffered and parsed with h5py (reads past them
    fail, and the sink then stands aside); after that, bytes inside ``/betas``
    (``(750, K, J, I)`` int16, trial-major) fill a batch of ``trial_batch`` trials,
    and each full batch goes to ``rows`` on a background thread while the next batch
    fills (the network read loop never waits for it). Memory: two batches of volumes.
    ``/betas`` chunked one voxel per chunk (NSD's layout) goes, with ``flat`` and a
    ``voxel_buffer``, to a :class:`~brainpipe.datasets.nsd_chunks.StreamedChunks` on
    that thread instead (the pieces queued by reference, at most :data:`QUEUED_BYTES`), which
    fills the buffer's rows; :meth:`check_complete` finishes it from the verified file.
    Call :meth:`close` when done.
    """

    def __init__(
        self,
        info: ObjectInfo,
        shape: tuple[int, int, int],
        rows: RowsSink,
        trial_batch: int = 16,
        flat: np.ndarray | None = None,
        voxel_buffer: VoxelBuffer | None = None,
        on_rows: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        from brainpipe.datasets.nsd_hdf5 import TRIALS_PER_SESSION, scratch_array

        self.info, self.shape, self.rows, self.on_rows = info, shape, rows, on_rows
        self.flat, self.voxel_buffer = flat, voxel_buffer
        self.chunks: Any = None  # StreamedChunks, for /betas chunked one voxel per chunk
        self._fed: list[tuple[Future, int]] = []  # pieces queued for the chunk walk, sizes
        self._fed_bytes = 0
        self.volume = int(np.prod(shape))
        self.trials = TRIALS_PER_SESSION
        self.batch = max(1, min(trial_batch, self.trials))
        self._words = [scratch_array((self.batch * self.volume,), np.int16) for _ in range(2)]
        self._pending: list[Future | None] = [None, None]
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._cur = 0
        self._bytes = memoryview(self._words[0]).cast("B")
        self.reset()

    def reset(self) -> None:
        """Start over from byte 0."""
        self._wait_all()
        self._drain(check=False)
        self.chunks = None
        self.pos = 0  # bytes of the object seen
        self.header = bytearray()
        self.start: int | None = None  # file offset of /betas once known
        self.reason = ""  # why the sink stands aside ("" while it may stream)
        self.filled = 0  # bytes in the batch buffer
        self.t0 = 0  # trials gathered into out

    @property
    def streamed(self) -> bool:
        """Whether the sink gathered (or is gathering) the session."""
        return (self.start is not None or self.chunks is not None) and not self.reason

    def write(self, chunk: memoryview) -> None:
        """Take the next bytes of the file."""
        view = chunk.cast("B")
        if self.reason:
            self.pos += len(view)
            return
        if self.chunks is not None:
            self._feed_chunks(view)
            self.pos += len(view)
            return
        if self.start is None:
            need = min(HEADER_BYTES, self.info.size) - len(self.header)
            self.header += view[:need]
            if len(self.header) < min(HEADER_BYTES, self.info.size):
                self.pos += len(view)
                return
            self._parse_header()
            if self.reason:
                self.pos += len(view)
                return
            if self.chunks is not None:  # the chunk walk starts from byte 0
                self._feed_chunks(memoryview(bytes(self.header)))
                self.header = bytearray()
                self._feed_chunks(view[need:])
                self.pos += len(view)
                return
            # the buffered header bytes may already hold the first trials
            self._take(memoryview(bytes(self.header)), 0)
            self.header = bytearray()
            self._take(view[need:], self.pos + need)
            self.pos += len(view)
            return
        self._take(view, self.pos)
        self.pos += len(view)

    def _parse_header(self) -> None:
        from brainpipe.datasets.nsd_chunks import streamable_index
        from brainpipe.datasets.nsd_hdf5 import check_betas, contiguous_offset

        prefix = bytes(self.header)

        def read(at: int, n: int) -> bytes:
            if at + n > len(prefix):
                raise OSError(f"bytes {at}-{at + n} are past the buffered header")
            return prefix[at : at + n]

        try:
            with h5py.File(_PrefixFile(prefix, self.info.size), "r") as h5:
                dset = check_betas(h5, self.info.key, self.shape)
                offset = contiguous_offset(dset)
                index = None if offset is not None else streamable_index(dset, read)
                fill = int(dset.fillvalue)
        except BrainpipeInputError:
            raise
        except Exception as err:  # noqa: BLE001 - any parse failure: ingest from the file
            self.reason = f"HDF5 header not within the first {HEADER_BYTES} bytes ({err})"
            return
        if offset is not None:
            self.start = offset
            return
        if index is None:
            self.reason = "/betas is chunked other than one voxel per chunk, or compressed"
            return
        out = None
        if self.flat is not None and self.voxel_buffer is not None:
            out = self.voxel_buffer()
        if out is None:
            self.reason = "/betas is chunked one voxel per chunk and no session buffer is free"
            return
        from brainpipe.datasets.nsd_chunks import StreamedChunks

        kept = np.full(self.volume, -1, np.int64)
        kept[self.flat] = np.arange(len(self.flat))
        volume = self.shape[::-1]
        self.chunks = StreamedChunks(*index, volume, kept, out, on_rows=self.on_rows)
        self.fill = fill

    def _feed_chunks(self, view: memoryview) -> None:
        """Queue bytes for the chunk walk (on the background thread; the read loop goes on).

        The views are held until walked (the fetch passes views of immutable bytes).
        """
        if not len(view):
            return
        while self._fed and self._fed_bytes + len(view) > QUEUED_BYTES:  # the oldest first
            future, size = self._fed.pop(0)
            future.result()
            self._fed_bytes -= size
        self._fed.append((self._pool.submit(self._walk_piece, view), len(view)))
        self._fed_bytes += len(view)

    def _walk_piece(self, view: memoryview) -> None:
        from brainpipe.datasets.nsd_chunks import ChunkLayoutError

        if self.reason or self.chunks is None:
            return
        try:
            self.chunks.feed(view)
        except ChunkLayoutError as err:  # read from the file after the download instead
            self.reason = f"/betas chunk index not walkable while streaming ({err})"

    def _drain(self, check: bool = True) -> None:
        """Wait for the queued chunk walk (raising its errors when ``check``)."""
        fed, self._fed, self._fed_bytes = self._fed, [], 0
        for future, _ in fed:
            if check:
                future.result()
            else:
                future.exception()

    def _take(self, view: memoryview, at: int) -> None:
        """Copy the part of ``view`` (file bytes from ``at``) inside ``/betas`` into batches."""
        end = self.start + 2 * self.trials * self.volume
        lo, hi = max(self.start - at, 0), min(end - at, len(view))
        cap = 2 * self.batch * self.volume
        while lo < hi:
            take = min(hi - lo, cap - self.filled)
            self._bytes[self.filled : self.filled + take] = view[lo : lo + take]
            self.filled += take
            lo += take
            if self.filled == cap or at + lo == end:
                self._gather()

    def _gather(self) -> None:
        """Gather the full buffer in the background; go on filling the other one."""
        n = self.filled // (2 * self.volume)
        slab = self._words[self._cur][: n * self.volume].reshape(n, self.volume)
        self._pending[self._cur] = self._pool.submit(self.rows, self.t0, slab)
        self.t0 += n
        self.filled = 0
        self._cur ^= 1
        self._wait(self._cur)  # the other buffer's gather is done before it is refilled
        self._bytes = memoryview(self._words[self._cur]).cast("B")

    def _wait(self, b: int) -> None:
        future, self._pending[b] = self._pending[b], None
        if future is not None:
            future.result()

    def _wait_all(self) -> None:
        for b in (0, 1):
            self._wait(b)

    def close(self) -> None:
        """Wait for the gathers under way and stop the gathering thread."""
        try:
            self._wait_all()
            self._drain(check=False)
        finally:
            self._pool.shutdown(wait=True)

    def check_complete(self, where: str, path: Path | None = None) -> None:
        """Raise unless every trial was gathered (waits for the gathers under way).

        For a per-voxel chunked session, completes the gather from the verified file
        ``path`` (the chunks the stream had passed before the index reached them).
        """
        self._wait_all()
        if self.chunks is not None:
            from brainpipe.datasets.nsd_chunks import ChunkLayoutError

            self._drain()
            if path is None:
                raise ValueError("a chunked session completes from its file: pass its path")
            try:
                self.chunks.finish(path, self.fill)
            except ChunkLayoutError as err:
                raise BrainpipeInputError(where, "betas", str(err)) from err
            log.info(
                "%s: %d voxels' chunks gathered as they arrived, %d read from the file",
                where, self.chunks.placed - self.chunks.from_file, self.chunks.from_file,
            )  # fmt: skip
            return
        if self.t0 != self.trials:
            raise BrainpipeInputError(
                where, "betas", f"stream ended after {self.t0} of {self.trials} trials"
            )


class _PrefixFile(SizedReader):
    """The first bytes of a file of known size, for h5py to parse its header from."""

    def __init__(self, prefix: bytes, size: int) -> None:
        super().__init__(size)
        self.prefix = prefix

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self._pos))
        if self._pos + want > len(self.prefix):
            raise OSError(f"bytes {self._pos}-{self._pos + want} are past the buffered header")
        view[:want] = self.prefix[self._pos : self._pos + want]
        self._pos += want
        return want
