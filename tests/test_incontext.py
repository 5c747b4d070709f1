"""In-context encoder (BraInCoRL-style) on the synthetic world: its ground truth.

Meta-trained on the other subjects' voxels, the encoder of a held-out subject is read
from support sets of increasing size and compared with ridge fitted on the same support
sets, both scored against the generator's noise-free responses to the test stimuli.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainpipe.datasets import synthetic
from brainpipe.features.pca import build_feature_store
from brainpipe.metrics import pearson_r
from brainpipe.models import get_model, model_params
from brainpipe.models.data import load_job_data
from brainpipe.models.incontext import support_sizes, support_trials
from brainpipe.models.summary import tidy_rows
from brainpipe.splits import make_splits
from brainpipe.storage import open_zarr, write_zarr
from tests.test_models import betas_from_truth

#: Four subjects (8 mm voxels): three to meta-train on, one held out.
WORLD = {
    "seed": 3,
    "n_subjects": 4,
    "n_sessions": 2,
    "n_runs": 3,
    "trials_per_run": 40,
    "voxel_size_mm": 8.0,
    "n_shared": 24,
}
#: Small network, few steps: seconds on a CPU.
FAST = {"dim": 32, "steps": 300, "voxels_per_step": 32, "lr": 3e-3, "threads": 2}
SIZES = [10, 20, 160]
HELD_OUT = "01"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("icl") / "synthetic"
    synthetic.generate(root, synthetic.SyntheticParams.from_config(WORLD))
    out = tmp_path_factory.mktemp("iclzoo")
    stimuli = root / "stimuli" / "stimuli.tsv"
    make_splits(stimuli, out / "splits.tsv")
    paths = {"splits": out / "splits.tsv", "subjects": synthetic.subject_ids(
        synthetic.SyntheticParams.from_config(WORLD)
    )}  # fmt: skip
    paths["caption"] = build_feature_store("caption", stimuli, paths["splits"], out / "c.zarr", 32)
    for s in paths["subjects"]:
        betas_from_truth(root, s, out / f"sub-{s}_betas.zarr")
        betas_from_truth(root, s, out / f"sub-{s}_noisefree.zarr", "stimulus_response")
    return paths


def _data(world, subject, kind="betas"):
    path = world["splits"].parent / f"sub-{subject}_{kind}.zarr"
    return load_job_data(path, [world["caption"]], world["splits"], "LOC", subject)


@pytest.fixture(scope="module")
def fitted(world):
    spec = get_model("incontext")
    params = model_params("incontext", {"model_params": {"incontext": {**FAST}}})
    params["support_sizes"] = SIZES
    others = {s: _data(world, s) for s in world["subjects"] if s != HELD_OUT}
    params["pretrained"] = spec.pretrain(others, params)
    return spec, params


def test_in_context_beats_ridge_at_small_support_and_approaches_it_at_large(world, fitted):
    """Measured (this world; mean r over LOC voxels and 3 support draws vs the noise-free
    test responses): k=10 in-context 0.547 vs ridge 0.471; k=20 0.775 vs 0.715; k=160
    0.972 vs 0.975."""
    spec, params = fitted
    data = _data(world, HELD_OUT)
    clean = _data(world, HELD_OUT, "noisefree").betas_test
    scores: dict[str, list[float]] = {}
    for seed in range(3):
        result = spec.fit(data, {**params, "seed": seed})
        for name, pred in result.extra_predictions.items():
            scores.setdefault(name, []).append(float(np.mean(pearson_r(clean, pred))))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    small, large = SIZES[0], SIZES[-1]
    assert mean[f"incontext{small}"] >= mean[f"ridge{small}"] + 0.05, mean
    assert mean[f"incontext{large}"] >= 0.97 * mean[f"ridge{large}"], mean
    assert mean[f"incontext{large}"] > mean[f"incontext{small}"], mean


def test_support_sets_are_nested_training_trials_and_test_betas_change_nothing(
    world, fitted, tmp_path
):
    spec, params = fitted
    data = _data(world, HELD_OUT)
    a, b = support_trials(data, 10, 0), support_trials(data, 40, 0)
    np.testing.assert_array_equal(b[:10], a)
    assert len(set(data.stimuli_train[b])) == 40  # distinct stimuli first
    assert support_sizes(data, {"support_sizes": [50, 100, 10_000]}) == [50, 100]
    assert support_sizes(data, {"support_sizes": [10_000]}) == [len(data.stimuli_train)]
    # Changing the held-out subject's test betas changes no encoder it reads.
    store = open_zarr(world["splits"].parent / f"sub-{HELD_OUT}_betas.zarr").load()
    test = np.isin(store["stimulus"].values, data.test_stimuli)
    store["betas"].values[test] += 100.0
    write_zarr(store, tmp_path / "changed.zarr")
    changed = load_job_data(
        tmp_path / "changed.zarr", [world["caption"]], world["splits"], "LOC", HELD_OUT
    )
    first, second = spec.fit(data, params), spec.fit(changed, params)
    np.testing.assert_array_equal(first.weights["coef"], second.weights["coef"])
    np.testing.assert_array_equal(first.predicted, second.predicted)


def test_meta_training_is_deterministic(world):
    spec = get_model("incontext")
    params = model_params("incontext", {"model_params": {"incontext": {**FAST, "steps": 5}}})
    others = {s: _data(world, s) for s in ("02", "03")}
    one, two = spec.pretrain(others, params), spec.pretrain(others, params)
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])


def test_summary_splits_encoding_variants_into_rows():
    metrics = {
        "dataset": "synthetic", "subject": "01", "roi": "LOC", "model": "incontext",
        "kind": "encoding", "features": "caption", "n_voxels": 5, "mean_r": 0.9,
        "mean_r_ci_low": 0.8, "incontext10_mean_r": 0.5, "incontext10_mean_r_ci_low": 0.4,
        "ridge10_mean_r": 0.3,
    }  # fmt: skip
    rows = tidy_rows(metrics)
    assert [(r["model"], r["baseline_of"]) for r in rows] == [
        ("incontext", ""), ("incontext10", "incontext"), ("ridge10", "incontext"),
    ]  # fmt: skip
    assert rows[0]["mean_r"] == 0.9 and "incontext10_mean_r" not in rows[0]
    assert rows[1]["mean_r"] == 0.5 and rows[1]["mean_r_ci_low"] == 0.4
    assert rows[2]["mean_r"] == 0.3 and rows[2]["n_voxels"] == 5


@pytest.mark.integration
def test_snakemake_fans_out_pretrain_train_evaluate_and_summarises_support_sizes(tmp_path):
    """The real workflow (LSA betas of a tiny world): one meta-training job per ROI writes
    a network per held-out subject; each subject's job scores every support size, and the
    summary has a row per prediction. (The ground-truth comparison with ridge needs more
    trials than a CI-sized run: it is the unit test above.)"""
    from tests.test_pipeline import snakemake, tiny_config

    config = tiny_config(
        subjects=["01", "02", "03"],
        sessions=["01", "02"],
        runs=["01", "02"],
        rois=["LOC"],
        feature_models=["caption"],
        models=["incontext"],
        model_params={"incontext": {**FAST, "steps": 100, "support_sizes": [10, 60]}},
    )
    config["betas"]["method"] = "lsa"
    config["align"]["methods"] = []
    config["synthetic"].update(n_subjects=3, n_runs=2, trials_per_run=24, n_shared=16)
    snakemake(tmp_path, config, "results/synthetic/summary.tsv")
    import pandas as pd

    summary = pd.read_csv(tmp_path / "results/synthetic/summary.tsv", sep="\t", dtype=str)
    shared = tmp_path / "results/synthetic/models/shared/LOC/incontext-caption"
    assert sorted(p.name for p in shared.iterdir()) == [
        f"pretrained-without-{s}.safetensors" for s in ("01", "02", "03")
    ]
    rows = summary.set_index(["subject", "model"])
    for s in ("01", "02", "03"):
        for model in ("incontext", "incontext10", "ridge10", "incontext60", "ridge60"):
            assert np.isfinite(float(rows.loc[(s, model), "mean_r"])), (s, model)
        assert rows.loc[(s, "ridge10"), "baseline_of"] == "incontext"
    mean_r = summary.assign(r=summary["mean_r"].astype(float)).groupby("model")["r"].mean()
    assert mean_r["incontext60"] > 0.2 and mean_r["incontext"] == mean_r["incontext60"], mean_r
