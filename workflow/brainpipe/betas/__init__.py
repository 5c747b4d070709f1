"""Single-trial betas: every producer of ``betas.zarr`` in one package.

- :mod:`.lsa`: least squares — all (one regressor per trial, canonical HRF);
- :mod:`.glmsingle`: the GLMsingle subject driver (the solvers live in
  :mod:`brainpipe.glmsingle`);
- :mod:`.store`: the betas.zarr contract (:class:`BetasLayout` creates every
  producer's store, NSD ingest included) and its helpers;
- :func:`estimate_betas`: the dispatcher on ``config["betas"]["method"]``.

The store layout is the storage contract of ``docs/architecture.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainpipe.betas.lsa import estimate_subject_betas, fit_lsa, lsa_design
from brainpipe.betas.store import (
    BetasLayout,
    close_store,
    noise_ceiling_vars,
    roi_membership,
    write_per_voxel,
    zscore_by_session,
)
from brainpipe.bids import BidsLayout, RunKey
from brainpipe.config import VOXEL_CHUNK, schema_default
from brainpipe.errors import BrainpipeInputError

__all__ = [
    "BetasLayout",
    "close_store",
    "estimate_betas",
    "estimate_subject_betas",
    "fit_lsa",
    "lsa_design",
    "noise_ceiling_vars",
    "roi_membership",
    "write_per_voxel",
    "zscore_by_session",
]


def estimate_betas(
    preproc_path: str | Path,
    layout: BidsLayout,
    subject: str,
    runs: list[RunKey],
    out_path: str | Path,
    voxel_chunk: int = VOXEL_CHUNK,
    config: dict[str, Any] | None = None,
    mem_mb: float = 4000,
    threads: int = 1,
) -> Path:
    """Write ``betas.zarr`` with the method of ``config["betas"]["method"]``.

    ``lsa`` (default): :func:`brainpipe.betas.lsa.estimate_subject_betas`.
    ``glmsingle``: :func:`brainpipe.betas.glmsingle.estimate_subject_betas_glmsingle`
    with the types of ``betas.types``, its voxel chunk sized from ``mem_mb``.
    """
    method = (config or {}).get("betas", {}).get("method") or schema_default("betas.method")
    if method == "lsa":
        return estimate_subject_betas(
            preproc_path, layout, subject, runs, out_path, voxel_chunk=voxel_chunk, config=config
        )
    if method == "glmsingle":
        from brainpipe.betas.glmsingle import estimate_subject_betas_glmsingle

        return estimate_subject_betas_glmsingle(
            preproc_path,
            layout,
            subject,
            runs,
            out_path,
            voxel_chunk=voxel_chunk,
            config=config,
            mem_mb=mem_mb,
            threads=threads,
        )
    raise BrainpipeInputError(
        "config", "betas.method", f"got {method!r}; expected 'lsa' or 'glmsingle'"
    )
