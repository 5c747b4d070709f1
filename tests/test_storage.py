"""Atomic writes: a failed write leaves nothing that looks complete."""

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
