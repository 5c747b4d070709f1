"""Atomic writes: a failed write leaves nothing that looks complete."""

import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from brainpipe.storage import atomic_path, config_hash, open_zarr, write_text_atomic, write_zarr


def test_write_zarr_round_trip(tmp_path):
    ds = xr.Dataset(
        {"betas": (("trial", "voxel"), np.arange(12, dtype=np.float32).reshape(3, 4))},
        coords={"stimulus": ("trial", ["a", "b", "c"])},
        attrs={"units": "percent signal change"},
    )
    path = write_zarr(ds, tmp_path / "x.zarr")
    back = open_zarr(path)
    xr.testing.assert_identical(back.load(), ds)
    assert [p.name for p in tmp_path.iterdir()] == ["x.zarr"]


def test_failed_write_leaves_no_store_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.zarr"
    write_zarr(xr.Dataset({"a": ("x", np.zeros(3))}), target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            xr.Dataset({"a": ("x", np.ones(3))}).to_zarr(tmp)
            raise RuntimeError("job killed half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    np.testing.assert_array_equal(open_zarr(target)["a"].values, np.zeros(3))


def test_text_write_is_atomic(tmp_path):
    path = write_text_atomic("hello", tmp_path / "a" / "b.tsv")
    assert path.read_text() == "hello"
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.tsv"]


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_direct_write_store_round_trips_big_and_small_values(tmp_path, monkeypatch, where):
    """Chunks of 1 MiB and more go around the page cache (O_DIRECT, unaligned sizes padded
    then truncated; buffered on tmpfs, which refuses O_DIRECT); the rest as LocalStore."""
    import shutil as _shutil

    import zarr

    from brainpipe import directio
    from brainpipe.directio import DirectWriteStore

    direct_writes = []
    real = directio.write_file_direct
    monkeypatch.setattr(
        directio,
        "write_file_direct",
        lambda path, data: direct_writes.append(path) or real(path, data),
    )
    root = tmp_path if where == "disk" else Path("/dev/shm") / f"bp-test-{uuid.uuid4().hex}"
    try:
        rng = np.random.default_rng(0)
        values = rng.normal(size=(750, 1000)).astype(np.float32)
        group = zarr.open_group(DirectWriteStore(root / "s.zarr"), mode="w", zarr_format=3)
        big = group.create_array(
            "big", shape=values.shape, chunks=(750, 437), dtype="f4", compressors=None
        )
        big[...] = values  # 1.31 MB chunks (not a multiple of 4096 bytes)
        small = group.create_array("small", shape=(10,), dtype="i4")
        small[...] = np.arange(10)
        reread = zarr.open_group(root / "s.zarr", mode="r")
        np.testing.assert_array_equal(reread["big"][...], values)
        np.testing.assert_array_equal(reread["small"][...], np.arange(10))
        sizes = sorted(p.stat().st_size for p in (root / "s.zarr/big/c").rglob("*") if p.is_file())
        assert sizes == [750 * 437 * 4] * 3  # edge chunk padded to the chunk shape by zarr
        assert len(direct_writes) == 3 and all("big" in str(p) for p in direct_writes)
        assert not [p for p in (root / "s.zarr").rglob("*partial*")]
    finally:
        if where == "tmpfs":
            _shutil.rmtree(root, ignore_errors=True)
