"""Feature models, train-only PCA and the feature store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from PIL import Image

from brainpipe.errors import BrainpipeInputError
from brainpipe.features import (
    FEATURE_MODELS,
    get_feature_model,
    register_feature_model,
)
from brainpipe.features.caption import caption
from brainpipe.features.gabor import gabor, gabor_energy
from brainpipe.features.pca import build_feature_store, fit_pca, transform

WORDS = ["red", "blue", "green", "star", "circle", "square", "large", "small"]


def _grating(orientation: str, size: int = 64, period: float = 8.0) -> np.ndarray:
    x = np.arange(size)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * x / period)
    img = np.tile(wave, (size, 1))  # varies along x: vertical stripes
    return img if orientation == "vertical" else img.T


def _make_dataset(root: Path, n: int = 12, n_test: int = 4, seed: int = 0, test_seed=None):
    """Tiny stimuli folder + splits table; test stimuli drawn from ``test_seed``."""
    stim_dir = root / "stimuli"
    (stim_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        is_test = i >= n - n_test
        rng = np.random.default_rng((test_seed if is_test and test_seed is not None else seed, i))
        img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        name = f"images/stim-{i:04d}.png"
        Image.fromarray(img, mode="RGB").save(stim_dir / name)
        words = rng.choice(WORDS, size=3, replace=False)
        cap = "a " + " ".join(words)
        if is_test:
            cap += f" testonly{rng.integers(1000)}"
        rows.append(
            {
                "stimulus": f"stim-{i:04d}",
                "image": name,
                "caption": cap,
                "shared": int(is_test),
                "color": words[0],
            }
        )
    pd.DataFrame(rows).to_csv(stim_dir / "stimuli.tsv", sep="\t", index=False)
    splits = pd.DataFrame(
        {
            "stimulus": [r["stimulus"] for r in rows],
            "split": ["test" if i >= n - n_test else "train" for i in range(n)],
        }
    )
    splits.to_csv(root / "splits.tsv", sep="\t", index=False)
    return stim_dir / "stimuli.tsv", root / "splits.tsv"


# --- registry -------------------------------------------------------------------------


def test_registry_has_builtins_and_unknown_name_lists_known():
    assert {"gabor", "caption"} <= set(FEATURE_MODELS)
    with pytest.raises(BrainpipeInputError, match="nope.*caption.*gabor"):
        get_feature_model("nope")


def test_register_new_model():
    @register_feature_model("_test_ones", required_columns=("stimulus",))
    def ones(stimuli, stimuli_dir, train_mask):
        return np.ones((len(stimuli), 3), np.float32)

    try:
        assert get_feature_model("_test_ones") is ones
        assert ones.required_columns == ("stimulus",)
    finally:
        FEATURE_MODELS.pop("_test_ones")


# --- gabor ----------------------------------------------------------------------------


def test_gabor_energy_orientation_selectivity():
    imgs = np.stack([_grating("vertical"), _grating("horizontal")])
    e = gabor_energy(imgs, n_orientations=4, cycles_per_image=(4, 8, 16), grid=8)
    assert e.shape == (2, 3, 4, 8, 8)
    assert e.dtype == np.float32
    per_orient = e.mean(axis=(1, 3, 4))  # (image, orientation)
    assert per_orient[0].argmax() == 0  # vertical stripes -> orientation 0
    assert per_orient[1].argmax() == 2  # horizontal stripes -> orientation pi/2
    # the 8-cycle grating peaks in the 8-cycles-per-image channel
    assert e[0, :, 0].mean(axis=(1, 2)).argmax() == 1


def test_gabor_energy_is_batch_invariant():
    rng = np.random.default_rng(1)
    imgs = rng.random((5, 32, 32)).astype(np.float32)
    a = gabor_energy(imgs, grid=4, batch_size=2)
    b = np.concatenate([gabor_energy(imgs[i : i + 1], grid=4) for i in range(5)])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gabor_model_shape_dtype(tmp_path):
    stim_tsv, _ = _make_dataset(tmp_path, n=5, n_test=1)
    stim = pd.read_csv(stim_tsv, sep="\t")
    feats = gabor(stim, stim_tsv.parent, np.ones(5, bool))
    assert feats.shape == (5, 3 * 4 * 8 * 8)
    assert feats.dtype == np.float32
    assert np.all(np.isfinite(feats)) and np.all(feats >= 0)


# --- caption --------------------------------------------------------------------------


def test_caption_vocabulary_is_fitted_on_train_only():
    stim = pd.DataFrame(
        {
            "stimulus": ["a", "b", "c"],
            "caption": ["a large red star", "a small blue circle", "a purple unicorn star"],
        }
    )
    train = np.array([True, True, False])
    feats = caption(stim, Path("."), train)
    assert feats.dtype == np.float32
    # vocabulary: large red star small blue circle (single-letter "a" dropped)
    assert feats.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-6)
    # test-only words change nothing: the test row equals that of the caption "star"
    only_star = caption(
        pd.DataFrame({"caption": ["a large red star", "a small blue circle", "star"]}),
        Path("."),
        train,
    )
    np.testing.assert_array_equal(feats, only_star)


# --- PCA ------------------------------------------------------------------------------


def test_fit_pca_matches_sklearn_and_caps_components():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 6)) @ rng.standard_normal((6, 6))
    p = fit_pca(X, 3)
    ref = PCA(3).fit(X)
    np.testing.assert_allclose(np.abs(p.components), np.abs(ref.components_), atol=1e-10)
    np.testing.assert_allclose(p.explained_variance_ratio, ref.explained_variance_ratio_)
    np.testing.assert_allclose(
        np.abs(transform(p, X)), np.abs(ref.transform(X)), rtol=1e-5, atol=1e-5
    )
    assert fit_pca(X[:4], 50).n_components == 3  # n_train - 1
    assert fit_pca(X, 50).n_components == 6  # n_raw_features


# --- store ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gabor", "caption"])
def test_store_round_trip(tmp_path, model):
    stim_tsv, splits_tsv = _make_dataset(tmp_path)
    out = build_feature_store(
        model, stim_tsv, splits_tsv, tmp_path / f"{model}.zarr", 5, config={"a": 1}
    )
    ds = xr.open_zarr(out)
    assert ds["features"].dims == ("stimulus", "feature")
    assert ds["features"].shape == (12, 5)
    assert ds["features"].dtype == np.float32
    assert ds["pca_components"].dims == ("feature", "raw_feature")
    assert list(ds["split"].values).count("test") == 4
    assert ds["stimulus"].values[0] == "stim-0000"
    assert ds.attrs["feature_model"] == model
    assert ds.attrs["fitted_on"] == "train"
    assert ds.attrs["n_fit_stimuli"] == 8
    assert ds.attrs["n_components"] == 5
    assert "config_hash" in ds.attrs and "brainpipe_version" in ds.attrs
    assert ds["features"].encoding["chunks"] == (12, 5)
    # train scores are centred (PCA fitted on train)
    train = ds["features"].sel(stimulus=ds["split"] == "train").values
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)


@pytest.mark.parametrize("model", ["gabor", "caption"])
def test_changing_test_stimuli_leaves_fitted_pca_bit_identical(tmp_path, model):
    s1, sp1 = _make_dataset(tmp_path / "a", test_seed=100)
    s2, sp2 = _make_dataset(tmp_path / "b", test_seed=200)
    a = xr.open_zarr(build_feature_store(model, s1, sp1, tmp_path / "a.zarr", 5)).load()
    b = xr.open_zarr(build_feature_store(model, s2, sp2, tmp_path / "b.zarr", 5)).load()
    np.testing.assert_array_equal(a["pca_mean"].values, b["pca_mean"].values)
    np.testing.assert_array_equal(a["pca_components"].values, b["pca_components"].values)
    is_train = a["split"].values == "train"
    np.testing.assert_array_equal(a["features"].values[is_train], b["features"].values[is_train])
    # ... while the test stimuli really did change
    assert not np.array_equal(a["features"].values[~is_train], b["features"].values[~is_train])


def test_missing_column_names_file_and_column(tmp_path):
    stim_tsv, splits_tsv = _make_dataset(tmp_path)
    pd.read_csv(stim_tsv, sep="\t").drop(columns="image").to_csv(stim_tsv, sep="\t", index=False)
    with pytest.raises(BrainpipeInputError) as err:
        build_feature_store("gabor", stim_tsv, splits_tsv, tmp_path / "f.zarr", 3)
    assert err.value.field == "image" and str(stim_tsv) in str(err.value)
    assert not (tmp_path / "f.zarr").exists()

    pd.read_csv(splits_tsv, sep="\t").rename(columns={"split": "fold"}).to_csv(
        splits_tsv, sep="\t", index=False
    )
    with pytest.raises(BrainpipeInputError) as err:
        build_feature_store("caption", stim_tsv, splits_tsv, tmp_path / "f.zarr", 3)
    assert err.value.field == "split" and str(splits_tsv) in str(err.value)


def test_unknown_stimulus_in_splits_names_file_and_column(tmp_path):
    stim_tsv, splits_tsv = _make_dataset(tmp_path)
    splits = pd.read_csv(splits_tsv, sep="\t")
    splits.loc[len(splits)] = ["stim-9999", "train"]
    splits.to_csv(splits_tsv, sep="\t", index=False)
    with pytest.raises(BrainpipeInputError, match="stim-9999") as err:
        build_feature_store("caption", stim_tsv, splits_tsv, tmp_path / "f.zarr", 3)
    assert err.value.field == "stimulus" and str(splits_tsv) in str(err.value)


def test_bad_split_value_and_missing_image(tmp_path):
    stim_tsv, splits_tsv = _make_dataset(tmp_path)
    splits = pd.read_csv(splits_tsv, sep="\t")
    splits.loc[0, "split"] = "val"
    splits.to_csv(splits_tsv, sep="\t", index=False)
    with pytest.raises(BrainpipeInputError, match="'val'"):
        build_feature_store("caption", stim_tsv, splits_tsv, tmp_path / "f.zarr", 3)
    splits.loc[0, "split"] = "train"
    splits.to_csv(splits_tsv, sep="\t", index=False)
    (stim_tsv.parent / "images" / "stim-0003.png").unlink()
    with pytest.raises(BrainpipeInputError, match="stim-0003.png") as err:
        build_feature_store("gabor", stim_tsv, splits_tsv, tmp_path / "f.zarr", 3)
    assert err.value.field == "image"


def test_spatial_maps_live_on_the_feature_registry(tmp_path):
    from brainpipe.features import FEATURE_MODELS, get_spatial_map, register_spatial_map
    from brainpipe.features.spatial import gabor_spatial

    assert get_spatial_map("gabor") is gabor_spatial is FEATURE_MODELS["gabor"].spatial
    with pytest.raises(BrainpipeInputError, match=r"no spatial feature model 'caption'.*gabor"):
        get_spatial_map("caption")
    with pytest.raises(BrainpipeInputError, match="unknown feature model 'nothing'"):
        register_spatial_map("nothing")(gabor_spatial)
