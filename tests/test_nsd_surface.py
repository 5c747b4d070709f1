"""NSD betas on fsaverage: from a loopback S3 server (NSD's layout, MGH files) to betas.zarr."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from brainpipe.datasets import nsd, nsd_surface
from brainpipe.datasets.registry import load_entry
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError
from brainpipe.storage import open_zarr

from .conftest import ROOT, run_workflow
from .nsd_fixtures import write_nsd_surface, write_nsd_tree
from .s3_server import serve_tree

BUCKET = "natural-scenes-dataset"
SESSIONS = ["01", "02"]


@pytest.fixture(scope="module")
def surf_server(tmp_path_factory):
    """A moto S3 server with a tiny NSD incl. fsaverage betas; yields (endpoint, truth)."""
    tree = tmp_path_factory.mktemp("nsd-surf-bucket")
    base = write_nsd_tree(tree, subjects=("01",), sessions=SESSIONS)
    truth = write_nsd_surface(tree, sessions=tuple(SESSIONS))
    truth["base"] = base
    with serve_tree(tree, BUCKET) as endpoint:
        yield endpoint, truth


def options(**extra) -> nsd.NsdOptions:
    entry = load_entry("nsd")
    return nsd.NsdOptions.from_config(
        {
            **entry.info,
            **entry.merged_source({"source": {"space": "fsaverage", "zscore": False, **extra}}),
        }
    )


def test_keys_follow_nsd_layout():
    opts = options()
    assert nsd_surface.surface_betas_key("1", "7", "lh", opts) == (
        "nsddata_betas/ppdata/subj01/fsaverage/betas_fithrf_GLMdenoise_RR/lh.betas_session07.mgh"
    )
    assert nsd_surface.surface_ncsnr_key("02", "rh", opts) == (
        "nsddata_betas/ppdata/subj02/fsaverage/betas_fithrf_GLMdenoise_RR/rh.ncsnr.mgh"
    )
    assert nsd_surface.surface_roi_key("rh", "nsdgeneral") == (
        "nsddata/freesurfer/fsaverage/label/rh.nsdgeneral.mgz"
    )
    with pytest.raises(BrainpipeInputError, match="field 'hemi'"):
        nsd_surface.surface_roi_key("xh", "nsdgeneral")
    with pytest.raises(BrainpipeInputError, match=r"field 'source.space'"):
        nsd.NsdOptions.from_config({"space": "fsaverage5"})


@pytest.fixture(scope="module")
def fetched(surf_server, tmp_path_factory):
    endpoint, _ = surf_server
    dest = tmp_path_factory.mktemp("data") / "nsd"
    fetch_dataset(
        "nsd", dest, subjects=["01"], sessions=SESSIONS,
        source={"endpoint_url": endpoint, "space": "fsaverage", "zscore": False}, progress=False,
    )  # fmt: skip
    return dest


def test_fetch_gets_betas_ncsnr_and_published_labels_only(fetched):
    opts = options()
    for key in nsd_surface.surface_subject_keys("01", SESSIONS, opts):
        assert (fetched / key).is_file(), key
    for hemi in nsd_surface.HEMIS:
        assert (fetched / nsd_surface.surface_roi_key(hemi, "prf-visualrois")).is_file()
        assert not (fetched / nsd_surface.surface_roi_key(hemi, "floc-faces")).exists()
        # floc-faces only on the native surface: that label and NSD's transform are fetched
        assert (fetched / nsd_surface.native_roi_key("01", hemi, "floc-faces")).is_file()
        assert (fetched / nsd_surface.native_to_fsaverage_key("01", hemi)).is_file()
        # a native label is not used where fsaverage has one
        assert not (fetched / nsd_surface.native_roi_key("01", hemi, "prf-visualrois")).exists()
        assert not (fetched / nsd_surface.native_roi_key("01", hemi, "floc-places")).exists()
    assert (fetched / "stimuli/stimuli.tsv").is_file()


def test_ingest_matches_mgh_labels_and_ncsnr(fetched, surf_server, tmp_path):
    _, truth = surf_server
    opts = options()
    splits = tmp_path / "splits.tsv"
    nsd.make_nsd_splits(fetched / nsd.EXPDESIGN_KEY, ["01"], SESSIONS, splits)
    out = nsd_surface.ingest_nsd_surface_subject(
        fetched, "01", SESSIONS, tmp_path / "betas.zarr", opts, splits, voxel_chunk=16
    )
    ds = open_zarr(out)
    n = truth["n_vertices"]
    assert ds.sizes == {"trial": 750 * len(SESSIONS), "voxel": n["lh"] + n["rh"]}
    assert list(ds.hemi.values) == ["lh"] * n["lh"] + ["rh"] * n["rh"]
    np.testing.assert_array_equal(
        ds.vertex.values, np.concatenate([np.arange(n["lh"]), np.arange(n["rh"])])
    )
    assert ds.vertex.dtype == np.int32 and "i" not in ds.coords and "affine" not in ds.attrs
    betas = ds["betas"].values
    assert betas.dtype == np.float32
    for k, ses in enumerate(SESSIONS):  # session 01 float MGH, session 02 int16 x 300
        expected = np.concatenate([truth["betas"][(ses, h)] for h in ("lh", "rh")], axis=1)
        np.testing.assert_allclose(betas[k * 750 : (k + 1) * 750], expected, atol=1e-6)
    ids = truth["base"]["subjectim"][0, truth["base"]["masterordering"][:1500]]
    assert list(ds.stimulus.values) == [nsd.stimulus_name(i) for i in ids]
    assert list(ds.session.values[[0, 749, 750]]) == ["01", "01", "02"]
    visual = np.concatenate([truth["labels"][("prf-visualrois", h)] for h in ("lh", "rh")])
    np.testing.assert_array_equal(ds["roi_V1"].values, np.isin(visual, [1, 2]))
    np.testing.assert_array_equal(ds["roi_hV4"].values, visual == 7)
    general = np.concatenate([truth["labels"][("nsdgeneral", h)] for h in ("lh", "rh")])
    np.testing.assert_array_equal(ds["roi_nsdgeneral"].values, general == 1)
    # floc-faces: the subject's native-surface label through white-to-fsaverage
    faces = np.concatenate([truth["labels"][("floc-faces", h)] for h in ("lh", "rh")])
    np.testing.assert_array_equal(ds["roi_FFA1"].values, faces == 2)
    np.testing.assert_array_equal(ds["roi_faces"].values, np.isin(faces, [1, 2, 3, 4, 5]))
    assert "roi_PPA" not in ds.coords  # floc-places: on neither surface here
    ncsnr = np.concatenate([truth["ncsnr"][h] for h in ("lh", "rh")])
    np.testing.assert_allclose(ds["ncsnr"].values, ncsnr)
    np.testing.assert_allclose(
        ds["nc_3trial"].values, 100 * ncsnr**2 / (ncsnr**2 + 1 / 3), rtol=1e-5
    )
    assert ds.attrs["space"] == "nsd-fsaverage" and ds.attrs["n_vertices"] == n
    assert ds.attrs["units"] == "percent signal change"
    assert ds["betas"].encoding["chunks"] == (750, 16)


def test_nsdgeneral_mask_keeps_its_vertices(fetched, surf_server, tmp_path):
    _, truth = surf_server
    out = nsd_surface.ingest_nsd_surface_subject(
        fetched, "01", ["01"], tmp_path / "g.zarr", options(mask="nsdgeneral")
    )
    ds = open_zarr(out)
    keep = {h: np.flatnonzero(truth["labels"][("nsdgeneral", h)] > 0) for h in ("lh", "rh")}
    np.testing.assert_array_equal(ds.vertex.values, np.concatenate([keep["lh"], keep["rh"]]))
    expected = np.concatenate([truth["betas"][("01", h)][:, keep[h]] for h in ("lh", "rh")], 1)
    np.testing.assert_allclose(ds["betas"].values, expected, atol=1e-6)
    assert ds["roi_nsdgeneral"].values.all()


def test_native_surface_label_is_refused_by_vertex_count(surf_server, tmp_path):
    # Labels from nsddata/freesurfer/subjNN/label/ index the native surface, not fsaverage.
    from .nsd_fixtures import _save_mgh

    path = tmp_path / "lh.prf-visualrois.mgz"
    _save_mgh(np.zeros((47, 1, 1)), path, np.int32)
    with pytest.raises(BrainpipeInputError, match=r"lh.prf-visualrois.mgz: field 'vertices'.*47"):
        nsd_surface.read_surface_map(path, 40, "prf-visualrois label")
    bad = tmp_path / "lh.betas_session01.mgh"
    _save_mgh(np.zeros((40, 1, 1, 10)), bad)
    with pytest.raises(BrainpipeInputError, match=r"field 'shape'.*750"):
        nsd_surface.read_surface_session(bad, np.arange(3))


def run_snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    return run_workflow(workdir, config, *args, timeout=300)


def test_snakemake_fetches_and_ingests_fsaverage(surf_server, tmp_path):
    endpoint, truth = surf_server
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        dataset="nsd", subjects=["01"], sessions=SESSIONS, runs=["01"], tr=1.333333, task="nsd",
        rois=["V1", "nsdgeneral"],
        source={"endpoint_url": endpoint, "space": "fsaverage", "zscore": False},
        feature_models=["gabor"], models=["ridge"],
    )  # fmt: skip
    config.pop("synthetic", None)
    # ROIs named anywhere in the config must be NSD's (checked when the DAG is built)
    config["align"]["roi"] = ["V1", "nsdgeneral"]
    config["model_params"]["bandedridge"]["rois"] = ["V1"]
    target = "results/nsd/sub-01/betas.zarr"
    result = run_snakemake(tmp_path, config, target)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ds = open_zarr(tmp_path / target)
    expected = np.concatenate([truth["betas"][("02", h)] for h in ("lh", "rh")], axis=1)
    np.testing.assert_allclose(ds["betas"].values[750:], expected, atol=1e-6)
    assert set(ds.hemi.values) == {"lh", "rh"} and ds.attrs["space"] == "nsd-fsaverage"
    assert (tmp_path / "results/nsd/splits.tsv").exists()
