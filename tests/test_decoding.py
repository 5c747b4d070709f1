"""Decoders on real generated data: retrieval far above chance, shared backbone with limited
data, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from brainpipe.datasets import synthetic
from brainpipe.models import get_model, model_params
from brainpipe.models.data import load_job_data
from brainpipe.models.evaluation import decoding_metrics
from tests.test_models import build_zoo_inputs

#: Three subjects (pretraining has two when one is held out), more trials than TINY.
DECODING = {
    "seed": 5,
    "n_subjects": 3,
    "n_sessions": 2,
    "n_runs": 2,
    "trials_per_run": 40,
    "voxel_size_mm": 8.0,
    "n_shared": 16,
}
FAST = {"epochs": 80, "finetune_epochs": 80}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dec") / "synthetic"
    synthetic.generate(root, synthetic.SyntheticParams.from_config(DECODING))
    return build_zoo_inputs(root, tmp_path_factory.mktemp("deczoo"))


def _data(zoo, s):
    betas = zoo["splits"].parent / f"sub-{s}_betas.zarr"
    return load_job_data(betas, [zoo["caption"]], zoo["splits"], "all", s)


@pytest.mark.parametrize("model", ["ridgedecoder", "mlpdecoder"])
def test_decoders_retrieve_far_above_chance(zoo, model):
    params = model_params(model, {"model_params": {"mlpdecoder": {"epochs": 80}}})
    data = _data(zoo, zoo["subjects"][0])
    metrics = decoding_metrics(get_model(model).fit(data, params).predicted, data.features_test[0])
    assert metrics["top1"] >= 4 * metrics["top1_chance"], metrics
    assert metrics["two_way"] >= 0.8, metrics


@pytest.mark.xfail(
    strict=True,
    reason="not reached yet: on this synthetic set the fine-tuned shared backbone "
    "(top-1 0.48, 2-way 0.89) does not beat the per-subject MLP (0.46, 0.92) or ridge "
    "(0.50, 0.91) trained on the same one session; see the zoo report",
)
def test_shared_backbone_beats_per_subject_decoders_with_one_session(zoo):
    spec = get_model("sharedbackbone")
    params = model_params("sharedbackbone", {"model_params": {"sharedbackbone": FAST}})
    wins = []
    for held_out in zoo["subjects"]:
        others = {s: _data(zoo, s) for s in zoo["subjects"] if s != held_out}
        params["pretrained"] = spec.pretrain(others, params)
        data = _data(zoo, held_out)
        result = spec.fit(data, params)
        true = data.features_test[0]
        shared = decoding_metrics(result.predicted, true)["two_way"]
        scratch = decoding_metrics(result.extra_predictions["scratch"], true)["two_way"]
        ridge = decoding_metrics(result.extra_predictions["ridge"], true)["two_way"]
        wins.append(shared - max(scratch, ridge))
        assert result.info["n_finetune_trials"] == str(int((data.sessions_train == "01").sum()))
    assert np.mean(wins) > 0, wins


def test_mlp_decoder_is_deterministic(zoo):
    params = model_params("mlpdecoder", {"model_params": {"mlpdecoder": {"epochs": 10}}})
    data = _data(zoo, zoo["subjects"][1])
    a = get_model("mlpdecoder").fit(data, params)
    b = get_model("mlpdecoder").fit(data, params)
    np.testing.assert_array_equal(a.predicted, b.predicted)
    assert a.info["device"] in ("cpu", "cuda")
