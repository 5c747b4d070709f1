"""Integration: the real Snakemake workflow on a tiny config, end to end.

One run (module fixture) feeds several checks: outputs, the Zarr storage
contract of every store it wrote, recovery of the true amplitudes, the
direction of the encoding results, leakage, and the config-driven fan-out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.numpy import load_file

from brainpipe.datasets.synthetic import load_ground_truth
from brainpipe.models.jobs import train_job
from brainpipe.splits import read_splits
from brainpipe.storage import open_zarr, write_zarr

from .conftest import ROOT, run_workflow, snakemake_command

pytestmark = pytest.mark.integration

SUBJECTS = ["01", "02"]
ROIS = ["V1", "LOC"]
FEATURES = ["gabor", "caption"]


def tiny_config(**overrides) -> dict:
    """The default config shrunk to a tiny synthetic dataset (every other key as shipped)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        subjects=SUBJECTS,
        sessions=["01", "02"],
        runs=["01", "02", "03"],
        rois=ROIS,
        feature_models=FEATURES,
    )
    config["synthetic"].update(
        seed=5,
        n_subjects=3,
        n_sessions=2,
        n_runs=3,
        trials_per_run=30,
        voxel_size_mm=8.0,
        n_shared=10,
    )
    config.update(overrides)
    return config


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True):
    """Run the real workflow in ``workdir`` with ``config``; return the completed process."""
    result = run_workflow(workdir, config, *args)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        match = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not match:
            continue
        wildcards = re.search(r"wildcards: (.*)", block)
        pairs = dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {}
        jobs.append((match.group(1), pairs))
    return jobs


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("pipeline")
    snakemake(workdir, tiny_config())
    return workdir


def test_summary_and_report(run):
    results = run / "results" / "synthetic"
    summary = pd.read_csv(results / "summary.tsv", sep="\t", dtype={"subject": str})
    encoding = summary[summary["features"].isin(FEATURES) & (summary["model"] == "ridge")]
    assert len(encoding) == len(SUBJECTS) * len(ROIS) * len(FEATURES)
    assert set(encoding["subject"]) == set(SUBJECTS) and set(encoding["roi"]) == set(ROIS)
    assert encoding[["mean_r", "mean_noise_ceiling", "mean_score"]].notna().all().all()
    html = (results / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') >= 1


def test_report_holds_every_figure_and_snakemake_report_bundles_them(run):
    """Each figure the report promises, by its id, and `snakemake --report` carries them."""
    results = run / "results" / "synthetic"
    html = (results / "report.html").read_text()
    decoders = ["ridgedecoder-caption", "sharedbackbone-caption"]
    expected = [
        "encoding_accuracy",
        "score_heatmap",
        "brainmaps",
        "decoding_retrieval",
        "alignment_crosssubject",
        *(f"retrieval_{d}" for d in decoders),
    ]
    for name in expected:
        assert f'<figure id="{name}"><img src="data:image/png;base64,' in html, name
        assert (results / "report_figures" / f"{name}.png").stat().st_size > 1000, name
    assert "Against the ground truth" in html and "betas_vs_truth_r" in html
    assert ">nan<" not in html  # missing values print as a dash
    summary = pd.read_csv(results / "summary.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert not [c for c in summary if c.startswith(("mlpdecoder_", "ridgedecoder_", "scratch_"))]
    baselines = summary[summary["baseline_of"] == "sharedbackbone"]
    assert set(baselines["model"]) == {"mlpdecoder", "ridgedecoder"}
    keys = ["subject", "roi", "model", "baseline_of", "features"]
    assert not summary.duplicated(keys).any()
    scores = pd.read_csv(results / "align" / "crosssubject.tsv", sep="\t")
    assert set(scores["method"]) == set(tiny_config()["align"]["methods"])
    assert (scores.groupby("method")["mean_r"].mean() > 0.1).all()
    bundle = run / "snakemake_report.zip"
    snakemake(run, tiny_config(), "--report", str(bundle))
    import zipfile

    names = zipfile.ZipFile(bundle).namelist()
    for name in expected:
        assert any(n.endswith(f"{name}.png") for n in names), (name, names[:20])


def test_low_level_model_wins_in_v1_and_semantic_model_in_loc(run):
    summary = pd.read_csv(run / "results" / "synthetic" / "summary.tsv", sep="\t")
    mean_r = summary[summary["model"] == "ridge"].groupby(["roi", "features"])["mean_r"].mean()
    assert mean_r["V1", "gabor"] > mean_r["V1", "caption"] + 0.1
    assert mean_r["LOC", "caption"] > mean_r["LOC", "gabor"] + 0.1


def test_lsa_betas_track_the_true_amplitudes(run):
    for subject in SUBJECTS:
        betas = open_zarr(run / "results" / "synthetic" / f"sub-{subject}" / "betas.zarr")
        truth = load_ground_truth(run / "data" / "synthetic", subject)
        roi = (betas["roi_V1"] | betas["roi_LOC"]).values
        np.testing.assert_array_equal(betas["i"].values, truth["i"].values)  # same voxel order
        np.testing.assert_array_equal(
            betas["stimulus"].values, truth["stimulus"].values.astype(str)
        )
        r = np.corrcoef(
            betas["betas"].values[:, roi].ravel(), truth["amplitude"].values[:, roi].ravel()
        )
        assert r[0, 1] > 0.6, f"sub-{subject}: LSA betas vs true amplitudes r={r[0, 1]:.2f}"


def _check_common_attrs(store, path):
    assert store.attrs["brainpipe_version"], path
    assert len(store.attrs["config_hash"]) == 16, path


def _check_betas(store, path):
    assert store["betas"].dims == ("trial", "voxel") and store["betas"].dtype == np.float32
    for name in ("stimulus", "session", "run"):
        assert store[name].dims == ("trial",) and store[name].dtype.kind == "U", (path, name)
    assert store["onset"].dtype == np.float64
    for name in "ijk":
        assert store[name].dims == ("voxel",) and store[name].dtype == np.int32
    for name in "xyz":
        assert store[name].dims == ("voxel",) and store[name].dtype == np.float32
    for roi in ("V1", "V4", "LOC"):
        assert store[f"roi_{roi}"].dtype == bool and store[f"roi_{roi}"].any()
    for name in ("r2", "ncsnr", "nc_1trial", "nc_3trial"):
        assert store[name].dims == ("voxel",) and store[name].dtype == np.float32
    assert store["hrf_index"].dtype == np.int16
    assert store.attrs["units"] == "percent signal change"
    assert (
        np.asarray(store.attrs["affine"]).shape == (4, 4) and len(store.attrs["volume_shape"]) == 3
    )
    assert store.attrs["tr"] == pytest.approx(1.6)
    # Trials are chunked by session, voxels in blocks.
    sessions = pd.Series(store["session"].values).value_counts()
    assert store["betas"].encoding["chunks"][0] == sessions.max()
    assert np.isfinite(store["betas"].values).all()


def _check_preproc(store, path):
    assert store["bold"].dims == ("time", "voxel") and store["bold"].dtype == np.float32
    assert {"session", "run", "scan"} <= set(store["bold"].coords)
    assert store.attrs["units"] == "percent signal change"


def _check_features(store, path):
    assert store["features"].dims == ("stimulus", "feature")
    assert store["features"].dtype == np.float32
    assert store.attrs["fitted_on"] == "train"
    assert set(store["split"].values) == {"train", "test"}


def _check_predictions(store, path):
    # Encoders predict voxels; decoders predict the dimensions of a stimulus embedding.
    output = {"encoding": "voxel", "decoding": "dim"}[store.attrs["kind"]]
    assert store["predicted"].dims == ("stimulus", output)
    splits = read_splits(path.parents[4] / "splits.tsv")
    assert set(splits[store["stimulus"].values]) == {"test"}


def _check_scores(store, path):
    if store.attrs["kind"] == "decoding":
        # Retrieval scores: every test stimulus against every test stimulus as candidate.
        assert store["similarity"].dims == ("stimulus", "candidate")
        assert list(store["stimulus"].values) == list(store["candidate"].values)
        return
    for name in ("r", "r2", "noise_ceiling", "score"):
        assert store[name].dims == ("voxel",) and store[name].dtype == np.float32


CONTRACTS = {
    "betas.zarr": _check_betas,
    "preproc.zarr": _check_preproc,
    "predictions.zarr": _check_predictions,
    "scores.zarr": _check_scores,
}


def test_every_store_honours_the_contract(run):
    stores = sorted((run / "results").rglob("*.zarr"))
    assert stores, "the pipeline wrote no Zarr store"
    checked = set()
    for path in stores:
        store = open_zarr(path)
        _check_common_attrs(store, path)
        check = CONTRACTS.get(path.name)
        if check is None and path.parent.name == "features":
            check = _check_features
        if check is not None:
            check(store, path)
            checked.add(check.__name__)
    assert checked >= {
        "_check_betas",
        "_check_preproc",
        "_check_features",
        "_check_predictions",
        "_check_scores",
    }
    # Nothing half-written is left behind by a clean run.
    assert not list((run / "results").rglob(".*.tmp-*"))


def test_changing_test_betas_changes_no_fitted_parameter(run, tmp_path):
    results = run / "results" / "synthetic"
    betas_path = results / "sub-01" / "betas.zarr"
    features = results / "features" / "gabor.zarr"
    splits_path = results / "splits.tsv"
    alphas = [1.0, 100.0, 10000.0]

    original = open_zarr(betas_path).load()
    tampered = original.copy(deep=True)
    is_test = (read_splits(splits_path)[original["stimulus"].values] == "test").to_numpy()
    assert 0 < is_test.sum() < len(is_test)
    tampered["betas"][is_test] = -3.0 * tampered["betas"][is_test] + 7.0
    write_zarr(tampered, tmp_path / "tampered.zarr")

    config = tiny_config(model_params={"ridge": {"alphas": alphas}})
    for name, store in (("a", betas_path), ("b", tmp_path / "tampered.zarr")):
        train_job(
            "ridge",
            "01",
            "V1",
            store,
            [features],
            splits_path,
            tmp_path / f"{name}.safetensors",
            tmp_path / f"{name}_pred.zarr",
            config=config,
        )
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    for key in ("coef", "intercept", "alpha"):
        np.testing.assert_array_equal(a[key], b[key])
    # PCA of the features is fitted on training stimuli only, and from stimuli, not betas.
    assert open_zarr(features).attrs["fitted_on"] == "train"


def test_every_job_is_benchmarked_within_its_mem_mb(run):
    """Each job's ``benchmark:`` file (wall time, max RSS) against its declared mem_mb."""
    from brainpipe.jobstats import declared_resources, memory_report

    plan = snakemake(run, tiny_config(), "-n", "--forceall").stdout
    report = memory_report(declared_resources(plan), root=run)
    ran = {rule for rule, _ in planned_jobs(plan)} - {"all"}
    assert ran <= set(report["rule"]), f"no benchmark record for {ran - set(report['rule'])}"
    assert (report["seconds"] > 0).all()
    over = report[report["rss_over_mem"] > 1]
    assert over.empty, f"jobs over their mem_mb:\n{over.to_string()}"


def test_adding_an_roi_adds_only_its_jobs(run):
    result = snakemake(run, tiny_config(rois=ROIS + ["V4"]), "-n")
    jobs = planned_jobs(result.stdout)
    assert jobs
    for rule, wildcards in jobs:
        if "roi" in wildcards:
            assert wildcards["roi"] == "V4", (rule, wildcards)
        else:
            assert rule in {"summary", "report", "all"}, (rule, wildcards)
    trained = {
        (w["subject"], w["features"]) for r, w in jobs if r == "train" and w.get("model") == "ridge"
    }
    assert trained == {(s, f) for s in SUBJECTS for f in FEATURES}


def _counts(jobs):
    return pd.Series([rule for rule, _ in jobs]).value_counts().to_dict()


def test_fan_out_follows_the_config(tmp_path):
    def plan(name, **overrides):
        config = tiny_config(models=["ridge"], **overrides)
        return _counts(planned_jobs(snakemake(tmp_path / name, config, "-n").stdout))

    base = plan("base", feature_models=["gabor"])
    more_subjects = plan("subjects", feature_models=["gabor"], subjects=SUBJECTS + ["03"])
    more_features = plan("features", feature_models=["gabor", "caption"])
    more_rois = plan("rois", feature_models=["gabor"], rois=ROIS + ["V4"])
    assert base["preprocess"] == base["betas"] == len(SUBJECTS)
    assert base["train"] == len(SUBJECTS) * len(ROIS)
    for rule in ("validate_inputs", "preprocess", "betas"):
        assert more_subjects[rule] == base[rule] + 1
        assert more_features[rule] == more_rois[rule] == base[rule]
    assert more_subjects["train"] == base["train"] * 3 // 2
    assert more_subjects["features"] == base["features"] == 1
    assert more_features["features"] == 2 and more_features["train"] == 2 * base["train"]
    assert more_rois["train"] == base["train"] * 3 // 2 and more_rois["features"] == 1


def test_unknown_feature_model_is_refused_before_any_job(tmp_path):
    result = snakemake(tmp_path, tiny_config(feature_models=["gabor", "vgg99"]), "-n", check=False)
    assert result.returncode != 0
    assert (
        "field 'feature_models.1': unknown feature model 'vgg99'" in result.stdout + result.stderr
    )


def test_killed_download_leaves_nothing_that_looks_complete(tmp_path):
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        snakemake_command(workdir, tiny_config(), "download"),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((workdir / "data").glob(".synthetic.tmp-*/sub-01")):
        time.sleep(0.05)
    assert list((workdir / "data").glob(".synthetic.tmp-*")), "generation never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / "data" / "synthetic").exists()
    # After a kill, Snakemake's lock stays (as after a power loss); unlock, rerun, and it completes.
    snakemake(workdir, tiny_config(), "--unlock")
    snakemake(workdir, tiny_config(), "download")
    assert (workdir / "data" / "synthetic" / "dataset_description.json").exists()


def test_bad_events_stop_the_run_before_preprocessing(tmp_path, tiny_dataset):
    workdir = tmp_path / "bad"
    data = workdir / "data" / "synthetic"
    shutil.copytree(tiny_dataset, data)
    events = data / "sub-01" / "ses-01" / "func" / "sub-01_ses-01_task-images_run-01_events.tsv"
    table = pd.read_csv(events, sep="\t")
    table.drop(columns="onset").to_csv(events, sep="\t", index=False)
    from .conftest import TINY

    config = tiny_config(subjects=["01"], runs=["01", "02"])
    config["synthetic"] = dict(TINY)
    result = snakemake(workdir, config, check=False)
    assert result.returncode != 0
    log = (workdir / "logs" / "synthetic" / "validate_events" / "sub-01.log").read_text()
    assert f"{events.relative_to(workdir)}: field 'onset': column is missing" in log
    assert not list((workdir / "results").rglob("preproc.zarr"))
    assert json.dumps  # the manifest was not written either
    assert not (workdir / "results" / "synthetic" / "sub-01" / "events_manifest.json").exists()
