"""Shared response over time through the workflow: the `timeseries` rules end to end.

The real Snakemake run (synthetic movie world, 3 subjects, SRM / DetSRM / S-GPFA, one job
per method x held-out subject) must match held-out subjects' test segments far above the
chance it states, and S-GPFA must recover the true latents better than SRM. Unit checks:
test time points enter nothing fitted, the `preprocess` source reads the configured runs
of preproc.zarr in order, and the config checks name the key.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from brainpipe.align.timeseries_jobs import (
    check_timeseries_config,
    fit_heldout,
    timeseries_params,
    write_timeseries_input,
)
from brainpipe.errors import BrainpipeInputError
from brainpipe.report.page import ReportInputs, timeseries_figures
from brainpipe.storage import open_zarr, write_zarr

from .conftest import ROOT, run_workflow
from .movie_fixtures import MOVIE_SHAPE, brain_mask, make_movie_dataset

SUBJECTS = ["01", "02", "03"]
METHODS = ["srm", "detsrm", "sgpfa"]
MOVIE = {"seed": 2, "n_timepoints": 400, "min_voxels": 120, "max_voxels": 180, "noise_sd": 3.0}


def movie_config(**timeseries) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["subjects"] = SUBJECTS
    config["timeseries"] = {
        "source": "synthetic_movie",
        "methods": METHODS,
        "synthetic_movie": MOVIE,
        **timeseries,
    }
    return config


@pytest.mark.integration
def test_workflow_matches_heldout_segments_far_above_chance(tmp_path):
    """Measured (seed 2, 3 subjects, 200 + 200 TRs, 120-180 voxels, noise sd 3 x signal,
    window 10; each held-out subject's group fit has the 2 others): mean matching accuracy
    SRM 0.686, DetSRM 0.684, S-GPFA 0.843 against chance 0.0058 (119x, 119x, 146x);
    held-out subjects 0.61-0.75 (SRM), 0.81-0.87 (S-GPFA); mean canonical correlation of
    the test shared response with the true latents 0.74 / 0.74 / 0.85."""
    result = run_workflow(tmp_path, movie_config(), "results/synthetic/timeseries/matching.json")
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "results" / "synthetic" / "timeseries"
    summary = json.loads((out / "matching.json").read_text())
    assert sorted(summary) == sorted(METHODS)
    for method, entry in summary.items():
        assert entry["chance"] < 0.01, entry
        assert entry["accuracy"] >= 50 * entry["chance"], (method, entry)
        assert min(entry["per_subject"].values()) >= 30 * entry["chance"], (method, entry)
        assert entry["latent_cc_mean"] >= 0.65, (method, entry)
    assert summary["sgpfa"]["accuracy"] >= summary["srm"]["accuracy"] + 0.08, summary
    assert summary["sgpfa"]["latent_cc_mean"] > summary["srm"]["latent_cc_mean"], summary
    # one job per method x held-out subject; the held-out subject's map is orthonormal
    table = pd.read_csv(out / "matching.tsv", sep="\t", dtype={"subject": str})
    assert sorted(zip(table["method"], table["subject"], strict=True)) == sorted(
        (m, s) for m in METHODS for s in SUBJECTS
    )
    fit = open_zarr(out / "sgpfa" / "sub-02.zarr")
    w = fit["w"].values
    n_vox = open_zarr(out / "sub-02.zarr").sizes["voxel"]
    assert w.shape == (n_vox, 10)
    np.testing.assert_allclose(w.T @ w, np.eye(10), atol=1e-4)
    # the shared responses stored are those of test time points only
    split = open_zarr(out / "sub-02.zarr")["split"].values
    assert set(split[fit["time"].values]) == {"test"}
    # the report's figure is drawn from this table
    (figure,) = timeseries_figures(ReportInputs(timeseries_scores=out / "matching.tsv"))
    assert figure.png.startswith(b"\x89PNG") and "chance (0.0058)" in figure.caption


@pytest.mark.integration
def test_preprocessed_shared_runs_of_a_bids_folder_are_matched(tmp_path):
    """The `preprocess` source through Snakemake: a movie-watching BIDS + fMRIPrep folder
    (tests/movie_fixtures.py: 3 subjects, 2 runs x 150 TRs on one clock, 5 latents, noise
    sd 2 x signal) goes through the dataset view, the input checks and the `preprocess`
    rule (detrend, high-pass, % signal change); `timeseries` reads the two runs of each
    subject's preproc.zarr (run 01 trains, run 02 is matched). Measured: see the asserts'
    margins in docs/models.md."""
    root = tmp_path / "movie-bids"
    make_movie_dataset(root, seed=4)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.pop("synthetic", None)
    shape = MOVIE_SHAPE
    config.update(
        dataset="bids", task=shape.task, subjects=shape.subjects, sessions=shape.sessions,
        runs=shape.runs, tr=shape.tr, rois=["GM"], feature_models=["gabor"], models=["ridge"],
        source={"path": str(root), "space": "MNI152NLin2009cAsym", "res": "2"},
        preprocess={"detrend": True, "high_pass_hz": 0.01, "smoothing_fwhm_mm": None},
        splits={"shared_train_fraction": 0.0}, align={"methods": []},
        timeseries={"source": "preprocess", "methods": ["srm", "sgpfa"], "n_components": 5,
                    "runs": [{"session": "01", "run": "01"}, {"session": "01", "run": "02"}]},
    )  # fmt: skip
    result = run_workflow(tmp_path, config, "results/bids/timeseries/matching.json", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results" / "bids"
    summary = json.loads((results / "timeseries" / "matching.json").read_text())
    for method, entry in summary.items():
        assert entry["chance"] < 0.01, entry
        assert entry["accuracy"] >= 30 * entry["chance"], (method, entry)
    # what `timeseries` read is the preprocess rule's output, runs in the configured order
    ts = open_zarr(results / "timeseries" / "sub-02.zarr")
    pre = open_zarr(results / "sub-02" / "preproc.zarr")
    n = shape.n_scans
    assert ts.sizes["voxel"] == int(brain_mask().sum()) == pre.sizes["voxel"]
    assert list(ts["run"].values[[0, n]]) == ["01", "02"]
    assert (ts["split"].values == "train").sum() == n
    first = pre["bold"].values[pre["run"].values.astype(str) == "01"]
    np.testing.assert_allclose(ts["bold"].values[:n], first, rtol=1e-6)


@pytest.fixture(scope="module")
def movie_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("movie")
    config = movie_config()
    stores = {s: write_timeseries_input(s, root / f"sub-{s}.zarr", config) for s in SUBJECTS}
    return stores, timeseries_params(config), root


@pytest.mark.parametrize("method", METHODS)
def test_test_time_points_enter_nothing_fitted(movie_stores, method):
    """Replacing every subject's test time points by noise changes no fitted map."""
    stores, params, root = movie_stores
    before, metrics = fit_heldout(stores, "01", method, params)
    changed = {}
    rng = np.random.default_rng(0)
    for s, path in stores.items():
        ds = open_zarr(path).load()
        test = ds["split"].values == "test"
        bold = ds["bold"].values.copy()
        bold[test] = rng.standard_normal((int(test.sum()), bold.shape[1])) * 50
        changed[s] = write_zarr(ds.assign(bold=(("time", "voxel"), bold)), root / f"x-{s}.zarr")
    after, metrics_after = fit_heldout(changed, "01", method, params)
    np.testing.assert_array_equal(before["w"].values, after["w"].values)
    assert metrics["length_scale"] == metrics_after["length_scale"]
    assert metrics_after["accuracy"] < 0.1 < metrics["accuracy"]  # noise: near chance


def test_preprocess_source_reads_the_configured_runs_in_order(tmp_path):
    n_scans, n_vox = 20, 6
    keys = [("01", "01"), ("01", "02"), ("02", "01")]
    bold = np.arange(len(keys) * n_scans * n_vox, dtype=np.float32).reshape(-1, n_vox)
    preproc = xr.Dataset(
        {"bold": (("time", "voxel"), bold)},
        coords={
            "session": ("time", np.repeat([k[0] for k in keys], n_scans)),
            "run": ("time", np.repeat([k[1] for k in keys], n_scans)),
            "scan": ("time", np.tile(np.arange(n_scans), len(keys))),
        },
        attrs={"tr": 1.5},
    )
    write_zarr(preproc, tmp_path / "preproc.zarr")
    config = {
        "subjects": SUBJECTS,
        "sessions": ["01", "02"],
        "runs": ["01", "02"],
        "timeseries": {
            "source": "preprocess",
            "runs": [{"session": "02", "run": "01"}, {"session": "01", "run": "01"}],
            "train_fraction": 0.25,
        },
    }
    check_timeseries_config(config)
    out = open_zarr(
        write_timeseries_input("01", tmp_path / "ts.zarr", config, tmp_path / "preproc.zarr")
    )
    np.testing.assert_array_equal(out["bold"].values[:n_scans], bold[2 * n_scans :])
    np.testing.assert_array_equal(out["bold"].values[n_scans:], bold[:n_scans])
    assert list(out["session"].values[[0, n_scans]]) == ["02", "01"]
    assert (out["split"].values == "train").sum() == 10
    assert out.attrs["tr"] == 1.5
    config["timeseries"]["runs"] = [{"session": "01", "run": "02"}, {"session": "01", "run": "03"}]
    with pytest.raises(BrainpipeInputError, match="timeseries.runs"):
        check_timeseries_config(config)


def test_config_checks_name_the_key():
    with pytest.raises(BrainpipeInputError, match="needs >= 3 subjects"):
        check_timeseries_config({**movie_config(), "subjects": ["01", "02"]})
    with pytest.raises(BrainpipeInputError, match="timeseries.runs"):
        check_timeseries_config(
            {**movie_config(), "timeseries": {"source": "preprocess"}, "sessions": ["01"]}
        )
    with pytest.raises(BrainpipeInputError, match="timeseries.window"):
        check_timeseries_config(movie_config(window=250))
    check_timeseries_config({"subjects": ["01"]})  # stage off: nothing checked
