"""Voxel chunk size from a memory budget, so peak memory is bounded whatever the brain size."""

from __future__ import annotations

#: Memory assumed taken by the interpreter, libraries and design operators, MB.
BASE_MB = 600
#: Fraction of the remaining budget given to voxel-sized arrays.
SAFETY = 0.5


def bytes_per_voxel(
    max_session_scans: int,
    max_session_trials: int,
    n_hrfs: int,
    max_run_trials: int,
    n_total_trials: int,
) -> int:
    """Peak float32 bytes the GLMsingle fit holds per voxel of a chunk.

    Counts the session's time series and its float32 copy on the backend
    (3×), the projections of the screening pass (one row per HRF and trial of a
    run), the betas held while cross-validating ridge fractions (OLS, best,
    current, prediction, shrinkage factors, rescaled: ~8× the session's
    trials) and the betas of all trials read back for the noise ceiling (3×).
    """
    per_scan = 3 * max_session_scans
    screening = 2 * (n_hrfs + 1) * max_run_trials
    fit = 8 * max_session_trials
    nc = 3 * n_total_trials
    return 4 * (per_scan + max(screening, fit, nc))


def voxel_chunk_for_memory(
    mem_mb: float, per_voxel_bytes: int, align: int = 1, lo: int = 64, hi: int = 65536
) -> int:
    """Voxels per chunk fitting ``mem_mb`` (the rule's ``resources.mem_mb``).

    The one chunk sizer of brainpipe (:func:`brainpipe.compute.chunk_size_for`, in MB as
    Snakemake's ``mem_mb``), with :data:`BASE_MB` kept aside and a chunk's peak
    ``per_voxel_bytes / SAFETY`` per voxel.

    Parameters
    ----------
    mem_mb : float
        Memory budget of the job in MB.
    per_voxel_bytes : int
        From :func:`bytes_per_voxel`.
    align : int
        Storage chunk along voxels: the result is a multiple of it when at least one fits.
    lo, hi : int
        Bounds on the result.
    """
    from brainpipe.compute import chunk_size_for

    n = chunk_size_for(
        mem_mb, max(per_voxel_bytes, 1), overhead_mb=BASE_MB, multiplier=1.0 / SAFETY
    )
    n = max(lo, min(hi, n))
    if align > 1 and n >= align:
        n = (n // align) * align
    return n
