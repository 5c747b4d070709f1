"""Voxel slabs of a betas store within a job's memory, for ``benchmarks/outofcore.py``.

A computation that needs every trial of a voxel at once (per-voxel statistics, ncsnr from
repeats, z-scoring, a trial x trial Gram matrix for PCA) reads ``betas(trial, voxel)`` a
voxel slab at a time, each slab whole storage chunks where the budget allows, read by the
job's Dask threads into a reused buffer while the previous slab is processed::

    gram = GramAccumulator(n_trials)
    for voxels, slab in iter_slabs(betas, mem_mb, threads, reserve_mb=gram.nbytes / 1e6):
        ncsnr[voxels] = ncsnr_from_repeats(slab, stimulus)
        gram.add(slab)

Only the out-of-core benchmark uses it (no stage of the workflow does), so it lives here,
beside that benchmark; the sizing comes from the package's one chunk sizer
(:func:`brainpipe.compute.chunk_size_for`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from brainpipe.compute import BASE_MB, check_positive, chunk_size_for


def as_dask(array: Any) -> Any:
    """A Dask array for an xarray DataArray, a Dask array, or anything array-like."""
    import dask.array as da
    import xarray as xr

    if isinstance(array, xr.DataArray | xr.Variable):
        array = array.data  # Dask-backed for a store opened lazily
    if isinstance(array, da.Array):
        return array
    chunks = getattr(array, "chunks", None)  # a Zarr array's storage chunks
    return da.from_array(array, chunks=chunks if isinstance(chunks, tuple) else "auto")


def slab_bounds(chunks: tuple[int, ...], width: int) -> list[tuple[int, int]]:
    """Split an axis with storage ``chunks`` into slabs of at most ``width`` items.

    Slabs are runs of whole chunks where ``width`` allows, so every chunk is read once; a
    chunk wider than ``width`` is cut into equal parts (read once per part).

    Parameters
    ----------
    chunks : tuple of int
        Chunk lengths along the axis (Dask's ``array.chunks[axis]``).
    width : int
        Most items per slab.

    Returns
    -------
    list of (start, stop)
        Consecutive, covering the axis.
    """
    width = int(check_positive("width", width))
    bounds: list[tuple[int, int]] = []
    start = stop = 0
    for size in chunks:
        if size > width:  # this chunk alone is over the budget: equal parts of it
            if stop > start:
                bounds.append((start, stop))
            parts = -(-size // width)
            edges = np.linspace(stop, stop + size, parts + 1).round().astype(int)
            bounds.extend(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))
            start = stop = stop + size
        elif stop + size - start > width:
            bounds.append((start, stop))
            start, stop = stop, stop + size
        else:
            stop += size
    if stop > start:
        bounds.append((start, stop))
    return bounds


def iter_slabs(
    array: Any,
    mem_mb: float,
    threads: int = 1,
    *,
    axis: int = 1,
    bytes_per_item: float | None = None,
    reserve_mb: float = 0.0,
    overhead_mb: float = BASE_MB,
    prefetch: bool = True,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Walk a 2-D array in slabs along ``axis`` (all of the other axis), within ``mem_mb``.

    For computations that need every trial of a voxel at once (per-voxel statistics, ncsnr
    from repeats, z-scoring, a trial x trial Gram matrix): ``betas(trial, voxel)`` is read a
    voxel slab at a time. Slabs follow the storage chunks (:func:`slab_bounds`), their width
    comes from the job's memory (:func:`chunk_size_for`), and each is read by Dask with
    ``threads`` threads chunk by chunk straight into a buffer, so reading holds the slab
    plus ``threads`` decoded chunks, never a task graph's worth of chunks. With ``prefetch``
    the next slab is read into a second buffer while the caller works on this one.

    Memory: ``reserve_mb`` + ``overhead_mb`` + ``threads`` decoded chunks + ``width`` items
    of ``bytes_per_item`` (+ one slab more with ``prefetch``) is kept within ``mem_mb``.
    Where ``overhead_mb`` would leave less than a quarter of what the reserve and the reads
    leave, slabs get that quarter anyway (as in :func:`chunk_bytes_for`): the overhead is an
    estimate with margin (:data:`BASE_MB`), and slabs of a single item would never finish.

    Parameters
    ----------
    array : xarray.DataArray, dask array or array-like, 2-D
        Read lazily (an ``open_zarr`` variable, a Zarr array...).
    mem_mb : float
        The job's memory limit in MB.
    threads : int
        Dask threads reading each slab.
    axis : int
        The axis that is cut (1: voxel slabs of a ``(trial, voxel)`` array).
    bytes_per_item : float, optional
        Peak memory of processing one item (one voxel column with its temporaries), in
        bytes; default: the slab itself (``itemsize * shape[1 - axis]``).
    reserve_mb : float
        Memory already set aside by the caller (accumulators, outputs), in MB.
    overhead_mb : float
        Interpreter and libraries, in MB (:data:`BASE_MB`).
    prefetch : bool
        Read the next slab in the background (one more slab of memory).

    Yields
    ------
    (slice, ndarray)
        The slab's range along ``axis`` and the slab (C-contiguous, the array's dtype).
        **Buffers are reused**: copy anything kept beyond the loop body.
    """
    from concurrent.futures import ThreadPoolExecutor

    import dask.array as da

    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis!r}")
    x = as_dask(array)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {x.shape}")
    mem_mb = check_positive("mem_mb", mem_mb)
    threads = int(check_positive("threads", threads))
    n_other = x.shape[1 - axis]
    slab_item = x.dtype.itemsize * n_other
    if bytes_per_item is None:
        bytes_per_item = slab_item
    per_item = max(check_positive("bytes_per_item", bytes_per_item), slab_item)
    if prefetch:
        per_item += slab_item
    # Reading keeps `threads` decoded storage chunks in flight next to the slab.
    reading_mb = threads * max(x.chunks[0]) * max(x.chunks[1]) * x.dtype.itemsize / 1e6
    width = chunk_size_for(
        max(mem_mb - reserve_mb - reading_mb, 1.0),
        per_item,
        threads=1,
        n_items=x.shape[axis],
        overhead_mb=overhead_mb,
        multiplier=1.0,
    )
    bounds = slab_bounds(x.chunks[axis], width)
    widest = max((stop - start for start, stop in bounds), default=0)
    buffers = [np.empty(widest * n_other, dtype=x.dtype) for _ in range(1 + bool(prefetch))]

    def read(i: int) -> tuple[slice, np.ndarray]:
        start, stop = bounds[i]
        part = slice(start, stop)
        shape = (n_other, stop - start) if axis == 1 else (stop - start, n_other)
        slab = buffers[i % len(buffers)][: shape[0] * shape[1]].reshape(shape)
        source = x[:, part] if axis == 1 else x[part, :]
        # Each chunk task writes its block into the buffer and is dropped: no concatenation.
        da.store(source, slab, lock=False, scheduler="threads", num_workers=threads)
        return part, slab

    if not prefetch:
        for i in range(len(bounds)):
            yield read(i)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="iter_slabs") as pool:
        pending = pool.submit(read, 0) if bounds else None
        for i in range(len(bounds)):
            part, slab = pending.result()
            if i + 1 < len(bounds):  # into the other buffer, while the caller works on this
                pending = pool.submit(read, i + 1)
            yield part, slab


class GramAccumulator:
    """``sum(block @ block.T)`` over blocks (e.g. voxel slabs), in float64.

    Each block's product is one BLAS call in the block's own precision (numpy turns
    ``block @ block.T`` into ``syrk``, half the work of a general product), added to a
    float64 sum, so a float32 Gram matrix of many slabs loses no precision to the running
    sum. Memory: the float64 ``n x n`` sum plus one ``n x n`` product in the block's
    precision (:attr:`nbytes` counts both at float64).

    Parameters
    ----------
    n : int
        Rows of every block (e.g. trials).
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self._sum = np.zeros((self.n, self.n))

    @property
    def nbytes(self) -> int:
        """Bytes held at the peak of :meth:`add` (the sum and one product)."""
        return 2 * self._sum.nbytes

    def add(self, block: np.ndarray) -> None:
        """Add ``block @ block.T`` for ``block`` of shape ``(n, k)``."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[0] != self.n:
            raise ValueError(f"expected a block of shape ({self.n}, k), got {block.shape}")
        if block.dtype not in (np.float32, np.float64):
            block = block.astype(np.float64)
        if block.shape[1]:
            self._sum += block @ block.T

    def result(self) -> np.ndarray:
        """The symmetric ``n x n`` float64 sum (the accumulator's own array, no copy)."""
        return self._sum
