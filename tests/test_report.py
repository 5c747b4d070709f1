"""The tidy summary, the recipe comparison, the metrics recipes need, and the report's figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainpipe.metrics import algonauts2023_score, nc_normalised_score
from brainpipe.models.evaluation import decoding_metrics, sampled_retrieval, similarity_matrix
from brainpipe.models.summary import tidy_rows
from brainpipe.report.figures import decoding_figure, roi_order, score_heatmap_figure
from brainpipe.report.recipe import compare


def test_baselines_become_rows_of_their_own():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((20, 8))
    metrics = {
        "dataset": "d",
        "subject": "01",
        "roi": "all",
        "model": "sharedbackbone",
        "kind": "decoding",
        "features": "caption",
        "n_train_trials": 40,
    }
    metrics.update(decoding_metrics(true + 0.1 * rng.standard_normal(true.shape), true, 50))
    metrics.update(
        decoding_metrics(rng.standard_normal(true.shape), true, 50, prefix="ridgedecoder_")
    )
    rows = tidy_rows(metrics)
    assert [r["model"] for r in rows] == ["sharedbackbone", "ridgedecoder"]
    assert rows[0]["baseline_of"] == "" and rows[1]["baseline_of"] == "sharedbackbone"
    assert not any(k.startswith("ridgedecoder_") for row in rows for k in row)
    assert rows[1]["n_train_trials"] == 40 and rows[1]["subject"] == "01"
    assert rows[0]["top1"] > rows[1]["top1"]
    assert set(rows[0]) - {"baseline_of"} >= set(rows[1]) - {"baseline_of"}
    assert "mean_r" not in rows[0] and "mean_dim_r" in rows[0]  # one meaning per column


def test_sampled_retrieval_counts_both_directions_against_chance():
    rng = np.random.default_rng(1)
    true = rng.standard_normal((60, 16))
    perfect = sampled_retrieval(similarity_matrix(true, true), 30, draws=5)
    assert perfect["image_top1_sampled"] == 1.0 and perfect["brain_top1_sampled"] == 1.0
    assert perfect["sampled_chance"] == pytest.approx(1 / 30) and perfect["sampled_n_way"] == 30
    noise = sampled_retrieval(similarity_matrix(rng.standard_normal(true.shape), true), 30, 200)
    assert abs(noise["image_top1_sampled"] - 1 / 30) < 0.02
    # image retrieval ranks rows, brain retrieval columns: a true embedding that is the
    # nearest of every decoded one (a "hub") costs image retrieval all other queries, but
    # brain retrieval only itself (its column ties everywhere)
    sim = np.eye(10)
    sim[:, 0] = 2.0
    out = sampled_retrieval(sim, 10, draws=1)
    assert out["image_top1_sampled"] == pytest.approx(0.1)
    assert out["brain_top1_sampled"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="n_way"):
        sampled_retrieval(sim, 11, draws=1)


def test_decoding_metrics_caps_n_way_at_the_test_stimuli():
    true = np.random.default_rng(2).standard_normal((12, 4))
    out = decoding_metrics(true, true, 20, n_way=300, draws=3)
    assert out["sampled_n_way"] == 12 and out["sampled_draws"] == 3


def test_algonauts_score_follows_the_challenge_definition():
    r = np.array([0.5, -0.2, 0.9, 0.3])
    nc = np.array([50.0, 40.0, 30.0, 0.0])  # percent
    # r<0 -> 0; 100*r²/NC capped at 100; NC 0 -> 1e-14 so the vertex counts (as 100 here)
    expected = np.mean([100 * 0.25 / 0.5, 0.0, 100.0, 100.0])
    assert algonauts2023_score(r, nc) == pytest.approx(expected)
    # our ROI score leaves zero-ceiling voxels out instead
    assert np.isnan(nc_normalised_score(r, nc)[3])


def _summary() -> pd.DataFrame:
    rows = []
    for subject in ("01", "02"):
        for roi, value in (("LOC", 0.2), ("V1", 0.4)):
            rows.append(
                {
                    "subject": subject,
                    "roi": roi,
                    "model": "ridge",
                    "baseline_of": "",
                    "features": "gabor",
                    "kind": "encoding",
                    "mean_score": 50.0,
                    "mean_r": value,
                    "mean_r_ci_low": value - 0.1,
                    "mean_r_ci_high": value + 0.1,
                }
            )
    return pd.DataFrame(rows)


def test_recipe_compares_the_selected_rows_with_the_paper():
    recipe = {
        "reported": [
            {
                "label": "V1 r",
                "definition": "mean r",
                "value": 0.5,
                "metric": "mean_r",
                "where": {"roi": "V1", "model": "ridge"},
            },
            {
                "label": "absent",
                "definition": "x",
                "value": 1.0,
                "metric": "mean_r",
                "where": {"roi": "FFA"},
            },
        ]
    }
    first, absent = compare(_summary(), recipe)
    assert first.ours == pytest.approx(0.4) and first.paper == 0.5 and first.n_rows == 2
    assert (first.ci_low, first.ci_high) == pytest.approx((0.3, 0.5))
    assert np.isnan(absent.ours) and absent.n_rows == 0
    bad = {"reported": [{**recipe["reported"][0], "metric": "top1"}]}
    with pytest.raises(ValueError, match=r"recipe.reported\[0\].metric"):
        compare(_summary(), bad)
    # "" selects empty cells as summary.tsv reads them back (NaN): a model's own rows, not
    # the baselines trained in another model's job; the number's source is carried along
    summary = _summary()
    summary.loc[summary["roi"] == "LOC", "baseline_of"] = "sharedbackbone"
    summary["baseline_of"] = summary["baseline_of"].replace("", np.nan)
    own = {**recipe["reported"][0], "where": {"baseline_of": ""}, "source": "verified: abstract"}
    (only,) = compare(summary, {"reported": [own]})
    assert only.n_rows == 2 and only.ours == pytest.approx(0.4)
    assert only.source == "verified: abstract"


def test_rois_in_hierarchy_order_and_heatmap_cells_not_run_are_blank():
    assert roi_order(["LOC", "nsdgeneral", "V4", "FFA", "V1", "zeta"]) == [
        "V1",
        "V4",
        "LOC",
        "FFA",
        "nsdgeneral",
        "zeta",
    ]
    table = pd.concat([_summary(), _summary().assign(model="attention", roi="V1")])
    table = table.drop_duplicates(["subject", "roi", "model"])
    fig = score_heatmap_figure(table)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "not run" in texts and "nan" not in texts
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["V1", "LOC"]


def test_decoding_figure_fits_the_page_and_names_the_candidates():
    rows = []
    for model in ("ridgedecoder", "sharedbackbone"):
        for subject in ("01", "02"):
            rows.append(
                {
                    "subject": subject,
                    "roi": "all",
                    "model": model,
                    "baseline_of": "",
                    "features": "caption",
                    "top1": 0.3,
                    "top1_ci_low": 0.2,
                    "top1_ci_high": 0.4,
                    "top1_chance": 0.05,
                    "top5": 0.6,
                    "top5_chance": 0.25,
                    "two_way": 0.8,
                    "two_way_chance": 0.5,
                    "n_candidates": 20,
                }
            )
    fig = decoding_figure(pd.DataFrame(rows))
    assert fig.get_size_inches()[0] <= 9.0
    assert fig._suptitle is None
    assert all("among 20 candidates" in ax.get_xlabel() for ax in fig.axes)
    assert all("dashed: chance" in ax.get_xlabel() for ax in fig.axes)


def test_ci_whiskers_are_never_negative_when_the_interval_misses_the_estimate():
    """A percentile bootstrap interval can lie wholly above a biased estimate (r² % of a few
    test stimuli: 5.45 with CI [5.62, 6.83] in a 20-step scale run); matplotlib refuses
    negative whiskers, so that side is drawn as zero and the other reaches the interval."""
    from brainpipe.report.figures import _ci

    rows = pd.DataFrame(
        {
            "mean_r2_percent": [5.45, 3.0],
            "mean_r2_percent_ci_low": [5.62, 2.0],
            "mean_r2_percent_ci_high": [6.83, 4.5],
        }
    )
    np.testing.assert_allclose(_ci(rows, "mean_r2_percent"), [[0.0, 1.0], [1.38, 1.5]])
    assert _ci(rows.drop(columns="mean_r2_percent_ci_low"), "mean_r2_percent") is None


def test_counts_print_as_integers_when_some_rows_lack_them():
    from brainpipe.report.page import _table

    # aligned decoders' summary rows have no voxel count: pandas reads the column as float
    frame = pd.DataFrame({"model": ["ridge", "ridgedecoder"], "n_voxels": [67.0, np.nan],
                          "mean_r": [0.5, 0.25]})  # fmt: skip
    html = _table(frame)
    assert ">67<" in html and "67.000" not in html
    assert "0.500" in html  # scores keep their three decimals
