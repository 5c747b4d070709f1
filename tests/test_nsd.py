"""NSD: from a loopback S3 server serving NSD's real key layout and file formats to betas.zarr."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.datasets import nsd
from brainpipe.datasets.registry import load_entry
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError
from brainpipe.remote import read_manifest
from brainpipe.splits import read_splits
from brainpipe.storage import open_zarr, quiet_consolidated

from .conftest import ROOT, run_workflow
from .nsd_fixtures import write_nsd_tree
from .s3_server import serve_tree

BUCKET = "natural-scenes-dataset"
SESSIONS = ["01", "02"]


@pytest.fixture(scope="module")
def nsd_server(tmp_path_factory):
    """A moto S3 server holding a tiny NSD; yields (endpoint_url, ground truth)."""
    tree = tmp_path_factory.mktemp("nsd-bucket")
    truth = write_nsd_tree(tree, subjects=("01",), sessions=SESSIONS)
    with serve_tree(tree, BUCKET) as endpoint:
        yield endpoint, truth


def options(endpoint: str, **extra) -> nsd.NsdOptions:
    """Registry options, betas as shipped (``zscore: false``) unless ``extra`` says otherwise."""
    entry = load_entry("nsd")
    block = {"endpoint_url": endpoint, "zscore": False, **extra}
    return nsd.NsdOptions.from_config({**entry.info, **entry.merged_source({"source": block})})


@pytest.fixture(scope="module")
def fetched(nsd_server, tmp_path_factory):
    """The data folder after fetching subject 01, sessions 01-02 from the server, betas
    files included (``stream_betas: false``: ingest reads them from disk)."""
    endpoint, _ = nsd_server
    dest = tmp_path_factory.mktemp("data") / "nsd"
    fetch_dataset(
        "nsd", dest, subjects=["01"], sessions=SESSIONS,
        source={"endpoint_url": endpoint, "stream_betas": False, "zscore": False},
        progress=False,
    )  # fmt: skip
    return dest


def test_fetch_lays_out_bucket_keys_and_only_needed_images(fetched, nsd_server):
    _, truth = nsd_server
    opts = options("unused")
    for key in [nsd.EXPDESIGN_KEY, *nsd.subject_keys("01", SESSIONS, opts)]:
        assert (fetched / key).is_file(), key
    assert not (fetched / nsd.STIMULI_KEY).exists()  # the 40 GB brick is never downloaded
    manifest = read_manifest(fetched.with_name(".nsd-objects"))
    assert nsd.betas_key("01", "02", opts) in manifest
    assert all(rec["verified"] == "md5" for rec in manifest.values())
    table = pd.read_csv(fetched / "stimuli/stimuli.tsv", sep="\t", dtype={"stimulus": str})
    ids = truth["subjectim"][0, truth["masterordering"][: 750 * len(SESSIONS)]]
    assert sorted(table["stimulus"]) == sorted(nsd.stimulus_name(i) for i in np.unique(ids))
    from PIL import Image

    first = int(table["stimulus"].iloc[0].split("-")[1])
    img = np.asarray(Image.open(fetched / "stimuli" / table["image"].iloc[0]))
    np.testing.assert_array_equal(img, truth["images"][first])
    assert set(table.loc[table["shared"] == 1, "stimulus"]) == {
        nsd.stimulus_name(i) for i in truth["shared"]
    }


def test_ingest_matches_hdf5_design_rois_and_ncsnr(fetched, nsd_server, tmp_path):
    _, truth = nsd_server
    opts = options("unused")
    splits = tmp_path / "splits.tsv"
    table = nsd.make_nsd_splits(fetched / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
    assert set(table.loc[table["split"] == "test", "stimulus"]) == {
        nsd.stimulus_name(i) for i in truth["shared"]
    }
    out = nsd.ingest_nsd_subject(fetched, "01", SESSIONS, tmp_path / "betas.zarr", opts, splits)
    ds = open_zarr(out)
    mask = truth["mask"]["01"]
    ijk = np.argwhere(mask)
    assert ds.sizes == {"trial": 1500, "voxel": len(ijk), "ses": 2}
    np.testing.assert_array_equal(np.stack([ds.i, ds.j, ds.k], 1), ijk)
    betas = ds["betas"].values
    assert betas.dtype == np.float32
    for n, ses in enumerate(SESSIONS):  # NIfTI (i, j, k) voxel <- HDF5 [t, k, j, i] / 300
        expected = truth["betas"][("01", ses)][mask].T
        np.testing.assert_allclose(betas[n * 750 : (n + 1) * 750], expected, atol=1e-6)
    ids = truth["subjectim"][0, truth["masterordering"][:1500]]
    assert list(ds.stimulus.values) == [nsd.stimulus_name(i) for i in ids]
    assert list(ds.session.values[[0, 749, 750]]) == ["01", "01", "02"]
    # runs and onsets from stimpattern: slot s of run r starts at 4 s × s
    for n in range(len(SESSIONS)):
        run, slot = np.nonzero(truth["stimpattern"][n])
        rows = slice(n * 750, (n + 1) * 750)
        assert list(ds.run.values[rows]) == [f"{r + 1:02d}" for r in run]
        np.testing.assert_array_equal(ds.onset.values[rows], 4.0 * slot)
    assert ds.onset.values[0] > 0  # a run starts with a blank slot, not a trial at 0 s
    # invalid voxels of a session (valid_sessionNN) are recorded, their betas are NSD's 0
    assert list(ds.ses.values) == SESSIONS
    for n, ses in enumerate(SESSIONS):
        valid = truth["valid"][("01", ses)][mask]
        np.testing.assert_array_equal(ds["valid"].values[n], valid)
        assert (~valid).sum() == 3 and (betas[n * 750 : (n + 1) * 750, ~valid] == 0).all()
    visual = truth["rois"]["01"]["prf-visualrois"][mask]
    np.testing.assert_array_equal(ds["roi_V1"].values, np.isin(visual, [1, 2]))
    np.testing.assert_array_equal(ds["roi_hV4"].values, visual == 7)
    np.testing.assert_array_equal(
        ds["roi_nsdgeneral"].values, truth["rois"]["01"]["nsdgeneral"][mask] == 1
    )
    places = truth["rois"]["01"]["floc-places"][mask]
    np.testing.assert_array_equal(ds["roi_PPA"].values, places == 2)
    np.testing.assert_allclose(ds["ncsnr"].values, truth["ncsnr"]["01"][mask])
    nc = 100 * ds["ncsnr"].values ** 2 / (ds["ncsnr"].values ** 2 + 1 / 3)
    np.testing.assert_allclose(ds["nc_3trial"].values, nc, rtol=1e-5)
    assert (
        ds.attrs["volume_shape"] == list(mask.shape)
        and ds.attrs["units"] == "percent signal change"
    )
    assert ds["betas"].encoding["chunks"][0] == 750  # trials chunked by session


def test_zscore_statistics_come_from_training_trials_only(fetched, tmp_path):
    opts = options("unused", zscore=True)
    splits = tmp_path / "splits.tsv"
    nsd.make_nsd_splits(fetched / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
    ds = open_zarr(
        nsd.ingest_nsd_subject(fetched, "01", SESSIONS, tmp_path / "z.zarr", opts, splits)
    )
    train = pd.Series(ds.stimulus.values).map(read_splits(splits)).to_numpy() == "train"
    first = ds["betas"].values[:750]
    valid = ds["valid"].values[0]
    np.testing.assert_allclose(first[train[:750]][:, valid].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(first[train[:750]][:, valid].std(0), 1, atol=1e-3)
    # NSD's own z-scoring turns a session's invalid voxels (all 0) into NaN; so does ingest
    assert (~valid).any() and np.isnan(first[:, ~valid]).all()
    # Changing the test trials' betas must not change any training trial's z-score.
    import h5py

    changed = tmp_path / "changed"
    import shutil

    shutil.copytree(fetched, changed)
    path = changed / nsd.betas_key("01", "01", opts)
    path.unlink()
    shutil.copy(fetched / nsd.betas_key("01", "01", opts), path)
    with h5py.File(path, "r+") as h5:
        test_rows = np.flatnonzero(~train[:750])
        assert len(test_rows) > 0
        h5["betas"][test_rows[0]] = 30000
    ds2 = open_zarr(
        nsd.ingest_nsd_subject(changed, "01", SESSIONS, tmp_path / "z2.zarr", opts, splits)
    )
    np.testing.assert_array_equal(ds2["betas"].values[:750][train[:750]], first[train[:750]])
    assert np.isfinite(first[:, valid]).all()


def test_bad_hdf5_shape_names_file_and_field(fetched, tmp_path):
    import h5py

    bad = tmp_path / "betas_session01.hdf5"
    with h5py.File(bad, "w") as h5:
        h5.create_dataset("betas", data=np.zeros((750, 6, 7, 5), np.int16))  # NIfTI order: wrong
    with pytest.raises(
        BrainpipeInputError, match=r"betas_session01.hdf5: field 'betas'.*\(trials, K, J, I\)"
    ):
        nsd.read_session_betas(bad, np.arange(3), (6, 7, 5))


def nsd_config(endpoint: str) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        dataset="nsd", subjects=["01"], sessions=SESSIONS, runs=["01"], tr=1.333333, task="nsd",
        rois=["V1", "nsdgeneral"], source={"endpoint_url": endpoint, "zscore": False},
        feature_models=["gabor"], models=["ridge"],
    )  # fmt: skip
    config.pop("synthetic", None)
    # ROIs named anywhere in the config must be NSD's (checked when the DAG is built)
    config["align"]["roi"] = ["V1", "nsdgeneral"]
    config["model_params"]["bandedridge"]["rois"] = ["V1"]
    return config


def run_snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    return run_workflow(workdir, config, *args, timeout=300)


def test_dry_run_touches_no_network(tmp_path):
    # An endpoint nothing listens on: any connection attempt would fail the dry run.
    result = run_snakemake(tmp_path, nsd_config("http://127.0.0.1:9"), "-n")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rule in ("fetch", "ingest_splits", "ingest_betas"):
        assert f"rule {rule}:" in result.stdout
    assert "rule betas:" not in result.stdout and "rule preprocess:" not in result.stdout
    assert not (tmp_path / "data").exists()


def test_snakemake_fetches_and_ingests_from_server(nsd_server, tmp_path):
    endpoint, truth = nsd_server
    target = "results/nsd/sub-01/betas.zarr"
    result = run_snakemake(tmp_path, nsd_config(endpoint), target)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ds = open_zarr(tmp_path / target)
    mask = truth["mask"]["01"]
    np.testing.assert_allclose(
        ds["betas"].values[750:], truth["betas"][("01", "02")][mask].T, atol=1e-6
    )
    assert (tmp_path / "results/nsd/splits.tsv").exists()


def test_registry_entries_and_errors(tmp_path):
    assert load_entry("nsd").kind == "nsd" and load_entry("synthetic").betas == "estimate"
    for name in ("bold5000", "things-fmri", "things-meg"):
        assert load_entry(name).source["bucket"] == "openneuro.org"
    with pytest.raises(BrainpipeInputError, match=r"field 'dataset'.*'nope'"):
        load_entry("nope")
    assert load_entry("nsd").betas_mode({"source": {"betas": "estimate"}}) == "estimate"
    with pytest.raises(BrainpipeInputError, match="ships no betas"):
        load_entry("things-fmri").betas_mode({"source": {"betas": "ingest"}})
    (tmp_path / "bad.yaml").write_text("kind: ftp\n")
    with pytest.raises(BrainpipeInputError, match=r"bad.yaml: field 'kind'"):
        load_entry("bad", tmp_path)
    with pytest.raises(BrainpipeInputError, match=r"field 'source.space'"):
        nsd.NsdOptions.from_config({"space": "fsaverage5"})
    with pytest.raises(BrainpipeInputError, match="subjects 1-8"):
        nsd.subject_label("09")


def test_expdesign_missing_field_is_named(tmp_path):
    import scipy.io

    path = tmp_path / "nsd_expdesign.mat"
    scipy.io.savemat(path, {"masterordering": np.ones((1, 10)), "subjectim": np.ones((8, 10))})
    with pytest.raises(BrainpipeInputError, match=r"nsd_expdesign.mat: field 'sharedix'"):
        nsd.read_expdesign(path)


@pytest.mark.parametrize("layout", ["published", "deflate", "trial-chunks", "contiguous"])
def test_ingest_reads_any_hdf5_layout_identically(
    fetched, nsd_server, tmp_path, layout, monkeypatch
):
    """NSD's layout (one chunk per voxel) is read chunk by chunk in file order, contiguous
    /betas through a memory map, other layouts through h5py: all give the same store,
    also with several voxel groups and a partial last chunk."""
    import shutil

    import h5py

    from brainpipe.datasets import nsd_chunks

    from .nsd_fixtures import write_betas_hdf5

    _, truth = nsd_server
    opts = options("unused", trial_batch=7)
    splits = tmp_path / "splits.tsv"
    nsd.make_nsd_splits(fetched / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
    data = tmp_path / "data"
    shutil.copytree(fetched, data)
    for ses in SESSIONS:
        path = data / nsd.betas_key("01", ses, opts)
        with h5py.File(path, "r") as h5:
            values = h5["betas"][...]
        path.unlink()
        write_betas_hdf5(path, values.transpose(3, 2, 1, 0), layout)
        with h5py.File(path, "r") as h5:
            dset = h5["betas"]
            assert (nsd.contiguous_offset(dset) is not None) == (layout == "contiguous")
            addresses = nsd_chunks.voxel_chunk_addresses(dset, path)
            assert (addresses is not None) == (layout == "published")
            if layout == "published":  # the B-tree walk finds what HDF5 itself lists
                listed: dict = {}
                dset.id.chunk_iter(
                    lambda c, found=listed: found.update({c.chunk_offset: c.byte_offset})
                )
                flat = np.ravel_multi_index(np.array(list(listed)).T[1:], dset.shape[1:])
                np.testing.assert_array_equal(addresses[flat], list(listed.values()))
    # several groups of the chunked read (each a multiple of the Zarr chunk)
    monkeypatch.setattr(nsd, "CHUNKED_GROUP_VOXELS", 12)
    out = nsd.ingest_nsd_subject(
        data, "01", SESSIONS, tmp_path / "b.zarr", opts, splits, voxel_chunk=3
    )
    ds = open_zarr(out)
    mask = truth["mask"]["01"]
    assert ds["betas"].encoding["chunks"] == (750, 3)
    assert ds.sizes["voxel"] > 16 * 3 and ds.sizes["voxel"] % 3  # 2+ groups, partial chunk
    for n, ses in enumerate(SESSIONS):
        expected = truth["betas"][("01", ses)][mask].T
        np.testing.assert_allclose(ds["betas"].values[n * 750 : (n + 1) * 750], expected, atol=1e-6)
        path = data / nsd.betas_key("01", ses, opts)
        np.testing.assert_allclose(
            nsd.read_session_betas(path, nsd.hdf5_voxel_index(np.argwhere(mask), mask.shape),
                                   mask.shape),
            expected, atol=1e-6,
        )  # fmt: skip


def test_betas_stored_as_the_int16_nsd_ships_and_read_as_float32(fetched, nsd_server, tmp_path):
    """Not z-scored: chunk files hold int16 (half the bytes of float32), written raw, and
    read back bit for bit as int16 / 300 in float32. Z-scored: float32 chunks."""
    import zarr

    _, truth = nsd_server
    splits = tmp_path / "splits.tsv"
    nsd.make_nsd_splits(fetched / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
    mask = truth["mask"]["01"]
    n_vox = int(mask.sum())
    for zscore in (False, True):
        out = tmp_path / f"z{zscore}.zarr"
        opts = options("unused", zscore=zscore)
        nsd.ingest_nsd_subject(fetched, "01", SESSIONS, out, opts, splits, voxel_chunk=16)
        with quiet_consolidated():
            array = zarr.open_group(out, mode="r")["betas"]
        assert (nsd.raw_int16_root(array) is not None) == (not zscore)
        chunk = out / "betas" / array.metadata.encode_chunk_key((1, 0))
        assert chunk.stat().st_size == 750 * 16 * (4 if zscore else 2)
        if not zscore:
            values = open_zarr(out)["betas"].values
            assert values.dtype == np.float32
            for n, ses in enumerate(SESSIONS):
                ints = np.round(truth["betas"][("01", ses)][mask].T * 300).astype(np.int16)
                want = np.divide(ints, 300, dtype=np.float32)
                np.testing.assert_array_equal(values[n * 750 : (n + 1) * 750], want)
            assert values.shape == (1500, n_vox)


def _zscore_as_numpy_nanfunctions(block, train):
    """The z-scoring the ingest did before its fast path: np.nanmean / np.nanstd."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(block[train], axis=0, dtype=np.float64).astype(np.float32)
        sd = np.nanstd(block[train], axis=0, dtype=np.float64).astype(np.float32)
    sd[(sd == 0) | ~np.isfinite(sd)] = 1.0
    return (block - mean) / sd


@pytest.mark.parametrize("seed", range(6))
def test_zscore_is_bit_identical_to_nanmean_and_nanstd(seed):
    """The fast z-score (no NaN masks) gives the same bits as np.nanmean/np.nanstd did,
    on NSD-like int16 / 300 betas, with constant voxels, and with NaN vertices (fsaverage)."""
    rng = np.random.default_rng(seed)
    n_trials, n_vox = int(rng.integers(3, 800)), int(rng.integers(1, 300))
    block = np.divide(rng.integers(-32768, 32767, (n_trials, n_vox), dtype=np.int16), 300,
                      dtype=np.float32)  # fmt: skip
    block[:, 0] = 1.5  # a constant voxel: SD 0 -> 1
    train = rng.random(n_trials) < 0.8
    train[:2] = True
    if seed % 2:
        block[rng.random(block.shape) < 0.01] = np.nan
    want = _zscore_as_numpy_nanfunctions(block.copy(), train)
    got = nsd.zscore_with_train_stats(block.copy(), train, Path("x"))
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def reference_zscore(ints, train, invalid=None):
    """The z-score spelled out in float64: each voxel's ``int16 / 300`` minus its
    training trials' mean, over their (population) SD; SD 0 divides by 1; NSD's invalid
    voxels NaN."""
    x = ints.astype(np.float64)  # in int16 units: a constant voxel's SD is exactly 0
    mean = x[train].mean(axis=0)
    sd = x[train].std(axis=0)
    mean, sd = mean / 300, sd / 300
    sd[sd == 0] = 1.0
    z = (x / 300 - mean) / sd
    if invalid is not None:
        z[:, invalid] = np.nan
    return z, mean, sd


def assert_float32_rounding_of(got, ints, train, invalid=None):
    """``got`` (float32) equals the float64 reference z-score up to float32 rounding of
    its inputs and steps: |error| <= 2 eps32 (|x| + RMS of the training x) / SD per
    element (the RMS bounds the mean's and the SD's rounding)."""
    want, mean, sd = reference_zscore(ints, train, invalid)
    x = ints / 300
    rms = np.sqrt((x[train] ** 2).mean(axis=0))
    bound = 2 * np.finfo(np.float32).eps * (np.abs(x) + rms) / sd
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    err = np.abs(got.astype(np.float64) - want)[ok]
    assert (err <= bound[ok]).all(), float((err / bound[ok]).max())
    return err


@pytest.mark.parametrize("seed", range(4))
def test_train_stats_zscore_within_float32_rounding_of_reference(tmp_path, seed):
    """The streamed session's z-score (statistics summed exactly from the int16 values as
    voxels arrive, then ``(x - mean) * (1 / SD)``) and the block z-score it replaces
    (:func:`zscore_with_train_stats`) both equal the float64 reference z-score up to
    float32 rounding; only training trials enter the statistics (the test trials' values
    changed, the training statistics stay bit for bit the same)."""
    import zarr

    from brainpipe.datasets.nsd_store import BlockWriter, TrainStats

    rng = np.random.default_rng(seed)
    n_vox = int(rng.integers(300, 900))
    scale = [30, 3000, 32767, 32767][seed]  # NSD-like, large, full int16 range
    ints = rng.integers(-scale, scale + 1, (750, n_vox)).astype(np.int16)
    ints[:, 0] = 1234  # a constant voxel: SD 0
    ints[:, 1] += 20000 if seed == 3 else 0  # mean >> SD (cancellation in sum_sq)
    train = rng.random(750) < 0.88
    invalid = rng.random(n_vox) < 0.05
    voxel_major = np.ascontiguousarray(ints.T)
    stats = TrainStats(n_vox, lambda: train, "x")
    order = rng.permutation(n_vox)  # voxels arrive in file order, not store order
    late = order[: n_vox // 10]  # some only after the download (complete)
    for part in np.array_split(order[n_vox // 10 :], 7):
        stats.add(part, voxel_major[part])
    stats.complete(voxel_major)
    assert stats.late == len(late)
    outs = {}
    for name, with_stats in (("summed", stats), ("block", None)):
        betas = zarr.create_array(
            tmp_path / f"{name}.zarr", shape=(750, n_vox), chunks=(750, 128), dtype="f4",
            fill_value=np.nan,
        )  # fmt: skip
        with BlockWriter(
            betas, slice(0, 750), 128, train, Path("x"), invalid=invalid, stats=with_stats
        ) as writer:  # fmt: skip
            for fut in writer.submit(voxel_major.T, 0):
                fut.result()
        outs[name] = betas[:]
        assert_float32_rounding_of(outs[name], ints, train, invalid)
    assert (outs["summed"][:, 0][~invalid[0:1].repeat(750)] == 0).all()
    # leakage: the test trials do not enter the statistics
    other = voxel_major.copy()
    other[:, ~train] = rng.integers(-scale, scale + 1, (n_vox, int((~train).sum())))
    again = TrainStats(n_vox, lambda: train, "x")
    again.complete(other)
    for a, b in zip(again.center_scale(), stats.center_scale(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(BrainpipeInputError, match="training trials"):
        TrainStats(3, lambda: np.eye(750, dtype=bool)[0], "x").complete(voxel_major[:3])


@pytest.mark.parametrize("zscore", [False, True])
def test_block_writer_chunk_files_equal_zarr_writes(tmp_path, monkeypatch, zscore):
    """Chunk files the writer makes itself (int16, or plain float32 z-scored) hold the
    bytes zarr writes for the same blocks, edge chunk included."""
    from brainpipe.betas.store import BetasLayout, noise_ceiling_vars
    from brainpipe.datasets import nsd_store

    rng = np.random.default_rng(3)
    n_vox = 1000
    session = rng.integers(-3000, 3000, (750, n_vox), dtype=np.int16)
    train = rng.random(750) < 0.85
    invalid = rng.random(n_vox) < 0.05
    stores = []
    for raw in (True, False):
        if not raw:
            monkeypatch.setattr(nsd_store, "raw_int16_root", lambda betas: None)
            monkeypatch.setattr(nsd_store, "raw_float32_root", lambda betas: None)
        layout = BetasLayout(
            filters=None if zscore else [nsd.betas_int16_filter()],
            compressors=nsd.BETAS_COMPRESSORS,
            data_vars={
                "r2": ("voxel", np.zeros(n_vox, np.float32)),
                "hrf_index": ("voxel", np.zeros(n_vox, np.int16)),
                **noise_ceiling_vars(np.ones(n_vox, np.float32)),
            },
            coords={
                "stimulus": ("trial", np.array([f"s{t}" for t in range(1500)])),
                "session": ("trial", np.repeat(["01", "02"], 750)),
                "run": ("trial", np.full(1500, "01")),
                "onset": ("trial", np.zeros(1500)),
            },
            attrs={a: "x" for a in ("subject", "space", "units", "method", "stage")} | {"tr": 1.0},
        )
        path = tmp_path / f"{raw}.zarr"
        with quiet_consolidated():
            betas = layout.write(path, (1500, n_vox), (750, 256), direct=True)
            root = (nsd_store.raw_float32_root if zscore else nsd_store.raw_int16_root)(betas)
            assert (root is not None) == raw  # the writer's own chunk files, or zarr's
            for n in range(2):
                nsd.write_session_blocks(
                    betas, session, slice(750 * n, 750 * (n + 1)), 256,
                    train if zscore else None, Path("x"), invalid=invalid,
                )  # fmt: skip
            layout.finish()
        files = sorted(
            p.relative_to(path / "betas") for p in (path / "betas").rglob("*") if p.is_file()
        )
        stores.append({f: (path / "betas" / f).read_bytes() for f in files})
    assert len(stores[0]) == 2 * 4 + 1  # 2 sessions x 4 chunks (one an edge) + zarr.json
    assert stores[0] == stores[1]
