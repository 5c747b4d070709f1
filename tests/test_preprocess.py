"""Preprocessing: our vectorised cleaning equals nilearn's and yields % signal change."""

import warnings

import numpy as np
from nilearn import signal

from brainpipe.preprocess import clean_run


def test_clean_run_matches_nilearn_clean_in_percent_signal_change():
    rng = np.random.default_rng(0)
    n_scans, n_voxels = 130, 300
    baseline = rng.uniform(500, 1500, n_voxels)
    drift = np.linspace(0, 30, n_scans)[:, None]
    data = (baseline + rng.normal(0, 10, (n_scans, n_voxels)) + drift).astype(np.float32)
    psc, mean = clean_run(data, tr=1.6, detrend=True, high_pass_hz=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = signal.clean(data, detrend=True, standardize=False, high_pass=0.01, t_r=1.6)
    np.testing.assert_allclose(psc, 100 * reference / data.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-6)
    assert psc.dtype == np.float32 and abs(psc.mean()) < 0.01


def test_a_one_percent_step_reads_as_one_percent():
    data = np.full((100, 2), 800.0, dtype=np.float32)
    data[50:, 0] *= 1.01
    psc, _ = clean_run(data, tr=1.6, detrend=False, high_pass_hz=None)
    assert abs(np.ptp(psc[:, 0]) - 1.0) < 0.01


def test_non_finite_volumes_are_censored_never_zeroed():
    """Input policy (docs/input-policy.md): a volume with a NaN is censored, not set to 0."""
    rng = np.random.default_rng(1)
    data = (500 + rng.normal(0, 5, (60, 3))).astype(np.float32)
    clean, _ = clean_run(data, tr=1.6)
    data[5, 1] = np.nan
    data[9] = np.inf
    psc, mean = clean_run(data, tr=1.6)
    assert np.isnan(psc[[5, 9]]).all()  # both volumes censored in every voxel
    kept = np.setdiff1d(np.arange(60), [5, 9])
    assert np.isfinite(psc[kept]).all()
    # the voxels keep their signal (no voxel is zeroed for one bad sample)
    assert np.corrcoef(psc[kept, 1], clean[kept, 1])[0, 1] > 0.9
    np.testing.assert_allclose(mean, data[kept].mean(axis=0), rtol=1e-5)


def test_a_voxel_without_positive_mean_is_nan_not_zero():
    data = np.full((60, 2), 500.0, dtype=np.float32)
    data[:, 1] = 0.0
    psc, _ = clean_run(data, tr=1.6)
    assert np.isnan(psc[:, 1]).all() and np.isfinite(psc[:, 0]).all()


def test_every_volume_censored_is_an_error():
    data = np.full((20, 2), np.nan, dtype=np.float32)
    try:
        clean_run(data, tr=1.6)
    except ValueError as err:
        assert "every one of the 20 volumes is censored" in str(err)
    else:
        raise AssertionError("no error")


def test_nan_volumes_and_a_dead_voxel_through_preprocess_and_betas(tiny_dataset, tmp_path):
    """Issue 20's first case: two NaN volumes in one run no longer zero the subject's voxels.

    The volumes are censored (NaN in preproc.zarr, flagged, left out of both betas
    estimators), the dead voxel is dropped and recorded, and the betas stay close to
    those of the undamaged data.
    """
    import shutil

    import nibabel as nib

    from brainpipe.betas import estimate_betas
    from brainpipe.bids import BidsLayout, run_keys
    from brainpipe.preprocess import preprocess_subject
    from brainpipe.storage import open_zarr
    from brainpipe.validation import validate_subject

    root = tmp_path / "synthetic"
    shutil.copytree(tiny_dataset, root)
    layout = BidsLayout(root)
    runs = run_keys("01", ["01", "02"], ["01", "02"])
    clean = tmp_path / "clean"
    preprocess_subject(layout, "01", runs, clean / "preproc.zarr")
    for method in ("lsa", "glmsingle"):
        config = {"betas": {"method": method, "types": ["A", "B"]}}
        estimate_betas(clean / "preproc.zarr", layout, "01", runs, clean / f"{method}.zarr",
                       config=config)  # fmt: skip
    path = layout.bold(runs[0])
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(layout.brain_mask("01")).dataobj) > 0
    data[..., [20, 21]] = np.nan
    dead_ijk = tuple(np.argwhere(mask)[5])
    data[dead_ijk] = 0.0
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.header.set_data_dtype(np.float32)
    nib.save(out, path)

    manifest = validate_subject(root, "01", ["01", "02"], ["01", "02"], tr=1.6)
    assert manifest["runs"][0]["censored_scans"] == [20, 21]
    assert manifest["dead_voxels"] == [5]
    damaged = tmp_path / "damaged"
    preprocess_subject(layout, "01", runs, damaged / "preproc.zarr", manifest=manifest)
    pre = open_zarr(damaged / "preproc.zarr")
    assert pre.attrs["n_censored_volumes"] == 2 and pre.attrs["n_dropped_voxels"] == 1
    assert pre.attrs["dropped_voxels_ijk"] == [list(map(int, dead_ijk))]
    assert pre.sizes["voxel"] == int(mask.sum()) - 1
    censored = pre["censored"].values
    assert np.flatnonzero(censored).tolist() == [20, 21]
    bold = pre["bold"].values
    assert np.isnan(bold[censored]).all() and np.isfinite(bold[~censored]).all()
    assert (np.abs(bold[~censored]).max(axis=0) > 0).all()  # no voxel zeroed
    for method in ("lsa", "glmsingle"):
        config = {"betas": {"method": method, "types": ["A", "B"]}}
        estimate_betas(damaged / "preproc.zarr", layout, "01", runs,
                       damaged / f"{method}.zarr", config=config)  # fmt: skip
        got = open_zarr(damaged / f"{method}.zarr")
        ref = open_zarr(clean / f"{method}.zarr")
        kept = ~((ref["i"] == dead_ijk[0]) & (ref["j"] == dead_ijk[1]) & (ref["k"] == dead_ijk[2]))
        b, r = got["betas"].values, ref["betas"].values[:, kept.values]
        assert np.isfinite(b).all() and b.shape == r.shape
        first = (got["session"] == "01").values & (got["run"] == "01").values
        # the damaged run's betas stay close to the clean ones
        assert np.corrcoef(b[first].ravel(), r[first].ravel())[0, 1] > 0.9, method
        other = (got["session"] == "02").values
        if method == "lsa":  # runs are fitted one by one: the other runs are unchanged
            np.testing.assert_allclose(b[other], r[other], rtol=1e-3, atol=1e-3)
        else:  # GLMsingle chooses each voxel's HRF from every run: nearly unchanged
            assert np.corrcoef(b[other].ravel(), r[other].ravel())[0, 1] > 0.95
