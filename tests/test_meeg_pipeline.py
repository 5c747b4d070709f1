"""Integration: the real Snakemake workflow's M/EEG branch on a tiny synthetic world."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from brainpipe.storage import open_zarr

from .conftest import ROOT, run_workflow

pytestmark = pytest.mark.integration


def meeg_config(subjects=("01", "02")) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(yaml.safe_load((ROOT / "config" / "meeg.yaml").read_text()))
    config.update(subjects=list(subjects), feature_models=["caption"])
    config["model_params"] = {
        "timedecoder": {"n_way": 200, "alphas": [10.0, 1000.0]},
        "nice": {"epochs": 3, "n_way": 200},
    }
    config["synthetic_meeg"] = {"seed": 2, "n_subjects": 3, "n_sessions": 2,
                                "n_train_concepts": 20, "n_test_concepts": 10,
                                "test_reps_per_session": 3}  # fmt: skip
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("meeg_pipeline")
    result = run_workflow(workdir, meeg_config(), timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


def test_outputs_and_epochs_contract(run):
    results = run / "results" / "synthetic_meeg"
    for subject in ("01", "02"):
        ds = open_zarr(results / f"sub-{subject}" / "epochs.zarr")
        assert ds["epochs"].dims == ("trial", "channel", "time")
        assert {"stimulus", "session", "run", "split"} <= set(ds.coords)
        assert ds.sizes["channel"] == 63 and ds.sizes["time"] == 100
        assert (ds["split"] == "test").sum() == 10 * 3 * 2
    summary = pd.read_csv(results / "summary.tsv", sep="\t", dtype={"subject": str})
    assert len(summary) == 4 and set(summary["model"]) == {"timedecoder", "nice"}
    assert (summary["n_way"] == 10).all() and (summary["top1_chance"] == 0.1).all()
    timed = summary[summary["model"] == "timedecoder"]
    assert (timed["top1"] > timed["top1_chance"]).all()
    report = (results / "report.html").read_text()
    assert "Time-resolved decoding" in report and "Zero-shot retrieval" in report
    metrics = json.loads(
        (results / "models/sub-01/sensors/timedecoder-caption/metrics.json").read_text()
    )
    assert len(metrics["top1_over_time"].split(",")) == 100
    assert 0.1 <= metrics["peak_time_s"] <= 0.4
    assert not np.isnan(metrics["top5_ci_low"])


def test_nothing_left_to_do_and_a_subject_adds_exactly_its_jobs(run):
    again = run_workflow(run, meeg_config(), "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    more = run_workflow(run, meeg_config(("01", "02", "03")), "-n")
    out = more.stdout + more.stderr
    counts = dict(re.findall(r"^(meeg_\w+|all)\s+(\d+)$", out, flags=re.M))
    assert counts["meeg_preprocess"] == "1" and counts["meeg_train"] == "2", out[-3000:]
    assert counts["meeg_evaluate"] == "2"


@pytest.mark.parametrize(
    ("dataset", "subjects", "sessions"),
    [("things-meg", ["BIGMEG1"], ["01", "02"]), ("things-eeg2", ["01", "02"], ["01"])],
)
def test_real_meeg_datasets_take_the_meeg_branch_offline(tmp_path, dataset, subjects, sessions):
    """The DAG of THINGS-MEG / THINGS-EEG2 builds without network: fetch, then the M/EEG
    rules (never the fMRI preprocess/betas)."""
    config = meeg_config(subjects)
    config.update(dataset=dataset, sessions=sessions)
    result = run_workflow(tmp_path, config, "-n")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert counts["fetch"] == "1" and counts["meeg_preprocess"] == str(len(subjects)), out
    assert "betas" not in counts and "preprocess" not in counts
