"""Dask within the resources a job asked for: scheduler, worker count and chunk sizes.

A Snakemake job declares ``threads`` and ``resources.mem_mb``; on SLURM those become
``--cpus-per-task`` and ``--mem``, and the job is killed if it goes over. Stages that touch
large arrays (ingest, betas, alignment, feature PCA) run their Dask graphs inside
:func:`dask_resources`, which sets Dask's threaded scheduler to the job's threads and sizes
array chunks from its memory, so that ``threads`` chunks in flight (plus their temporaries)
stay under ``mem_mb``::

    from brainpipe.compute import dask_resources

    with dask_resources(snakemake.threads, snakemake.resources.mem_mb):
        betas = open_zarr(path)["betas"]           # lazily, in chunks
        ncsnr = ncsnr_from_repeats(...).compute()  # at most `threads` chunks at once

A computation that needs every trial of a voxel at once (ncsnr, z-scoring, a trial x trial
Gram matrix for PCA) walks the store in voxel slabs with :func:`iter_slabs`: each slab is
whole storage chunks where the budget allows (each chunk decoded once), read by ``threads``
Dask threads straight into a reused buffer while the previous slab is being processed::

    gram = GramAccumulator(n_trials)
    for voxels, slab in iter_slabs(betas, mem_mb, threads, reserve_mb=gram.nbytes / 1e6):
        ncsnr[voxels] = ncsnr_from_repeats(slab, stimulus)
        gram.add(slab)

One array job bigger than a node
--------------------------------
For a single computation that does not fit one node (e.g. PCA over all NSD subjects' betas),
:func:`slurm_cluster` starts Dask workers as SLURM jobs with dask-jobqueue; every worker
gets the same ``cores`` / ``memory`` request a Snakemake job would::

    from dask.distributed import Client
    from brainpipe.compute import slurm_cluster

    with slurm_cluster(n_workers=8, cores=4, mem_mb=16000, runtime_min=120,
                       partition="main", account="brainpipe") as cluster, Client(cluster):
        result = big_array.mean(axis=0).compute()

The rule that runs it asks SLURM only for the small driver process (1 CPU, ~2 GB); the
workers are separate SLURM jobs and show in ``sacct`` under the name ``dask-worker``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np

#: Part of a job's memory left to Python, imports, Zarr buffers and output arrays.
OVERHEAD_MB = 400
#: A chunk's temporaries (decompression buffer, float64 copies, reductions) relative to it.
CHUNK_MULTIPLIER = 4.0
#: Never make chunks smaller than this (per-chunk overhead dominates below it).
MIN_CHUNK_BYTES = 1 << 20
#: Interpreter and libraries alone, for :func:`iter_slabs` (which counts its reads and the
#: caller's reserve itself). Measured: a process importing numpy, dask.array, xarray, zarr,
#: scipy and brainpipe peaks at ~125 MB (``benchmarks/outofcore.py``, "imports only").
BASE_MB = 200


def _check_positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def chunk_bytes_for(
    mem_mb: float,
    threads: int = 1,
    *,
    overhead_mb: float = OVERHEAD_MB,
    multiplier: float = CHUNK_MULTIPLIER,
) -> int:
    """Bytes per chunk such that ``threads`` chunks in flight fit in ``mem_mb``.

    Parameters
    ----------
    mem_mb : float
        The job's memory limit in MB (``snakemake.resources.mem_mb``).
    threads : int
        Chunks processed at once (the job's threads).
    overhead_mb : float
        Memory kept aside for the interpreter, libraries and outputs, in MB.
    multiplier : float
        Peak memory of processing one chunk, in units of the chunk's size.

    Returns
    -------
    int
        Chunk size in bytes, at least :data:`MIN_CHUNK_BYTES`.
    """
    mem_mb = _check_positive("mem_mb", mem_mb)
    threads = int(_check_positive("threads", threads))
    budget = max(mem_mb - overhead_mb, mem_mb / 4) * 1e6
    return max(int(budget / (threads * multiplier)), MIN_CHUNK_BYTES)


def chunk_size_for(
    mem_mb: float,
    bytes_per_item: int,
    threads: int = 1,
    *,
    n_items: int | None = None,
    overhead_mb: float = OVERHEAD_MB,
    multiplier: float = CHUNK_MULTIPLIER,
) -> int:
    """Number of items (rows, voxels, trials...) per chunk for a job's memory.

    Parameters
    ----------
    mem_mb : float
        The job's memory limit in MB.
    bytes_per_item : int
        Size of one item in bytes (e.g. ``n_trials * 4`` for one float32 voxel column).
    threads : int
        Chunks processed at once.
    n_items : int, optional
        Total number of items; the result never exceeds it.
    overhead_mb, multiplier : float
        See :func:`chunk_bytes_for`.

    Returns
    -------
    int
        Items per chunk, at least 1.
    """
    per_item = _check_positive("bytes_per_item", bytes_per_item)
    size = max(int(chunk_bytes_for(mem_mb, threads, overhead_mb=overhead_mb,
                                   multiplier=multiplier) // per_item), 1)  # fmt: skip
    return min(size, n_items) if n_items else size


#: Arrays above this size get their own mmap and go back to the OS when freed.
MMAP_THRESHOLD_BYTES = 1 << 20


def limit_allocator_growth(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc return freed large arrays to the OS at once (process-wide).

    glibc raises its mmap threshold each time a large block is freed, after which chunk-sized
    buffers are carved from per-thread heaps that do not shrink: a chunked computation's
    resident memory then creeps far above what it holds at any moment. A fixed threshold
    keeps every array above ``threshold`` bytes in its own mapping. Measured with
    ``benchmarks/outofcore.py``: peak RSS 553 MB -> 343 MB for the same Dask graph.

    Returns
    -------
    bool
        Whether the setting was applied (False where libc is not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def dask_resources(threads: int, mem_mb: float, **chunk_options: float) -> Iterator[dict]:
    """Run Dask inside a job's ``threads`` and ``mem_mb``.

    Sets the threaded scheduler with ``threads`` workers and ``array.chunk-size`` (so
    ``chunks="auto"`` and rechunking respect the budget); restores the previous settings on
    exit. Native thread pools (BLAS, torch) are left to the stage, which knows ``threads``.
    Also fixes glibc's mmap threshold (:func:`limit_allocator_growth`), which stays set.

    Parameters
    ----------
    threads : int
        ``snakemake.threads``.
    mem_mb : float
        ``snakemake.resources.mem_mb``.
    **chunk_options
        ``overhead_mb`` / ``multiplier`` for :func:`chunk_bytes_for`.

    Yields
    ------
    dict
        ``{"threads", "mem_mb", "chunk_bytes"}``: what was set; pass ``chunk_bytes`` to
        :func:`chunk_size_for`-style sizing of a stage's own blocks.
    """
    threads = int(_check_positive("threads", threads))
    mem_mb = _check_positive("mem_mb", mem_mb)
    chunk_bytes = chunk_bytes_for(mem_mb, threads, **chunk_options)
    limit_allocator_growth()
    with dask.config.set(
        {
            "scheduler": "threads",
            "num_workers": threads,
            "array.chunk-size": f"{chunk_bytes}B",
            # Slicing a chunked array must not create chunks larger than the budget.
            "array.slicing.split_large_chunks": True,
        }
    ):
        yield {"threads": threads, "mem_mb": mem_mb, "chunk_bytes": chunk_bytes}


def _as_dask(array: Any) -> Any:
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
    width = int(_check_positive("width", width))
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
    x = _as_dask(array)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {x.shape}")
    mem_mb = _check_positive("mem_mb", mem_mb)
    threads = int(_check_positive("threads", threads))
    n_other = x.shape[1 - axis]
    slab_item = x.dtype.itemsize * n_other
    if bytes_per_item is None:
        bytes_per_item = slab_item
    per_item = max(_check_positive("bytes_per_item", bytes_per_item), slab_item)
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


@contextlib.contextmanager
def local_cluster(threads: int, mem_mb: float) -> Iterator[Any]:
    """A ``dask.distributed`` client whose one worker is held to the job's memory.

    The worker spills to disk at 60 % of ``mem_mb`` and pauses at 80 %, so memory stays
    under the job's limit even for graphs the threaded scheduler would hold in memory.
    Scripts using it need an ``if __name__ == "__main__":`` guard.

    Parameters
    ----------
    threads : int
        Worker threads (``snakemake.threads``).
    mem_mb : float
        Memory limit of the worker, in MB (``snakemake.resources.mem_mb`` minus overhead).
    """
    from dask.distributed import Client, LocalCluster

    threads = int(_check_positive("threads", threads))
    mem_mb = _check_positive("mem_mb", mem_mb)
    limit = int(max(mem_mb - OVERHEAD_MB, mem_mb / 2) * 1e6)
    with (
        dask.config.set(
            {
                "distributed.worker.memory.target": 0.6,
                "distributed.worker.memory.spill": 0.7,
                "distributed.worker.memory.pause": 0.8,
                "array.chunk-size": f"{chunk_bytes_for(mem_mb, threads)}B",
            }
        ),
        LocalCluster(
            n_workers=1,
            threads_per_worker=threads,
            memory_limit=limit,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def slurm_cluster(
    n_workers: int,
    cores: int,
    mem_mb: int,
    runtime_min: int = 60,
    *,
    partition: str | None = None,
    account: str | None = None,
    **kwargs: Any,
):
    """A dask-jobqueue ``SLURMCluster`` with ``n_workers`` workers of one SLURM job each.

    Parameters
    ----------
    n_workers : int
        Worker jobs to start (``cluster.scale(n_workers)``).
    cores : int
        CPUs per worker job (``--cpus-per-task``).
    mem_mb : int
        Memory per worker job in MB (``--mem``); the worker's memory limit is the same.
    runtime_min : int
        Wall time per worker job in minutes.
    partition, account : str, optional
        SLURM partition and account (the site values of cluster/config.yaml).
    **kwargs
        Passed to ``dask_jobqueue.SLURMCluster``.

    Returns
    -------
    dask_jobqueue.SLURMCluster
        Use it as a context manager so the worker jobs are cancelled at the end.
    """
    from dask_jobqueue import SLURMCluster

    hours, minutes = divmod(int(runtime_min), 60)
    cluster = SLURMCluster(
        cores=int(cores),
        processes=1,
        memory=f"{int(mem_mb)}MB",
        walltime=f"{hours:02d}:{minutes:02d}:00",
        queue=partition,
        account=account,
        job_name="dask-worker",
        **kwargs,
    )
    cluster.scale(int(n_workers))
    return cluster
