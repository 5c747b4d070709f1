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


def test_nan_and_empty_voxels_become_zero():
    data = np.full((60, 3), 500.0, dtype=np.float32)
    data[5, 1] = np.nan
    data[:, 2] = 0.0
    psc, _ = clean_run(data, tr=1.6)
    assert np.isfinite(psc).all()
    assert not psc[:, 1].any() and not psc[:, 2].any()
