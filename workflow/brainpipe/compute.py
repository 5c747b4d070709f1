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
Gram matrix for PCA) can walk the store in voxel slabs sized by :func:`chunk_size_for`;
``benchmarks/slabs.py`` does so for ``benchmarks/outofcore.py``, which measures it.

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

#: Part of a job's memory left to Python, imports, Zarr buffers and output arrays.
OVERHEAD_MB = 400
#: A chunk's temporaries (decompression buffer, float64 copies, reductions) relative to it.
CHUNK_MULTIPLIER = 4.0
#: Never make chunks smaller than this (per-chunk overhead dominates below it).
MIN_CHUNK_BYTES = 1 << 20
#: Interpreter and libraries alone, for sizers that count their reads and reserves
#: themselves (GLMsingle's voxel chunks, ``benchmarks/slabs.py``). Measured: a process
#: importing numpy, dask.array, xarray, zarr, scipy and brainpipe peaks at ~125 MB
#: (``benchmarks/outofcore.py``, "imports only").
BASE_MB = 200


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float; raises ``ValueError`` naming ``name`` unless it is positive."""
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
    mem_mb = check_positive("mem_mb", mem_mb)
    threads = int(check_positive("threads", threads))
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
    per_item = check_positive("bytes_per_item", bytes_per_item)
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
    threads = int(check_positive("threads", threads))
    mem_mb = check_positive("mem_mb", mem_mb)
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
