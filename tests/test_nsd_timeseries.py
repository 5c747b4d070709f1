"""NSD's preprocessed time series through our own preprocess and betas stages.

A loopback S3 server serves a tiny NSD (real key layout and formats, tests/nsd_fixtures)
whose time series were generated from known single-trial amplitudes: session 21, a
resting-state session of 14 runs (01 and 14 rest), each time series one volume longer
than its design. A real Snakemake run goes from fetch to betas.zarr and on to a trained
model, and the betas must recover those amplitudes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.bids import BidsLayout, RunKey, read_events, read_tr
from brainpipe.datasets import nsd, nsd_timeseries
from brainpipe.datasets.registry import load_entry
from brainpipe.download import fetch_dataset
from brainpipe.errors import BrainpipeInputError
from brainpipe.splits import read_splits
from brainpipe.storage import open_zarr
from brainpipe.validation import validate_subject

from .conftest import ROOT, run_workflow
from .nsd_fixtures import TS_TR, write_nsd_timeseries, write_nsd_tree
from .s3_server import serve_tree

BUCKET = "natural-scenes-dataset"
SESSION = "21"  # a resting-state session (cvnlab/nsddatapaper main/nsdsetup.m)
RUNS = ["01", "12"]  # task runs: files run02 and run13 of this session


@pytest.fixture(scope="module")
def ts_server(tmp_path_factory):
    """A moto S3 server holding a tiny NSD with time series; yields (endpoint, truth)."""
    tree = tmp_path_factory.mktemp("nsd-ts-bucket")
    base = write_nsd_tree(tree, subjects=("01",), sessions=(SESSION,))
    truth = write_nsd_timeseries(tree, base, session=SESSION)
    keep = np.isin(truth["task_run"], RUNS)  # the trials of the selected task runs
    truth.update(
        amplitude=truth["amplitude"][keep], stimulus=truth["stimulus"][keep],
        onset=truth["onset"][keep], run=truth["task_run"][keep],
        shown=np.unique(truth["stimulus"][keep]),
        shared=np.intersect1d(truth["stimulus"][keep], base["shared"]),
    )  # fmt: skip
    with serve_tree(tree, BUCKET) as endpoint:
        yield endpoint, truth


def options(**extra) -> nsd.NsdOptions:
    entry = load_entry("nsd")
    return nsd.NsdOptions.from_config({**entry.info, **entry.merged_source({"source": extra})})


def test_keys_follow_nsd_layout():
    opts = options()
    # a resting-state session: task run n is file run n + 1 (01 and 14 are rest)
    assert nsd_timeseries.timeseries_key("01", "21", "01", opts).endswith("session21_run02.nii.gz")
    assert nsd_timeseries.design_key("01", "21", "12", opts).endswith("session21_run13.tsv")
    assert nsd_timeseries.design_key("02", "35", "12", opts).endswith("session35_run12.tsv")
    assert nsd_timeseries.design_key("05", "35", "12", opts).endswith("session35_run13.tsv")
    with pytest.raises(BrainpipeInputError, match=r"field 'runs'.*task runs 1-12.*'13'"):
        nsd_timeseries.timeseries_key("01", "01", "13", opts)
    assert nsd_timeseries.timeseries_key("1", "03", "12", opts) == (
        "nsddata_timeseries/ppdata/subj01/func1pt8mm/timeseries/timeseries_session03_run12.nii.gz"
    )
    assert nsd_timeseries.design_key("01", "3", "1", opts) == (
        "nsddata_timeseries/ppdata/subj01/func1pt8mm/design/design_session03_run01.tsv"
    )
    with pytest.raises(BrainpipeInputError, match=r"field 'source.space'.*fsaverage"):
        nsd_timeseries.check_timeseries_space(options(space="fsaverage"))
    with pytest.raises(BrainpipeInputError, match=r"field 'source.space'.*volume spaces"):
        load_entry("nsd").betas_mode({"source": {"betas": "estimate", "space": "fsaverage"}})
    assert load_entry("nsd").betas_mode({"source": {"betas": "estimate"}}) == "estimate"


def test_design_file_becomes_events(tmp_path):
    path = tmp_path / "design_session01_run01.tsv"
    np.savetxt(path, [0, 0, 0, 46003, 0, 0, 1, 0, 0], fmt="%d")
    ids = nsd_timeseries.read_design_tsv(path, 9)
    events = nsd_timeseries.design_events(ids, TS_TR)
    assert list(events["stimulus"]) == ["nsd-46002", "nsd-00000"]  # 0-based names
    np.testing.assert_allclose(events["onset"], [3 * TS_TR, 6 * TS_TR])
    assert (events["duration"] == 3.0).all() and (events["trial_type"] == "image").all()
    with pytest.raises(BrainpipeInputError, match=r"design_session01_run01.tsv.*9 rows.*10 vol"):
        nsd_timeseries.read_design_tsv(path, 10)
    np.savetxt(path, [0, 73001], fmt="%d")
    with pytest.raises(BrainpipeInputError, match=r"field 'row 2'.*73001"):
        nsd_timeseries.read_design_tsv(path)


@pytest.fixture(scope="module")
def fetched(ts_server, tmp_path_factory):
    endpoint, _ = ts_server
    dest = tmp_path_factory.mktemp("data") / "nsd"
    fetch_dataset(
        "nsd", dest, subjects=["01"], sessions=[SESSION], runs=RUNS, task="nsd",
        source={"endpoint_url": endpoint, "betas": "estimate"}, progress=False,
    )  # fmt: skip
    return dest


def test_fetch_lays_out_bids_that_validates(fetched, ts_server):
    _, truth = ts_server
    layout = BidsLayout(fetched, "nsd")
    opts = options()
    first = RunKey("01", SESSION, "01")
    cached = fetched.with_name(".nsd-objects") / nsd_timeseries.timeseries_key(
        "01", SESSION, "01", opts
    )
    assert cached.name == "timeseries_session21_run02.nii.gz"  # run01 is rest: not fetched
    assert not cached.with_name("timeseries_session21_run01.nii.gz").exists()
    # the trailing volume past the design is dropped
    assert nib.load(cached).shape[3] == truth["n_volumes"]["02"] == 226
    assert nib.load(layout.bold(first)).shape[3] == 225
    last = RunKey("01", SESSION, RUNS[-1])
    assert nib.load(layout.bold(last)).header.get_zooms()[3] == pytest.approx(TS_TR)
    assert read_tr(layout.sidecar(last)) == pytest.approx(TS_TR)
    events = pd.concat([read_events(layout.events(RunKey("01", SESSION, r))) for r in RUNS])
    assert list(events["stimulus"]) == [nsd.stimulus_name(i) for i in truth["stimulus"]]
    np.testing.assert_allclose(events["onset"], truth["onset"], atol=1e-5)
    stimuli = pd.read_csv(layout.stimuli_table, sep="\t", dtype={"stimulus": str})
    assert sorted(stimuli["stimulus"]) == [nsd.stimulus_name(i) for i in truth["shown"]]
    assert sorted(stimuli.loc[stimuli["shared"] == 1, "stimulus"]) == [
        nsd.stimulus_name(i) for i in truth["shared"]
    ]
    assert {"V1", "nsdgeneral", "FFA1"} <= set(layout.available_rois("01"))
    manifest = validate_subject(fetched, "01", [SESSION], RUNS, 1.333333, task="nsd")
    assert manifest["n_voxels"] == int(truth["mask"].sum())
    assert [r["n_trials"] for r in manifest["runs"]] == [
        int((truth["run"] == r).sum()) for r in RUNS
    ]


def ts_config(endpoint: str) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        dataset="nsd", subjects=["01"], sessions=[SESSION], runs=RUNS, tr=1.333333, task="nsd",
        rois=["V1", "nsdgeneral"], source={"endpoint_url": endpoint, "betas": "estimate"},
        splits={"shared_train_fraction": 0.0}, feature_models=["gabor"], models=["ridge"],
    )  # fmt: skip
    config.pop("synthetic", None)
    # ROIs named anywhere in the config must be NSD's (checked when the DAG is built)
    config["align"]["roi"] = ["V1", "nsdgeneral"]
    config["model_params"]["bandedridge"]["rois"] = ["V1"]
    return config


def run_snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    return run_workflow(workdir, config, *args, timeout=600)


def test_dry_run_plans_our_stages_offline(tmp_path):
    result = run_snakemake(tmp_path, ts_config("http://127.0.0.1:9"), "-n")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rule in ("fetch", "validate_inputs", "preprocess", "betas", "splits"):
        assert f"rule {rule}:" in result.stdout, rule
    assert "rule ingest_betas:" not in result.stdout
    assert "rule ingest_splits:" not in result.stdout
    assert not (tmp_path / "data").exists()


def test_snakemake_from_fetch_to_betas_recovers_amplitudes(ts_server, tmp_path):
    """fetch -> preprocess -> betas on a 14-run (resting-state) session, and on to a
    trained encoding model (gabor features, ridge) scored on the session's test trials."""
    endpoint, truth = ts_server
    model = "results/nsd/models/sub-01/V1/ridge-gabor/metrics.json"
    targets = ["results/nsd/sub-01/betas.zarr", "results/nsd/splits.tsv", model]
    result = run_snakemake(tmp_path, ts_config(endpoint), *targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rule preprocess:" in result.stderr and "rule betas:" in result.stderr
    ds = open_zarr(tmp_path / targets[0])
    # The contract (docs/architecture.md): betas(trial, voxel) float32 % signal change,
    # labelled coords.
    assert ds["betas"].dims == ("trial", "voxel") and ds["betas"].dtype == np.float32
    for name in ("stimulus", "session", "run"):
        assert ds[name].dims == ("trial",) and ds[name].dtype.kind == "U", name
    assert ds["onset"].dtype == np.float64
    for name in "ijk":
        assert ds[name].dims == ("voxel",) and ds[name].dtype == np.int32
    for name in "xyz":
        assert ds[name].dims == ("voxel",) and ds[name].dtype == np.float32
    for name in ("r2", "ncsnr", "nc_1trial", "nc_3trial"):
        assert ds[name].dims == ("voxel",) and ds[name].dtype == np.float32
    assert ds["hrf_index"].dtype == np.int16
    assert ds["roi_V1"].dtype == bool and ds["roi_V1"].any() and ds["roi_nsdgeneral"].any()
    assert ds.attrs["units"] == "percent signal change" and ds.attrs["method"] == "glmsingle"
    assert np.asarray(ds.attrs["affine"]).shape == (4, 4) and len(ds.attrs["volume_shape"]) == 3
    assert ds.attrs["tr"] == pytest.approx(TS_TR, rel=1e-3)
    assert len(ds.attrs["config_hash"]) == 16
    assert np.isfinite(ds["betas"].values).all()
    np.testing.assert_array_equal(np.stack([ds.i, ds.j, ds.k], 1), np.argwhere(truth["mask"]))
    # Trials: NSD 73k names, onsets = volume × TR, runs in order.
    assert list(ds.stimulus.values) == [nsd.stimulus_name(i) for i in truth["stimulus"]]
    np.testing.assert_allclose(ds.onset.values, truth["onset"], atol=1e-5)
    assert list(ds.run.values) == list(truth["run"])
    # Our betas recover the amplitudes the time series were generated from.
    betas, amplitude = ds["betas"].values, truth["amplitude"]
    active = truth["responsive"]
    r = np.corrcoef(betas[:, active].ravel(), amplitude[:, active].ravel())[0, 1]
    per_voxel = [np.corrcoef(betas[:, v], amplitude[:, v])[0, 1] for v in np.flatnonzero(active)]
    # Measured on this fixture: r 0.782 (median per voxel 0.844) with GLMsingle's stage
    # choices, the default; 0.805 (0.855) with betas.ridge_cv: timeseries. Its 2 runs share
    # 15 stimuli, so each voxel's ridge fraction is cross-validated on 30 held-out pairs,
    # too few for GLMsingle's beta-domain criterion (it takes the heaviest fraction for 4 of
    # the 41 responsive voxels); with all 12 runs the two give 0.853 / 0.858
    # (docs/betas_vs_glmsingle.md, "Few repeats").
    assert r > 0.75, f"betas vs true amplitudes r={r:.3f}"
    assert np.median(per_voxel) > 0.7, f"median per-voxel r={np.median(per_voxel):.3f}"
    # Splits: the NSD shared-1000 images shown are the test split, nothing else.
    split = read_splits(tmp_path / targets[1])
    test = sorted(s for s, v in split.items() if v == "test")
    assert test == [nsd.stimulus_name(i) for i in truth["shared"]]
    # The model: trained on the training trials, scored on every V1 voxel.
    assert "rule train:" in result.stderr and "rule evaluate:" in result.stderr
    metrics = json.loads((tmp_path / model).read_text())
    assert metrics["n_voxels"] == int(ds["roi_V1"].sum())
    assert np.isfinite(metrics["mean_r"])
