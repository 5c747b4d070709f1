"""Decoders on real generated data: retrieval far above chance, shared backbone with limited
data, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainpipe.datasets import synthetic
from brainpipe.models import get_model, model_params
from brainpipe.models.data import load_job_data, standardiser
from brainpipe.models.decoders import _ridge_solutions, gram_ridge, pooled_standardiser
from brainpipe.models.diskrows import DiskRows
from brainpipe.models.evaluation import (
    decoding_metrics,
    retrieval_per_query,
    similarity_matrix,
)
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
FAST = {"epochs": 200, "finetune_epochs": 50}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dec") / "synthetic"
    synthetic.generate(root, synthetic.SyntheticParams.from_config(DECODING))
    return build_zoo_inputs(root, tmp_path_factory.mktemp("deczoo"))


def _data(zoo, s, lazy=False):
    betas = zoo["splits"].parent / f"sub-{s}_betas.zarr"
    return load_job_data(betas, [zoo["caption"]], zoo["splits"], "all", s, lazy=lazy)


@pytest.mark.parametrize("model", ["ridgedecoder", "mlpdecoder"])
def test_decoders_retrieve_far_above_chance(zoo, model):
    params = model_params(model, {"model_params": {"mlpdecoder": {"epochs": 80}}})
    data = _data(zoo, zoo["subjects"][0])
    metrics = decoding_metrics(get_model(model).fit(data, params).predicted, data.features_test[0])
    assert metrics["top1"] >= 4 * metrics["top1_chance"], metrics
    assert metrics["two_way"] >= 0.8, metrics


def test_ridge_decoder_on_principal_axes_of_a_large_roi(zoo):
    """Above ``max_components`` voxels the ridge decoder works on that many principal axes
    of the training trials (exact ridge would need a voxels x voxels decomposition per
    fold); its weights stay in voxel space and it still decodes."""
    data = _data(zoo, zoo["subjects"][0])
    n_vox = data.n_voxels
    params = model_params(
        "ridgedecoder", {"model_params": {"ridgedecoder": {"max_components": 24}}}
    )
    assert n_vox > 24
    result = get_model("ridgedecoder").fit(data, params)
    assert result.info["voxel_components"] == "24"
    assert result.weights["coef"].shape == (n_vox, data.features_test[0].shape[1])
    metrics = decoding_metrics(result.predicted, data.features_test[0])
    assert metrics["top1"] >= 3 * metrics["top1_chance"], metrics


def test_shared_backbone_beats_per_subject_decoders_with_one_session(zoo):
    """Leave-one-subject-out: pretrain on the other two subjects, adapt to one session.

    The per-subject MLP (same recipe as ``mlpdecoder``, at its plateau in epochs) and the
    ridge decoder (penalty per dimension by grouped CV) are trained on the same one
    session, predict the same test stimuli and are scored against the same embedding.
    Scores are pooled over the three held-out subjects (48 test queries, 16 candidates
    each: top-1 chance 1/16, 2-way chance 1/2).
    """
    spec = get_model("sharedbackbone")
    params = model_params("sharedbackbone", {"model_params": {"sharedbackbone": FAST}})
    per_query: dict[str, list[dict[str, np.ndarray]]] = {
        "shared": [],
        "mlpdecoder": [],
        "ridgedecoder": [],
    }
    for held_out in zoo["subjects"]:
        others = {s: _data(zoo, s) for s in zoo["subjects"] if s != held_out}
        data = _data(zoo, held_out)
        fitted = np.concatenate([d.stimuli_train for d in [data, *others.values()]])
        assert not set(data.test_stimuli) & set(fitted)  # test stimuli never enter fitting
        params["pretrained"] = spec.pretrain(others, params)
        result = spec.fit(data, params)
        assert result.info["n_finetune_trials"] == str(int((data.sessions_train == "01").sum()))
        true = data.features_test[0]
        for name, pred in {"shared": result.predicted, **result.extra_predictions}.items():
            assert pred.shape == true.shape
            per_query[name].append(retrieval_per_query(similarity_matrix(pred, true)))
    pooled = {
        name: {k: np.concatenate([q[k] for q in runs]) for k in ("top1", "two_way")}
        for name, runs in per_query.items()
    }
    mean = {name: {k: float(v.mean()) for k, v in p.items()} for name, p in pooled.items()}
    assert mean["shared"]["top1"] >= 8 / 16, mean  # chance 1/16
    rng = np.random.default_rng(0)
    for baseline in ("mlpdecoder", "ridgedecoder"):
        assert mean["shared"]["top1"] >= mean[baseline]["top1"] + 0.05, mean
        assert mean["shared"]["two_way"] >= mean[baseline]["two_way"] + 0.025, mean
        # paired bootstrap over the test queries: the 2-way gain is no coin flip
        gain = pooled["shared"]["two_way"] - pooled[baseline]["two_way"]
        boot = gain[rng.integers(0, len(gain), size=(2000, len(gain)))].mean(axis=1)
        assert np.percentile(boot, 2.5) > 0, (baseline, mean)


def test_mlp_decoder_is_deterministic(zoo):
    params = model_params("mlpdecoder", {"model_params": {"mlpdecoder": {"epochs": 10}}})
    data = _data(zoo, zoo["subjects"][1])
    a = get_model("mlpdecoder").fit(data, params)
    b = get_model("mlpdecoder").fit(data, params)
    np.testing.assert_array_equal(a.predicted, b.predicted)
    assert a.info["device"] in ("cpu", "cuda")


def test_pretraining_from_the_scratch_folder_gives_the_weights_of_pretraining_in_memory(
    zoo, tmp_path
):
    """The pretrain job's way (lazy data, each subject's z-scored voxels written once to a
    scratch folder and read back a mini-batch at a time) gives the weights of every
    subject's voxels held in memory, bit for bit; no subject's betas stay in memory, and
    the next held-out subject's pretraining reuses the files."""
    spec = get_model("sharedbackbone")
    params = model_params("sharedbackbone", {"model_params": {"sharedbackbone": {"epochs": 30}}})
    held_out, *rest = zoo["subjects"]
    in_memory = spec.pretrain({s: _data(zoo, s) for s in rest}, dict(params))
    lazy = {s: _data(zoo, s, lazy=True) for s in zoo["subjects"]}
    others = {s: d for s, d in lazy.items() if s != held_out}
    from_disk = spec.pretrain(others, {**params, "scratch_dir": str(tmp_path)})
    assert sorted(from_disk) == sorted(in_memory)
    for key, value in in_memory.items():
        np.testing.assert_array_equal(from_disk[key], value, err_msg=key)
    assert all(d.betas_train is None and d.betas_test is None for d in lazy.values())
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert sorted(files) == [f"sub-{s}_all.npy" for s in rest]
    for s in rest:
        rows = DiskRows(tmp_path / f"sub-{s}_all.npy")
        assert rows.shape == (lazy[s].n_train, lazy[s].n_voxels)
    # the next held-out subject: one new file, the shared one reused as written
    without_next = {s: d for s, d in lazy.items() if s != rest[0]}
    spec.pretrain(without_next, {**params, "scratch_dir": str(tmp_path)})
    assert len(list(tmp_path.iterdir())) == 3
    assert all((tmp_path / n).stat().st_mtime_ns == t for n, t in files.items())


def test_pooled_statistics_match_the_concatenated_arrays():
    """The pretraining's pooled embedding standardiser and latent ridge, accumulated one
    subject at a time, are those of the stacked arrays (standardiser, SVD ridge) to float
    rounding."""
    rng = np.random.default_rng(0)
    ys = [rng.standard_normal((n, 12)).astype(np.float32) * 3 + 1 for n in (50, 70, 40)]
    hs = [y @ rng.standard_normal((12, 6)).astype(np.float32) + 2 for y in ys]
    mean, sd = pooled_standardiser(ys)
    ref_mean, ref_sd = standardiser(np.concatenate(ys))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sd, ref_sd, rtol=1e-5)
    for alpha in (0.1, 100.0):
        coef, intercept = gram_ridge(zip(ys, hs, strict=True), alpha)
        ref_coef, ref_icpt = _ridge_solutions(np.concatenate(ys), np.concatenate(hs), [alpha])
        np.testing.assert_allclose(coef, ref_coef[0], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(intercept, ref_icpt[0], rtol=1e-6, atol=1e-8)


def test_disk_rows_read_any_rows_and_blocks(tmp_path):
    a = np.random.default_rng(1).standard_normal((300, 7)).astype(np.float32)
    rows = DiskRows.write(tmp_path / "x.npy", a)
    idx = np.array([299, 0, 5, 5, 17])
    np.testing.assert_array_equal(rows.take(idx), a[idx])
    np.testing.assert_array_equal(np.concatenate(list(rows.blocks(64))), a)
    with pytest.raises(IndexError):
        rows.take(np.array([300]))
    with pytest.raises(ValueError, match="float32"):
        DiskRows.write(tmp_path / "y.npy", a.astype(np.float64))


def test_pretrain_job_writes_every_held_out_subject_and_removes_its_scratch(
    zoo, tmp_path, monkeypatch
):
    """The pretrain job (what the rule's script calls): one weights file per held-out
    subject, pretrained on the others, and its scratch folder gone afterwards."""
    import tempfile

    from safetensors import safe_open

    from brainpipe.models.jobs import pretrain_job

    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    written = []
    write = DiskRows.write.__func__

    def recording_write(cls, path, array):
        written.append(Path(path))
        return write(cls, path, array)

    monkeypatch.setattr(DiskRows, "write", classmethod(recording_write))
    subjects = zoo["subjects"]
    out = {s: tmp_path / f"pretrained-without-{s}.safetensors" for s in subjects}
    pretrain_job(
        "sharedbackbone",
        "all",
        {s: zoo["splits"].parent / f"sub-{s}_betas.zarr" for s in subjects},
        [zoo["caption"]],
        zoo["splits"],
        out,
        config={"model_params": {"sharedbackbone": {"epochs": 5}}},
    )
    for held_out, path in out.items():
        with safe_open(str(path), "np") as f:
            others = sorted(set(subjects) - {held_out})
            assert f.metadata()["subjects"] == ",".join(others)
            assert {k.split(".")[1] for k in f.keys() if k.startswith("adapter.")} == set(others)
    # each subject's voxels written once, in the scratch folder, for the 3 pretrainings
    assert sorted(p.name for p in written) == [f"sub-{s}_all.npy" for s in subjects]
    assert all(scratch_root in p.parents for p in written)
    assert not list(scratch_root.glob("brainpipe-pretrain-*"))


#: A short shared-backbone recipe: the comparisons below need identical fits, not good ones.
SHORT = {"epochs": 20, "finetune_epochs": 4}


def _with_missing_values(zoo, s, out):
    """Subject ``s``'s betas with missing values where the fill matters: in a training
    trial of every session (the fine-tune's session 01 is filled with means over *every*
    training trial), in a whole voxel of session 02 (NSD's invalid voxels) and in a test
    trial."""
    from brainpipe.storage import open_zarr, write_zarr

    store = open_zarr(zoo["splits"].parent / f"sub-{s}_betas.zarr").load()
    data = _data(zoo, s, lazy=True)
    trials = np.flatnonzero(~np.isin(store["stimulus"].values.astype(str), data.test_stimuli))
    sessions = store["session"].values.astype(str)
    values = store["betas"].values
    # voxels of the job's ROI ("all": the union of the store's ROI masks)
    v = np.flatnonzero(np.any([store[c].values for c in store.coords if c.startswith("roi_")], 0))
    for ses in sorted(set(sessions)):
        values[trials[sessions[trials] == ses][0], v[1]] = np.nan
    values[trials[sessions[trials] == "02"], v[4]] = np.nan
    test_trial = np.flatnonzero(np.isin(store["stimulus"].values.astype(str), data.test_stimuli))
    values[test_trial[0], v[6]] = np.nan
    write_zarr(store, out)
    return out


def test_fine_tune_reads_only_its_sessions_and_fits_as_with_every_trial_loaded(
    zoo, tmp_path, monkeypatch
):
    """The fine-tune of a lazy job (what the train job gives the shared backbone) reads
    only its session's training trials from the store, never every training trial, and
    its weights, predictions (baselines included) and metadata are those of the job with
    every training trial loaded, bit for bit: the same trials in the same order, test
    responses averaged over every session, missing values filled with the means over
    every training trial."""
    import brainpipe.models.data as data_module

    spec = get_model("sharedbackbone")
    params = model_params("sharedbackbone", {"model_params": {"sharedbackbone": SHORT}})
    held_out, *rest = zoo["subjects"]
    params["pretrained"] = spec.pretrain({s: _data(zoo, s) for s in rest}, dict(params))
    read = []
    split_betas = data_module.split_betas

    def recording_split(betas, test_stimuli, train=None, *args, **kwargs):
        read.append(None if train is None else int(train.sum()))
        return split_betas(betas, test_stimuli, train, *args, **kwargs)

    monkeypatch.setattr(data_module, "split_betas", recording_split)
    missing = _with_missing_values(zoo, held_out, tmp_path / "missing.zarr")
    for betas in (zoo["splits"].parent / f"sub-{held_out}_betas.zarr", missing):
        args = (betas, [zoo["caption"]], zoo["splits"], "all", held_out)
        eager, lazy = load_job_data(*args), load_job_data(*args, lazy=True)
        session = int((lazy.sessions_train == "01").sum())
        assert 0 < session < lazy.n_train
        read.clear()
        new = spec.fit(lazy, params)
        assert read == [session] and lazy.betas_train is None  # one session's trials only
        old = spec.fit(eager, params)
        assert lazy.n_voxels_filled == eager.n_voxels_filled
        assert sorted(new.weights) == sorted(old.weights)
        for key, value in old.weights.items():
            np.testing.assert_array_equal(new.weights[key], value, err_msg=key)
        np.testing.assert_array_equal(new.predicted, old.predicted)
        assert sorted(new.extra_predictions) == ["mlpdecoder", "ridgedecoder"]
        for name, pred in old.extra_predictions.items():
            np.testing.assert_array_equal(new.extra_predictions[name], pred, err_msg=name)
        assert new.info == old.info and new.info["n_finetune_trials"] == str(session)
    assert eager.n_voxels_filled == 2  # the missing-value store: voxels 1 and 4


def test_train_job_fine_tunes_from_the_store_without_loading_every_trial(
    zoo, tmp_path, monkeypatch
):
    """The train job of the shared backbone (what the rule's script calls) leaves the
    betas in the store (never ``JobData.load``: every training trial) and writes the
    predictions of the fit with every trial loaded."""
    from safetensors.numpy import load_file

    from brainpipe.models.data import JobData
    from brainpipe.models.jobs import pretrain_job, train_job
    from brainpipe.storage import open_zarr

    config = {"model_params": {"sharedbackbone": SHORT}}
    held_out = zoo["subjects"][0]
    betas = {s: zoo["splits"].parent / f"sub-{s}_betas.zarr" for s in zoo["subjects"]}
    pretrained = tmp_path / "pretrained.safetensors"
    pretrain_job(
        "sharedbackbone", "all", betas, [zoo["caption"]], zoo["splits"],
        {held_out: pretrained}, config=config,
    )  # fmt: skip
    eager = _data(zoo, held_out)
    params = {**model_params("sharedbackbone", config), "pretrained": load_file(pretrained)}
    reference = get_model("sharedbackbone").fit(eager, params)

    def no_full_load(self):
        raise AssertionError("the fine-tune loaded every training trial")

    monkeypatch.setattr(JobData, "load", no_full_load)
    train_job(
        "sharedbackbone", held_out, "all", betas[held_out], [zoo["caption"]], zoo["splits"],
        tmp_path / "weights.safetensors", tmp_path / "predictions.zarr", config=config,
        pretrained_path=pretrained,
    )  # fmt: skip
    written = open_zarr(tmp_path / "predictions.zarr")
    np.testing.assert_array_equal(written["predicted"].values, reference.predicted)
    for name, pred in reference.extra_predictions.items():
        np.testing.assert_array_equal(written[f"predicted_{name}"].values, pred)
    assert written.attrs["n_train_trials"] == reference.info["n_train_trials"]
