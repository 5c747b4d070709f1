"""Cross-subject alignment: solvers, estimators, the align store, and the evidence that it works.

The store-level tests use a generated synthetic dataset (3 subjects, 40 shared stimuli)
whose betas stores are written from the ground-truth single-trial amplitudes (true
response + trial noise) with the betas.zarr contract's coords and attrs: that keeps the
file fast (the GLM is tested elsewhere; the real pipeline runs align on LSA betas).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from brainpipe.align import (
    METHODS,
    PiecewiseAlignment,
    ProcrustesAlignment,
    SRMAlignment,
    _solvers,
    average_repeats,
    build_estimator,
    cross_subject_r,
    fit_alignment_store,
    get_backend,
    method_params,
)
from brainpipe.align.anatomical import trilinear_operator
from brainpipe.align.store import select_voxels
from brainpipe.datasets import synthetic
from brainpipe.errors import BrainpipeInputError
from brainpipe.metrics import pearson_r
from brainpipe.splits import make_splits, read_splits
from brainpipe.storage import open_zarr, write_zarr

SUBJECTS = ["01", "02", "03"]
ROI = ["V1", "V4", "LOC"]
PARAMS = {
    "seed": 5,
    "n_subjects": 3,
    "n_sessions": 2,
    "n_runs": 2,
    "trials_per_run": 40,
    "voxel_size_mm": 8.0,
    "n_shared": 40,
}


# --------------------------------------------------------------------------- splits


def _stimuli_tsv(tmp_path, ids, shared):
    path = tmp_path / "stimuli.tsv"
    pd.DataFrame({"stimulus": ids, "image": "x.png", "caption": "c", "shared": shared}).to_csv(
        path, sep="\t", index=False
    )
    return path


def test_shared_train_fraction_moves_a_fixed_subset_of_shared_stimuli(tmp_path):
    ids = [f"stim-{i:04d}" for i in range(1, 41)]
    shared = [1] * 20 + [0] * 20
    default = make_splits(_stimuli_tsv(tmp_path, ids, shared), tmp_path / "a.tsv")
    # Backward compatible: without the option every shared stimulus is test.
    assert (default["split"] == np.where(np.asarray(shared) == 1, "test", "train")).all()

    half = make_splits(_stimuli_tsv(tmp_path, ids, shared), tmp_path / "b.tsv", 0.5)
    is_shared = half["shared"] == 1
    assert (half.loc[~is_shared, "split"] == "train").all()
    assert (half.loc[is_shared, "split"] == "train").sum() == 10
    assert read_splits(tmp_path / "b.tsv").equals(half.set_index("stimulus")["split"])
    # Deterministic and independent of row order.
    order = np.random.default_rng(0).permutation(40)
    shuffled = make_splits(
        _stimuli_tsv(tmp_path, [ids[i] for i in order], [shared[i] for i in order]),
        tmp_path / "c.tsv",
        0.5,
    )
    assert (
        shuffled.set_index("stimulus")["split"]
        .sort_index()
        .equals(half.set_index("stimulus")["split"].sort_index())
    )
    with pytest.raises(BrainpipeInputError, match="shared_train_fraction"):
        make_splits(_stimuli_tsv(tmp_path, ids, shared), tmp_path / "d.tsv", 1.0)


# --------------------------------------------------------------------------- solvers


def _orthonormal(rng, n, k):
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


def test_scaled_procrustes_recovers_a_known_map():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 8))
    R_true = _orthonormal(rng, 8, 8)
    T = 2.5 * X @ R_true
    for name in ("numpy", "torch"):
        B = get_backend(name)
        R, a = _solvers.procrustes(B.asarray(X), B.asarray(T), B)
        np.testing.assert_allclose(B.to_numpy(R), R_true, atol=1e-10)
        assert a == pytest.approx(2.5, rel=1e-12)


def _low_rank_subjects(rng, n=40, k=5, voxels=(60, 45, 70), noise=0.0):
    S = rng.standard_normal((n, k))
    Xs, maps = [], []
    for v in voxels:
        W = _orthonormal(rng, v, k)
        maps.append(W)
        Xs.append(S @ W.T + noise * rng.standard_normal((n, v)))
    return S, Xs, maps


@pytest.mark.parametrize("cls", [ProcrustesAlignment, SRMAlignment])
def test_noise_free_subjects_land_on_one_shared_space(cls):
    rng = np.random.default_rng(1)
    _, Xs, _ = _low_rank_subjects(rng)
    # Centred only: per-voxel z-scoring would bend an exactly orthogonal relation.
    est = cls(5, standardize=False).fit(Xs)
    Z = [est.transform(X, s) for s, X in enumerate(Xs)]
    for s in (1, 2):
        np.testing.assert_allclose(Z[s], Z[0], atol=1e-3 * np.abs(Z[0]).max())
        # And back out: subject 0's responses predict subject s's exactly.
        assert pearson_r(Xs[s], est.inverse_transform(Z[0], s)).min() > 0.999


def test_numpy_and_torch_backends_agree():
    rng = np.random.default_rng(2)
    _, Xs, _ = _low_rank_subjects(rng, noise=0.3)
    for cls in (ProcrustesAlignment, SRMAlignment):
        a = cls(5, backend="numpy").fit(Xs)
        b = cls(5, backend="torch").fit(Xs)
        for Wa, Wb in zip(a.transforms_, b.transforms_, strict=True):
            np.testing.assert_allclose(Wa, Wb, atol=1e-8)


def test_ridge_loo_error_equals_explicit_refits():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((15, 40))
    T = X @ rng.standard_normal((40, 3)) + rng.standard_normal((15, 3))
    B = get_backend("numpy")
    alphas = [0.5, 5.0, 50.0]
    W, alpha, errors = _solvers.ridge_map(X, T, alphas, B)
    for a, err in zip(alphas, errors, strict=True):
        brute = 0.0
        for i in range(15):
            keep = np.arange(15) != i
            Xi = X[keep]
            Wi = Xi.T @ np.linalg.solve(Xi @ Xi.T + a * np.eye(14), T[keep])
            brute += ((X[i] @ Wi - T[i]) ** 2).sum()
        assert err == pytest.approx(brute, rel=1e-8)
    assert alpha == alphas[int(np.argmin(errors))]
    np.testing.assert_allclose(W, X.T @ np.linalg.solve(X @ X.T + alpha * np.eye(15), T))


def test_piecewise_maps_are_block_sparse_and_n_components_is_checked():
    rng = np.random.default_rng(4)
    _, Xs, _ = _low_rank_subjects(rng, noise=0.1)
    labels = [np.arange(X.shape[1]) % 3 for X in Xs]
    labels[0][:5] = -1  # unlabelled voxels are left out
    est = PiecewiseAlignment(lambda k: ProcrustesAlignment(k), labels, 4).fit(Xs)
    assert est.n_components_ == 12
    for W, lab in zip(est.transforms_, labels, strict=True):
        for v in range(W.shape[0]):
            outside = est.component_parcel_ != lab[v]
            assert not W[v, outside].any()
    assert not est.transforms_[0][:5].any()
    with pytest.raises(ValueError, match="n_components"):
        SRMAlignment(41).fit(Xs)


def test_trilinear_operator_matches_nilearn_resampling():
    from nilearn.image import resample_img

    rng = np.random.default_rng(5)
    vol = rng.standard_normal((12, 13, 14))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 2.0]
    target = np.diag([2.0, 2.0, 2.0, 1.0])
    target[:3, 3] = [-4.0, 11.0, 8.0]
    shape = (12, 12, 12)
    expected = resample_img(
        nib.Nifti1Image(vol, affine),
        target_affine=target,
        target_shape=shape,
        interpolation="linear",
        force_resample=True,
        copy_header=True,
    ).get_fdata()
    src_ijk = np.argwhere(np.ones(vol.shape, bool))
    tgt_ijk = np.argwhere(np.ones(shape, bool))
    xyz = nib.affines.apply_affine(target, tgt_ijk)
    op, covered = trilinear_operator(src_ijk, affine, xyz)
    got = op @ vol[tuple(src_ijk.T)]
    assert covered.all()
    np.testing.assert_allclose(got, expected[tuple(tgt_ijk.T)], atol=1e-6)


# --------------------------------------------------------------------------- the store


def _betas_from_truth(root, subject, out):
    """A betas.zarr (contract coords/attrs) holding the ground-truth single-trial amplitudes."""
    gt = synthetic.load_ground_truth(root, subject)
    roi = np.asarray(gt["roi"].values, dtype=object).astype(str)
    ds = xr.Dataset(
        {"betas": (("trial", "voxel"), gt["amplitude"].values.astype(np.float32))},
        coords={
            "stimulus": ("trial", gt["stimulus"].values.astype(str)),
            "session": ("trial", np.asarray([f"{s:02d}" for s in gt["session"].values])),
            "run": ("trial", np.asarray([f"{r:02d}" for r in gt["run"].values])),
            "onset": ("trial", gt["onset"].values),
            **{c: ("voxel", gt[c].values.astype(np.int32)) for c in "ijk"},
            **{c: ("voxel", gt[c].values.astype(np.float32)) for c in "xyz"},
            **{f"roi_{n}": ("voxel", roi == n) for n in synthetic.ROI_NAMES},
        },
        attrs={
            "subject": subject,
            "affine": gt.attrs["affine"],
            "volume_shape": gt.attrs["volume_shape"],
            "space": "synth",
        },
    )
    ds["betas"].encoding["chunks"] = (80, 4096)
    write_zarr(ds, out)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    base = tmp_path_factory.mktemp("align")
    root = base / "synthetic"
    synthetic.generate(root, synthetic.SyntheticParams.from_config(PARAMS))
    betas = {s: _betas_from_truth(root, s, base / f"sub-{s}" / "betas.zarr") for s in SUBJECTS}
    make_splits(root / "stimuli" / "stimuli.tsv", base / "splits.tsv", 0.5)
    return {"root": root, "base": base, "betas": betas, "splits": base / "splits.tsv"}


def _params(method, **extra):
    return method_params(method, {"n_components": 10, "roi": ROI, "n_parcels": 4, **extra})


@pytest.fixture(scope="module")
def stores(dataset):
    out = {}
    for method in ("anatomical", "procrustes", "srm"):
        out[method] = fit_alignment_store(
            dataset["betas"],
            dataset["splits"],
            dataset["base"] / "align" / f"{method}.zarr",
            method,
            _params(method),
        )
    return out


def test_store_layout_and_fitted_stimuli(dataset, stores):
    splits = read_splits(dataset["splits"])
    stimuli = pd.read_csv(dataset["root"] / "stimuli" / "stimuli.tsv", sep="\t")
    shared = set(stimuli.loc[stimuli["shared"] == 1, "stimulus"])
    expected = sorted(s for s in shared if splits[s] == "train")
    assert len(expected) == 20
    for method in stores:
        ds = open_zarr(dataset["base"] / "align" / f"{method}.zarr")
        assert ds.attrs["method"] == method and ds.attrs["fit_stimuli"] == expected
        assert json.loads(ds.attrs["params"])["roi"] == ROI
        assert ds["responses"].dims == ("subject", "trial", "component")
        assert ds["template"].dims == ("fit_stimulus", "component")
        assert list(ds["subject"].values) == SUBJECTS
        for si, s in enumerate(SUBJECTS):
            betas = open_zarr(dataset["betas"][s]).load()
            vox = select_voxels(betas, ROI, "test")
            np.testing.assert_array_equal(ds[f"voxel_sub-{s}"].values, vox)
            np.testing.assert_array_equal(ds["stimulus"].values[si], betas["stimulus"].values)
            np.testing.assert_array_equal(ds["session"].values[si], betas["session"].values)
            if method == "anatomical":
                continue
            W = ds[f"transform_sub-{s}"].values
            assert W.shape == (len(vox), ds.sizes["component"])
            z = (betas["betas"].values[:, vox] - ds[f"mean_sub-{s}"].values) / ds[
                f"scale_sub-{s}"
            ].values
            np.testing.assert_allclose(ds["responses"].values[si], z @ W, rtol=1e-4, atol=1e-4)
    assert stores["procrustes"].sizes["component"] == 10
    assert stores["anatomical"]["component_x"].dims == ("component",)


def _test_block(dataset):
    """Per subject: ROI voxels, fitting and test shared stimuli averaged over repeats."""
    splits = read_splits(dataset["splits"])
    out = []
    for s in SUBJECTS:
        b = open_zarr(dataset["betas"][s]).load()
        vox = select_voxels(b, ROI, "test")
        stim = b["stimulus"].values
        out.append((b, vox, stim))
    common = set.intersection(*(set(st) for _, _, st in out))
    fit = sorted(x for x in common if splits[x] == "train")
    test = sorted(x for x in common if splits[x] == "test")
    X_fit = [average_repeats(b["betas"].values[:, v], st, fit) for b, v, st in out]
    X_test = [average_repeats(b["betas"].values[:, v], st, test) for b, v, st in out]
    geometry = []
    for b, v, _ in out:
        ijk = np.stack([b[c].values[v] for c in "ijk"], axis=1)
        aff = np.asarray(b.attrs["affine"])
        geometry.append({"ijk": ijk, "affine": aff, "xyz": ijk @ aff[:3, :3].T + aff[:3, 3]})
    return X_fit, X_test, geometry, out


def test_functional_alignment_beats_anatomical_across_subjects(dataset):
    X_fit, X_test, geometry, _ = _test_block(dataset)
    scores = {}
    for method in ("anatomical", "procrustes", "srm", "ridge", "piecewise_procrustes"):
        est = build_estimator(method, _params(method), SUBJECTS, geometry).fit(X_fit)
        pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
        scores[method] = np.mean(
            [cross_subject_r(est, X_test[a], a, X_test[b], b).mean() for a, b in pairs]
        )
    # Subjects share a template-space topography (synthetic tuning_shared, default 0.8)
    # with their own deviations: anatomy carries some signal (-0.01 with independent maps),
    # functional alignment much more.
    assert scores["anatomical"] > 0.06, scores
    for method in ("procrustes", "srm", "ridge", "piecewise_procrustes"):
        assert scores[method] > 0.3 and scores[method] > scores["anatomical"] + 0.25, scores


def test_recovered_maps_explain_the_true_subject_maps(dataset):
    """M_s W_s (true mapping times fitted transform) must agree across subjects,
    and the shared space must carry the true shared responses from one subject to another."""
    from sklearn.linear_model import RidgeCV

    X_fit, _, geometry, subj = _test_block(dataset)
    truth = [synthetic.load_ground_truth(dataset["root"], s) for s in SUBJECTS]
    shared = open_zarr(
        dataset["root"] / "derivatives" / "groundtruth" / "shared_responses.zarr"
    ).load()
    response = shared["response"].to_pandas()
    splits = read_splits(dataset["splits"])
    rng = np.random.default_rng(0)
    for method in ("procrustes", "srm"):
        est = build_estimator(method, _params(method), SUBJECTS, geometry).fit(X_fit)
        effective, random = [], []
        for si, ((_, vox, _), gt) in enumerate(zip(subj, truth, strict=True)):
            M = gt["mapping"].values[:, vox]
            effective.append((M @ (est.transforms_[si] / est.scales_[si][:, None])).ravel())
            random.append((M @ _orthonormal(rng, len(vox), 10)).ravel())
        agree = np.mean(
            [np.corrcoef(effective[a], effective[b])[0, 1] for a, b in ((0, 1), (0, 2), (1, 2))]
        )
        chance = np.mean(
            [abs(np.corrcoef(random[a], random[b])[0, 1]) for a, b in ((0, 1), (0, 2), (1, 2))]
        )
        assert agree > 0.4 and agree > chance + 0.3, (method, agree, chance)

        # True shared responses decoded from subject A's shared space, applied to subject B.
        r = []
        for a in range(3):
            b_a, vox_a, st_a = subj[a]
            za = est.transform(b_a["betas"].values[:, vox_a], a)
            train = splits.reindex(st_a).to_numpy() == "train"
            reg = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(
                za[train], response.loc[st_a].values[train]
            )
            for b in range(3):
                if b == a:
                    continue
                b_b, vox_b, st_b = subj[b]
                test = splits.reindex(st_b).to_numpy() == "test"
                zb = est.transform(b_b["betas"].values[:, vox_b][test], b)
                r.append(pearson_r(response.loc[st_b[test]].values, reg.predict(zb)).mean())
        assert np.mean(r) > 0.35, (method, np.mean(r))


def test_changing_test_betas_leaves_every_transform_bit_identical(dataset, stores, tmp_path):
    splits = read_splits(dataset["splits"])
    tampered = dict(dataset["betas"])
    for s in SUBJECTS:
        ds = open_zarr(dataset["betas"][s]).load()
        is_test = splits.reindex(ds["stimulus"].values).to_numpy() == "test"
        assert 0 < is_test.sum() < len(is_test)
        ds["betas"][is_test] = -3.0 * ds["betas"][is_test] + 7.0
        tampered[s] = write_zarr(ds, tmp_path / f"sub-{s}.zarr")
    for method in ("anatomical", "procrustes", "srm", "ridge", "piecewise_srm"):
        a = stores.get(method)
        if a is None:
            a = fit_alignment_store(
                dataset["betas"],
                dataset["splits"],
                tmp_path / f"a-{method}.zarr",
                method,
                _params(method),
            )
        b = fit_alignment_store(
            tampered, dataset["splits"], tmp_path / f"b-{method}.zarr", method, _params(method)
        )
        fitted = [n for n in a.data_vars if n != "responses"]
        assert any(n.startswith("transform") for n in fitted)
        for name in fitted:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
        assert a.attrs["fit_stimuli"] == b.attrs["fit_stimuli"]
        # The tampering did reach the test trials' shared-space responses.
        test_trials = a["split"].values == "test"
        assert not np.allclose(
            a["responses"].values[test_trials], b["responses"].values[test_trials]
        )


def _shared_response_features(dataset, out, scramble_test=False):
    """A features store (contract: ``features(stimulus, feature)``) holding the world's true
    shared responses: what a decoder in the aligned space should recover."""
    shared = open_zarr(dataset["root"] / "derivatives" / "groundtruth" / "shared_responses.zarr")
    response = shared["response"].to_pandas()
    values = response.to_numpy(np.float32).copy()
    if scramble_test:  # what the test stimuli's features say must not change any fit
        splits = read_splits(dataset["splits"]).reindex(response.index).to_numpy()
        rng = np.random.default_rng(1)
        values[splits == "test"] = rng.standard_normal(values[splits == "test"].shape)
    ds = xr.Dataset(
        {"features": (("stimulus", "feature"), values)},
        coords={"stimulus": response.index.astype(str).to_numpy()},
        attrs={"feature_model": "shared"},
    )
    return write_zarr(ds, out)


def test_decoders_in_an_aligned_space_decode_other_subjects(dataset, stores, tmp_path):
    from brainpipe.align.decoding import aligned_decoding_scores, write_aligned_decoding_scores

    features = _shared_response_features(dataset, tmp_path / "shared.zarr")
    paths = [dataset["base"] / "align" / f"{m}.zarr" for m in ("anatomical", "procrustes", "srm")]
    table = write_aligned_decoding_scores(paths, [features], tmp_path / "decoding.tsv")
    assert list(table.columns) == list(pd.read_csv(tmp_path / "decoding.tsv", sep="\t").columns)
    # 3 methods x 3 sources x 3 targets, one row each
    assert len(table) == 27 and table.groupby("relation").size().to_dict() == {
        "cross": 18,
        "within": 9,
    }
    n_test = table["n_test_stimuli"].iloc[0]
    assert n_test >= 10 and np.allclose(table["top1_chance"], 1 / table["n_test_stimuli"])
    mean = table.groupby(["method", "relation"])[["top1", "two_way"]].mean()
    anatomical_cross = mean.loc[("anatomical", "cross"), "two_way"]
    for method in ("procrustes", "srm"):
        cross, within = mean.loc[(method, "cross")], mean.loc[(method, "within")]
        # fit on one subject's shared space, decode another's: far above chance, and above
        # anatomical alignment (subjects share a template topography only in part)
        assert cross["two_way"] > 0.8 and cross["top1"] > 5 / n_test, mean
        assert cross["two_way"] > anatomical_cross + 0.1, mean
        assert within["two_way"] >= cross["two_way"] - 0.05, mean

    assert set(table["model"]) == {"ridgedecoder"}  # the registry's, by default
    assert table["fit_info"].str.contains("median_alpha=").all()

    # The test stimuli's features reach only the scoring: scrambling them leaves every fitted
    # decoder (its penalties) as it was and takes identification down to chance.
    scrambled = _shared_response_features(dataset, tmp_path / "scrambled.zarr", scramble_test=True)
    other = aligned_decoding_scores(paths[2], scrambled)
    same = aligned_decoding_scores(paths[2], features)
    np.testing.assert_array_equal(other["fit_info"].values, same["fit_info"].values)
    assert other["two_way"].mean() < 0.65 < same["two_way"].mean(), (other, same)


def test_a_registered_mlp_decoder_runs_in_an_aligned_space(dataset, stores, tmp_path):
    """align.decoding_models picks any one-subject registry decoder: the MLP decoder, fitted
    through the registry's own fit function, decodes other subjects above chance."""
    from brainpipe.align.decoding import aligned_decoding_scores
    from brainpipe.models import model_params

    features = _shared_response_features(dataset, tmp_path / "shared.zarr")
    params = model_params(
        "mlpdecoder",
        {"model_params": {"mlpdecoder": {"epochs": 30, "hidden": 32, "max_steps": 200}}},
    )
    path = dataset["base"] / "align" / "procrustes.zarr"
    table = aligned_decoding_scores(path, features, {"mlpdecoder": params})
    assert set(table["model"]) == {"mlpdecoder"} and len(table) == 9
    assert table["fit_info"].str.contains("final_train_loss=").all()
    cross = table[table["relation"] == "cross"]
    assert cross["two_way"].mean() > 0.7, cross
    assert cross["top1"].mean() > 3 * cross["top1_chance"].mean(), cross


def test_aligned_decoding_models_are_checked_against_the_registry():
    from brainpipe.align.decoding import check_decoding_models
    from brainpipe.errors import BrainpipeInputError

    assert check_decoding_models({}) == ["ridgedecoder"]
    assert check_decoding_models({"align": {"decoding_models": ["mlpdecoder"]}}) == ["mlpdecoder"]
    for bad in ("nosuchdecoder", "ridge", "sharedbackbone"):
        with pytest.raises(BrainpipeInputError, match=rf"align\.decoding_models\.1.*'{bad}'"):
            check_decoding_models({"align": {"decoding_models": ["ridgedecoder", bad]}})


def test_subjects_with_fewer_trials_are_padded(dataset, tmp_path):
    short = dict(dataset["betas"])
    ds = open_zarr(dataset["betas"]["03"]).load().isel(trial=slice(0, 80))
    short["03"] = write_zarr(ds, tmp_path / "short.zarr")
    out = fit_alignment_store(
        short, dataset["splits"], tmp_path / "srm.zarr", "srm", _params("srm")
    )
    assert out.sizes["trial"] == 160
    assert out["valid"].values[2].sum() == 80 and out["valid"].values[:2].all()
    assert np.isnan(out["responses"].values[2, 80:]).all()
    assert np.isfinite(out["responses"].values[2, :80]).all()
    assert (out["stimulus"].values[2, 80:] == "").all()


def test_bad_inputs_name_the_file_and_field(dataset, tmp_path):
    make_splits(dataset["root"] / "stimuli" / "stimuli.tsv", tmp_path / "splits.tsv")
    with pytest.raises(BrainpipeInputError, match="shared_train_fraction"):
        fit_alignment_store(
            dataset["betas"], tmp_path / "splits.tsv", tmp_path / "x.zarr", "srm", _params("srm")
        )
    with pytest.raises(BrainpipeInputError, match="roi_FFA"):
        fit_alignment_store(
            dataset["betas"],
            dataset["splits"],
            tmp_path / "y.zarr",
            "srm",
            _params("srm", roi=["FFA"]),
        )
    with pytest.raises(BrainpipeInputError, match="align.methods"):
        method_params("hyperbolic", {})
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()
    assert set(METHODS) >= {"anatomical", "procrustes", "srm", "ridge"}


# --------------------------------------------------------------------------- fsaverage surface

N_VERT = 150  # vertices per hemisphere of the toy "fsaverage"
SURF_STIMULI = [f"nsd-{i:05d}" for i in range(1, 61)]  # 40 train, 20 test, all shared


def _surface_store(out, subject, hemi, vertex, betas, stim, surface="fsaverage"):
    """A betas.zarr shaped like :mod:`brainpipe.datasets.nsd_surface` writes it."""
    n = len(stim)
    ds = xr.Dataset(
        {"betas": (("trial", "voxel"), betas.astype(np.float32))},
        coords={
            "stimulus": ("trial", np.asarray(stim, dtype=str)),
            "session": ("trial", np.repeat(["01", "02"], n // 2)),
            "run": ("trial", np.tile(["01", "02"], n // 2)),
            "onset": ("trial", np.arange(n) * 4.0),
            "hemi": ("voxel", np.asarray(hemi, dtype=str)),
            "vertex": ("voxel", np.asarray(vertex, dtype=np.int32)),
            "roi_nsdgeneral": ("voxel", np.ones(len(vertex), bool)),
        },
        attrs={
            "subject": subject,
            "space": f"nsd-{surface}",
            "surface": surface,
            "n_vertices": {"lh": N_VERT, "rh": N_VERT},
            "units": "percent signal change",
        },
    )
    ds["betas"].encoding["chunks"] = (n // 2, 128)
    return write_zarr(ds, out)


def _surface_layout(rng):
    """Per subject: (hemi, vertex) of its voxels. Subject 01 has every vertex in the
    ingest order (lh then rh); 02 and 03 miss some vertices and 03 lists its voxels in a
    scrambled order, so matching by position would pair the wrong vertices."""
    all_hemi = np.repeat(["lh", "rh"], N_VERT)
    all_vertex = np.tile(np.arange(N_VERT), 2)
    layout = {"01": np.arange(2 * N_VERT)}
    layout["02"] = np.sort(rng.choice(2 * N_VERT, 2 * N_VERT - 25, replace=False))
    layout["03"] = rng.permutation(rng.choice(2 * N_VERT, 2 * N_VERT - 20, replace=False))
    return {s: (all_hemi[g], all_vertex[g], g) for s, g in layout.items()}


def _surface_trials(rng):
    stim = np.repeat(SURF_STIMULI, 2)  # every stimulus twice
    return stim[rng.permutation(len(stim))]


@pytest.fixture(scope="module")
def surface_data(tmp_path_factory):
    """Two fsaverage-style datasets on the same layout.

    ``vertexwise``: every vertex carries the same response in every subject (its own
    random profile over stimuli) plus trial noise: anatomy is all one needs.
    ``rotated``: a 5-dimensional shared response reaches each subject's vertices through
    an independent random map: the same vertex means nothing across subjects, only a
    functional alignment can find the shared space.
    """
    base = tmp_path_factory.mktemp("surface")
    rng = np.random.default_rng(11)
    layout = _surface_layout(rng)
    pd.DataFrame({"stimulus": SURF_STIMULI, "split": ["train"] * 40 + ["test"] * 20}).to_csv(
        base / "splits.tsv", sep="\t", index=False
    )
    profile = pd.DataFrame(rng.standard_normal((60, 2 * N_VERT)), index=SURF_STIMULI)
    shared = pd.DataFrame(rng.standard_normal((60, 5)), index=SURF_STIMULI)
    out = {"base": base, "splits": base / "splits.tsv", "layout": layout}
    for kind in ("vertexwise", "rotated"):
        out[kind] = {}
        for s, (hemi, vertex, g) in layout.items():
            stim = _surface_trials(rng)
            if kind == "vertexwise":
                signal = profile.loc[stim].values[:, g]
            else:
                signal = shared.loc[stim].values @ rng.standard_normal((5, len(g)))
            betas = signal + 0.5 * rng.standard_normal(signal.shape)
            out[kind][s] = _surface_store(
                base / kind / f"sub-{s}" / "betas.zarr", s, hemi, vertex, betas, stim
            )
    return out


def _surface_params(method, **extra):
    return method_params(method, {"n_components": 5, "roi": "nsdgeneral", **extra})


def _test_agreement(ds):
    """Mean over subject pairs and components of the Pearson r, across the test stimuli
    (averaged over repeats), between two subjects' shared-space responses."""
    test = SURF_STIMULI[40:]
    Z = []
    for si in range(ds.sizes["subject"]):
        Z.append(average_repeats(ds["responses"].values[si], ds["stimulus"].values[si], test))
    pairs = [(a, b) for a in range(len(Z)) for b in range(a + 1, len(Z))]
    return float(np.mean([pearson_r(Z[a], Z[b]).mean() for a, b in pairs]))


def test_match_vertices_finds_the_shared_vertices_in_any_order():
    from brainpipe.align.anatomical import match_vertices

    rng = np.random.default_rng(3)
    layout = _surface_layout(rng)
    hemis = [layout[s][0] for s in ("01", "02", "03")]
    vertices = [layout[s][1] for s in ("01", "02", "03")]
    hemi, vertex, index = match_vertices(hemis, vertices)
    expected = sorted(
        set.intersection(
            *(set(zip(h, v.tolist(), strict=True)) for h, v in zip(hemis, vertices, strict=True))
        )
    )
    assert list(zip(hemi.tolist(), vertex.tolist(), strict=True)) == expected
    assert 2 * N_VERT - 45 <= len(expected) < 2 * N_VERT - 25
    for h, v, idx in zip(hemis, vertices, index, strict=True):
        np.testing.assert_array_equal(h[idx], hemi)
        np.testing.assert_array_equal(v[idx], vertex)
    with pytest.raises(ValueError, match="twice"):
        match_vertices(
            [np.array(["lh", "lh"]), np.array(["lh"])], [np.array([3, 3]), np.array([3])]
        )


def test_anatomical_on_fsaverage_matches_vertices(surface_data):
    betas = surface_data["vertexwise"]
    ds = fit_alignment_store(
        betas,
        surface_data["splits"],
        surface_data["base"] / "align-vertexwise" / "anatomical.zarr",
        "anatomical",
        _surface_params("anatomical"),
    )
    assert ds.attrs["betas_geometry"] == "surface" and ds.attrs["surface"] == "fsaverage"
    assert ds.attrs["betas_space"] == "nsd-fsaverage"
    # The shared space is the vertices every subject has, lh then rh, by vertex.
    layout = surface_data["layout"]
    common = sorted(set.intersection(*(set(g.tolist()) for _, _, g in layout.values())))
    hemi = np.where(np.asarray(common) < N_VERT, "lh", "rh")
    np.testing.assert_array_equal(ds["component_hemi"].values.astype(str), hemi)
    np.testing.assert_array_equal(ds["component_vertex"].values, np.asarray(common) % N_VERT)
    assert ds["component"].values[0] == f"lh{common[0]:06d}"
    for si, s in enumerate(SUBJECTS):
        src = open_zarr(betas[s]).load()
        # The stored map is a selection: component c reads the voxel on the same vertex.
        rows = ds[f"transform_row_sub-{s}"].values
        cols = ds[f"transform_col_sub-{s}"].values
        assert len(cols) == ds.sizes["component"] and (ds[f"transform_weight_sub-{s}"] == 1).all()
        order = np.argsort(cols)
        np.testing.assert_array_equal(src["hemi"].values[rows[order]], hemi)
        np.testing.assert_array_equal(
            src["vertex"].values[rows[order]], np.asarray(common) % N_VERT
        )
        # Responses are the standardised betas of those voxels.
        z = (src["betas"].values - ds[f"mean_sub-{s}"].values) / ds[f"scale_sub-{s}"].values
        np.testing.assert_allclose(
            ds["responses"].values[si], z[:, rows[order]], rtol=1e-5, atol=1e-5
        )
    # The signal a vertex carries in every subject lines up across subjects.
    assert _test_agreement(ds) > 0.8


@pytest.fixture(scope="module")
def rotated_stores(surface_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("align-rotated")
    labels = np.repeat(np.arange(1, 4), N_VERT // 3)  # three parcels per hemisphere
    for h in ("lh", "rh"):
        nib.save(
            nib.MGHImage(labels.reshape(-1, 1, 1).astype(np.int32), np.eye(4)),
            base / f"{h}.toy_parcels.mgz",
        )
    atlas = str(base / "{hemi}.toy_parcels.mgz")
    out = {}
    for method in ("anatomical", "procrustes", "srm", "ridge", "piecewise_procrustes"):
        out[method] = fit_alignment_store(
            surface_data["rotated"],
            surface_data["splits"],
            base / f"{method}.zarr",
            method,
            _surface_params(method, atlas=atlas),
        )
    return out


def test_functional_alignment_beats_anatomical_on_fsaverage(rotated_stores):
    scores = {m: _test_agreement(ds) for m, ds in rotated_stores.items()}
    # Each subject's vertices mix the shared response independently: the same vertex
    # carries unrelated signals, so matching vertices yields nothing.
    assert abs(scores["anatomical"]) < 0.1, scores
    for method in ("procrustes", "srm", "ridge", "piecewise_procrustes"):
        assert scores[method] > 0.6 and scores[method] > scores["anatomical"] + 0.5, scores
    for method in ("procrustes", "srm", "ridge"):
        assert rotated_stores[method].sizes["component"] == 5
    piecewise = rotated_stores["piecewise_procrustes"]
    assert piecewise.attrs["n_parcels"] == 6  # labels 1..3 in each hemisphere, kept apart


def test_piecewise_on_fsaverage_needs_a_surface_atlas(surface_data, tmp_path):
    betas = surface_data["rotated"]
    with pytest.raises(BrainpipeInputError, match="align.atlas") as err:
        fit_alignment_store(
            betas,
            surface_data["splits"],
            tmp_path / "a.zarr",
            "piecewise_srm",
            _surface_params("piecewise_srm"),
        )
    assert err.value.field == "space" and err.value.source == str(betas["01"])
    assert "{hemi}" in str(err.value)
    with pytest.raises(BrainpipeInputError, match="hemi") as err:
        fit_alignment_store(
            betas,
            surface_data["splits"],
            tmp_path / "b.zarr",
            "piecewise_srm",
            _surface_params("piecewise_srm", atlas=str(tmp_path / "atlas.nii.gz")),
        )
    assert err.value.field == "align.atlas"
    short = tmp_path / "{hemi}.short.mgz"
    for h in ("lh", "rh"):
        labels = np.ones((N_VERT // 2, 1, 1), np.int32)
        nib.save(nib.MGHImage(labels, np.eye(4)), str(short).replace("{hemi}", h))
    with pytest.raises(BrainpipeInputError, match="same template surface") as err:
        fit_alignment_store(
            betas,
            surface_data["splits"],
            tmp_path / "c.zarr",
            "piecewise_srm",
            _surface_params("piecewise_srm", atlas=str(short)),
        )
    assert err.value.source == str(short).replace("{hemi}", "lh")
    assert not any((tmp_path / f"{x}.zarr").exists() for x in "abc")


def _volume_store(out, stim, rng):
    ijk = np.argwhere(np.ones((4, 4, 4), bool))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ds = xr.Dataset(
        {"betas": (("trial", "voxel"), rng.standard_normal((len(stim), len(ijk))))},
        coords={
            "stimulus": ("trial", np.asarray(stim, dtype=str)),
            "session": ("trial", np.full(len(stim), "01")),
            "run": ("trial", np.full(len(stim), "01")),
            "onset": ("trial", np.arange(len(stim)) * 4.0),
            **{c: ("voxel", ijk[:, a].astype(np.int32)) for a, c in enumerate("ijk")},
            **{c: ("voxel", 2.0 * ijk[:, a]) for a, c in enumerate("xyz")},
            "roi_nsdgeneral": ("voxel", np.ones(len(ijk), bool)),
        },
        attrs={"subject": "03", "space": "nsd-func1pt8mm", "affine": affine.tolist()},
    )
    return write_zarr(ds, out)


@pytest.mark.parametrize("method", ["anatomical", "srm"])
def test_mixing_surface_and_volume_betas_is_refused(surface_data, tmp_path, method):
    rng = np.random.default_rng(0)
    mixed = dict(surface_data["rotated"])
    mixed["03"] = _volume_store(tmp_path / "volume.zarr", _surface_trials(rng), rng)
    with pytest.raises(BrainpipeInputError, match="space") as err:
        fit_alignment_store(
            mixed, surface_data["splits"], tmp_path / "x.zarr", method, _surface_params(method)
        )
    assert err.value.field == "space" and err.value.source == str(mixed["03"])
    assert "nsd-func1pt8mm" in str(err.value) and "nsd-fsaverage" in str(err.value)
    assert str(mixed["01"]) in str(err.value)
    # The other way round names the surface store.
    flipped = {"03": mixed["03"], "01": mixed["01"], "02": mixed["02"]}
    with pytest.raises(BrainpipeInputError, match="surface store") as err:
        fit_alignment_store(
            flipped, surface_data["splits"], tmp_path / "y.zarr", method, _surface_params(method)
        )
    assert err.value.field == "space" and err.value.source == str(mixed["01"])
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_different_surfaces_are_refused(surface_data, tmp_path):
    rng = np.random.default_rng(1)
    other = dict(surface_data["vertexwise"])
    hemi, vertex, _ = surface_data["layout"]["03"]
    stim = _surface_trials(rng)
    other["03"] = _surface_store(
        tmp_path / "f6.zarr",
        "03",
        hemi,
        vertex,
        rng.standard_normal((len(stim), len(vertex))),
        stim,
        surface="fsaverage6",
    )
    with pytest.raises(BrainpipeInputError, match="fsaverage6") as err:
        fit_alignment_store(
            other,
            surface_data["splits"],
            tmp_path / "x.zarr",
            "anatomical",
            _surface_params("anatomical"),
        )
    assert err.value.field == "surface" and err.value.source == str(other["03"])
