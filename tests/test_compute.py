"""Dask within a job's threads and mem_mb (brainpipe.compute)."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from brainpipe.compute import (
    MIN_CHUNK_BYTES,
    chunk_bytes_for,
    chunk_size_for,
    dask_resources,
)
from brainpipe.metrics import ncsnr_from_repeats
from brainpipe.storage import open_zarr


def test_chunks_shrink_with_threads_and_grow_with_memory():
    assert chunk_bytes_for(4000, 1) == pytest.approx(2 * chunk_bytes_for(4000, 2), rel=1e-6)
    assert chunk_bytes_for(8000, 2) > chunk_bytes_for(4000, 2)
    # threads chunks in flight, each with its temporaries, fit in what is left of mem_mb
    for mem_mb, threads in [(1000, 1), (2000, 4), (16000, 8)]:
        assert threads * chunk_bytes_for(mem_mb, threads) * 4 <= mem_mb * 1e6
    assert chunk_bytes_for(1, 64) == MIN_CHUNK_BYTES


def test_chunk_size_for_counts_items():
    n_trials = 3000
    size = chunk_size_for(2000, bytes_per_item=n_trials * 4, threads=2)
    assert size == chunk_bytes_for(2000, 2) // (n_trials * 4)
    assert chunk_size_for(2000, bytes_per_item=4, n_items=100) == 100
    assert chunk_size_for(1, bytes_per_item=10**12) == 1


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "lots", None])
def test_bad_resources_are_refused_with_the_value(bad):
    with pytest.raises(ValueError, match="mem_mb must be a positive number"):
        chunk_bytes_for(bad)
    with pytest.raises(ValueError, match="threads must be a positive number"):
        with dask_resources(bad, 1000):
            pass


def test_dask_resources_sets_and_restores_the_scheduler():
    before = (dask.config.get("num_workers", None), dask.config.get("array.chunk-size"))
    with dask_resources(3, 1200) as budget:
        assert dask.config.get("scheduler") == "threads"
        assert dask.config.get("num_workers") == 3
        assert budget["chunk_bytes"] == chunk_bytes_for(1200, 3)
        # chunks="auto" now respects the job's budget
        x = da.ones((20000, 20000), dtype=np.float32, chunks="auto")
        assert max(np.prod(c) * 4 for c in [x.chunksize]) <= budget["chunk_bytes"]
    assert (dask.config.get("num_workers", None), dask.config.get("array.chunk-size")) == before


def test_a_store_is_processed_in_chunks_with_the_same_result(tmp_path):
    rng = np.random.default_rng(0)
    stimulus = np.repeat(np.arange(40), 3)
    betas = rng.standard_normal((120, 3000)).astype(np.float32)
    xr.Dataset(
        {"betas": (("trial", "voxel"), betas)}, coords={"stimulus": ("trial", stimulus.astype(str))}
    ).chunk({"trial": 40, "voxel": 500}).to_zarr(tmp_path / "b.zarr", zarr_format=3)
    x = open_zarr(tmp_path / "b.zarr")["betas"].data
    with dask_resources(2, 500):
        block = chunk_size_for(0.5, bytes_per_item=120 * 24, overhead_mb=0, multiplier=1)
        ncsnr = (
            x.rechunk((120, block))
            .map_blocks(
                lambda b: ncsnr_from_repeats(b, stimulus.astype(str)), drop_axis=0, dtype=float
            )
            .compute()
        )
        mean = x.mean(axis=0).compute()
    assert block < 3000  # really more than one block
    np.testing.assert_allclose(ncsnr, ncsnr_from_repeats(betas, stimulus.astype(str)))
    np.testing.assert_allclose(mean, betas.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_ncsnr_column_blocks_do_not_change_the_result():
    rng = np.random.default_rng(3)
    stimulus = rng.permutation(np.concatenate([np.repeat(np.arange(60), 3), np.arange(60, 80)]))
    betas = rng.standard_normal((200, 700)).astype(np.float32)
    whole = ncsnr_from_repeats(betas, stimulus, block_bytes=1 << 30)
    for block_bytes in (1, 5000, 1 << 20):
        np.testing.assert_allclose(
            ncsnr_from_repeats(betas, stimulus, block_bytes=block_bytes), whole, rtol=1e-12
        )
