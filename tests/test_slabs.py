"""Voxel slabs within a job's memory (benchmarks/slabs.py, the out-of-core benchmark's
reader): every slab walk gives the in-memory results and keeps within mem_mb."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from benchmarks.slabs import GramAccumulator, iter_slabs, slab_bounds
from brainpipe.compute import dask_resources
from brainpipe.metrics import ncsnr_from_repeats
from brainpipe.storage import open_zarr


def test_slabs_are_runs_of_whole_chunks_and_big_chunks_are_cut_evenly():
    assert slab_bounds((500,) * 6, 1200) == [(0, 1000), (1000, 2000), (2000, 3000)]
    assert slab_bounds((500,) * 5, 1000) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert slab_bounds((500, 500, 200), 250) == [(0, 250), (250, 500), (500, 750),
                                                 (750, 1000), (1000, 1200)]  # fmt: skip
    assert slab_bounds((300, 1000, 100), 400) == [(0, 300), (300, 633), (633, 967),
                                                  (967, 1300), (1300, 1400)]  # fmt: skip
    for chunks, width in [((7, 7, 3), 5), ((4096,) * 3 + (1000,), 9000), ((1,), 1)]:
        bounds = slab_bounds(chunks, width)
        assert bounds[0][0] == 0 and bounds[-1][1] == sum(chunks)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert all(0 < stop - start <= width for start, stop in bounds)


@pytest.fixture
def betas_store(tmp_path):
    rng = np.random.default_rng(1)
    stimulus = rng.permutation(np.concatenate([np.repeat(np.arange(35), 3), np.arange(35, 50)]))
    betas = (rng.standard_normal((120, 3000)) + 2).astype(np.float32)
    xr.Dataset(
        {"betas": (("trial", "voxel"), betas)}, coords={"stimulus": ("trial", stimulus.astype(str))}
    ).chunk({"trial": 40, "voxel": 500}).to_zarr(tmp_path / "b.zarr", zarr_format=3)
    return tmp_path / "b.zarr", betas, stimulus.astype(str)


@pytest.mark.parametrize(
    ("per_item", "prefetch", "n_slabs"), [(None, True, 3), (None, False, 2), (120 * 24, True, 12)]
)
def test_voxel_slabs_give_the_in_memory_results(betas_store, per_item, prefetch, n_slabs):
    """mean, std, ncsnr and the trial x trial Gram matrix of z-scored betas, slab by slab.

    With 1 MB (the smallest chunk size) a slab is 1e6 / (120 trials x 4 bytes, twice with
    prefetch) voxels: 2 or 4 of the 500-voxel chunks; at 24 bytes per trial and voxel, a
    chunk is cut in two.
    """
    path, betas, stimulus = betas_store
    ds = open_zarr(path)
    n_trials, n_voxels = betas.shape
    mean, std, ncsnr = (np.full(n_voxels, np.nan) for _ in range(3))
    gram = GramAccumulator(n_trials)
    seen = []
    with dask_resources(2, 500):
        for part, slab in iter_slabs(
            ds["betas"], 1, 2, bytes_per_item=per_item, overhead_mb=0, prefetch=prefetch
        ):
            seen.append((part.start, part.stop))
            assert slab.shape == (n_trials, part.stop - part.start) and slab.flags.c_contiguous
            mean[part] = slab.mean(axis=0, dtype=np.float64)
            std[part] = slab.std(axis=0, dtype=np.float64)
            ncsnr[part] = ncsnr_from_repeats(slab, stimulus)
            slab -= mean[part].astype(np.float32)
            slab /= std[part].astype(np.float32)
            gram.add(slab)
    assert len(seen) == n_slabs  # really more than one slab, following the 500-voxel chunks
    assert seen[0][0] == 0 and seen[-1][1] == n_voxels
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:], strict=False))
    if per_item is None:
        assert all(start % 500 == 0 for start, _ in seen)
    np.testing.assert_array_equal(mean, betas.mean(axis=0, dtype=np.float64))
    np.testing.assert_array_equal(std, betas.std(axis=0, dtype=np.float64))
    np.testing.assert_allclose(ncsnr, ncsnr_from_repeats(betas, stimulus), rtol=1e-12)
    z = (betas - mean.astype(np.float32)) / std.astype(np.float32)
    expected = z.astype(np.float64) @ z.T.astype(np.float64)
    np.testing.assert_allclose(gram.result(), expected, rtol=1e-4, atol=1e-2)
    np.testing.assert_array_equal(gram.result(), gram.result().T)


def test_row_slabs_and_plain_arrays():
    x = np.arange(60.0).reshape(12, 5)
    rows = list(iter_slabs(x, 1, 1, axis=0, overhead_mb=0, prefetch=False))
    assert [(p.start, p.stop) for p, _ in rows] == [(0, 12)]
    np.testing.assert_array_equal(rows[0][1], x)
    with pytest.raises(ValueError, match="axis must be 0 or 1"):
        next(iter_slabs(x, 1, axis=2))


def test_slab_width_keeps_the_job_within_mem_mb():
    """reserve + overhead + reads + (slab and its temporaries, and the prefetched slab)."""
    x = da.zeros((3000, 400_000), dtype=np.float32, chunks=(750, 4096))
    mem_mb, threads, per_item, reserve = 4000, 2, 3000 * 12, 150
    (part, _), *_ = iter_slabs(x, mem_mb, threads, bytes_per_item=per_item, reserve_mb=reserve)
    width = part.stop - part.start
    reads = threads * 750 * 4096 * 4 / 1e6
    used = reserve + 200 + reads + width * (per_item + 3000 * 4) / 1e6
    assert width % 4096 == 0 and width > 4096
    assert used <= mem_mb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_accumulator_sums_block_products(dtype):
    rng = np.random.default_rng(2)
    blocks = [rng.standard_normal((50, k)).astype(dtype) for k in (7, 0, 300, 1)]
    gram = GramAccumulator(50)
    for block in blocks:
        gram.add(block)
    full = np.concatenate(blocks, axis=1).astype(np.float64)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(gram.result(), full @ full.T, rtol=rtol, atol=rtol * 10)
    assert gram.result().dtype == np.float64
    with pytest.raises(ValueError, match="shape"):
        gram.add(np.ones((49, 3)))
