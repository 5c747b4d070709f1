"""Decoders in an aligned space, through the real Snakemake workflow on the synthetic world.

The synthetic subjects share a template-space topography with per-subject deviations
(:mod:`brainpipe.datasets.synthetic`), so a decoder fitted on one subject's functionally
aligned training responses should decode another subject's aligned test responses well
above chance, and better than through anatomical alignment alone. One small run (two
subjects, one ROI, one embedding, ridge decoder) feeds every check.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from brainpipe.splits import read_splits
from brainpipe.storage import open_zarr

from .test_pipeline import snakemake, tiny_config

pytestmark = pytest.mark.integration

METHODS = ["anatomical", "procrustes"]


def _config() -> dict:
    config = tiny_config(
        rois=["LOC"],
        feature_models=["caption"],
        models=["ridgedecoder"],
        model_params={"ridgedecoder": {"rois": ["LOC"], "features": ["caption"]}},
    )
    # 40 shared stimuli seen twice: half fit the alignment (training), half are the test set
    config["synthetic"].update(trials_per_run=40, n_shared=40, max_repeats=2)
    config["align"] = {
        "methods": METHODS,
        "n_components": 10,
        "roi": ["LOC"],
        "decoding_features": ["caption"],
    }
    config["evaluate"]["n_boot"] = 100
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("align-decoding")
    snakemake(workdir, _config(), "results/synthetic/report.html")
    return workdir / "results" / "synthetic"


def test_functional_alignment_decodes_other_subjects(run):
    """Cross-subject decoding through procrustes: above chance and above anatomical."""
    scores = pd.read_csv(
        run / "align" / "decoding.tsv", sep="\t", dtype={"source": str, "target": str}
    )
    assert set(scores["method"]) == set(METHODS)
    assert len(scores) == len(METHODS) * 2 * 2  # method x source x target
    cross = scores[scores["relation"] == "cross"].groupby("method")
    top1, two_way = cross["top1"].mean(), cross["two_way"].mean()
    chance = float(scores["top1_chance"].max())
    assert top1["procrustes"] > 3 * chance, top1
    assert top1["procrustes"] > top1["anatomical"], top1
    assert two_way["procrustes"] > max(two_way["anatomical"], 0.5) + 0.1, two_way
    # the within-subject decoder in the same space is the reference cross-subject approaches
    within = scores[scores["relation"] == "within"].groupby("method")["two_way"].mean()
    assert within["procrustes"] >= cross["two_way"].mean()["procrustes"] - 0.05


def test_test_stimuli_never_fitted(run):
    """Neither the alignment nor the decoder saw a test stimulus; n_train counts train trials."""
    splits = read_splits(run / "splits.tsv")
    test = set(splits.index[splits == "test"].astype(str))
    scores = pd.read_csv(run / "align" / "decoding.tsv", sep="\t", dtype={"source": str})
    for method in METHODS:
        store = open_zarr(run / "align" / f"{method}.zarr")
        assert not set(map(str, store.attrs["fit_stimuli"])) & test
        for subject in ("01", "02"):
            split = store["split"].sel(subject=subject).values.astype(str)
            n_train = int((split == "train").sum())
            rows = scores[(scores["method"] == method) & (scores["source"] == subject)]
            assert (rows["n_train_trials"] == n_train).all()
            stim = store["stimulus"].sel(subject=subject).values.astype(str)
            assert not set(stim[split == "train"]) & test


def test_summary_rows_and_report_figure(run):
    """summary.tsv holds one tidy row per decoded subject x ROI x model x features x space x
    fitted subject; the report and `snakemake --report` carry the figure."""
    summary = pd.read_csv(run / "summary.tsv", sep="\t", dtype=str, keep_default_na=False)
    html = (run / "report.html").read_text()
    keys = ["subject", "roi", "model", "baseline_of", "features", "space", "train_subject"]
    assert not summary.duplicated(keys).any()
    assert set(summary["space"]) == {"native", "aligned-anatomical", "aligned-procrustes"}
    native = summary[summary["space"] == "native"]
    assert (native["train_subject"] == native["subject"]).all()
    aligned = summary[summary["space"] == "aligned-procrustes"]
    assert len(aligned) == 4 and set(aligned["train_subject"]) == {"01", "02"}
    assert set(aligned["model"]) == {"ridgedecoder"} and set(aligned["roi"]) == {"LOC"}
    assert aligned["top1"].astype(float).notna().all()
    # the report's native decoding figures are not fed aligned rows
    assert '<figure id="decoding_retrieval"><img src="data:image/png;base64,' in html
    assert '<figure id="alignment_decoding"><img src="data:image/png;base64,' in html
    assert (run / "report_figures" / "alignment_decoding.png").stat().st_size > 1000
