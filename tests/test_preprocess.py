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
