"""LSA single-trial betas: the design at a fine grid and the vectorised solver."""

import numpy as np
import pytest
from nilearn.glm.first_level import compute_regressor

from brainpipe.betas import fit_lsa, lsa_design, zscore_by_session
from brainpipe.design import trial_regressors
from brainpipe.hrf import canonical_hrf

TR = 1.6


def _nsd_like_onsets(n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """4 s slots (3 s image, 1 s gap) with some blanks: half the onsets are off the TR grid."""
    slots = np.sort(rng.choice(int(n_trials * 1.2), n_trials, replace=False))
    return 4.0 + 4.0 * slots


@pytest.mark.parametrize("onset", [8.0, 8.4, 9.3, 10.0])
def test_regressor_matches_nilearn_off_the_tr_grid(onset):
    # nilearn builds its regressor independently (oversampled SPM HRF); ours must
    # have the same shape wherever the onset falls relative to the TR grid.
    n_scans = 40
    ours = trial_regressors([onset], [3.0], n_scans, TR, canonical_hrf(0.1))[:, 0]
    theirs, _ = compute_regressor(
        np.array([[onset], [3.0], [1.0]]), "spm", np.arange(n_scans) * TR, oversampling=50
    )
    assert np.corrcoef(ours, theirs[:, 0])[0, 1] > 0.999
    assert ours.max() == pytest.approx(1.0, abs=0.05)  # peak-normalised: beta is % signal change


def test_onset_is_not_rounded_to_the_tr():
    a = trial_regressors([8.0], [3.0], 40, TR, canonical_hrf(0.1))
    b = trial_regressors([8.8], [3.0], 40, TR, canonical_hrf(0.1))  # half a TR later
    c = trial_regressors([9.6], [3.0], 40, TR, canonical_hrf(0.1))  # one TR later
    assert not np.allclose(a, b, atol=1e-3) and not np.allclose(b, c, atol=1e-3)
    np.testing.assert_allclose(a[:-1, 0], c[1:, 0], atol=1e-6)  # a whole-TR shift is a shift


def test_lsa_recovers_amplitudes_exactly_without_noise():
    rng = np.random.default_rng(0)
    n_trials, n_voxels = 50, 300
    onsets = _nsd_like_onsets(n_trials, rng)
    n_scans = int(np.ceil((onsets[-1] + 24) / TR))
    design = lsa_design(onsets, np.full(n_trials, 3.0), n_scans, TR)
    truth = rng.normal(0, 2, size=(design.shape[1], n_voxels))
    data = (design @ truth).astype(np.float32)
    betas, r2 = fit_lsa(data, design, n_trials, voxel_chunk=64)  # several voxel blocks
    assert betas.shape == (n_trials, n_voxels) and betas.dtype == np.float32
    np.testing.assert_allclose(betas, truth[:n_trials], atol=1e-3)
    np.testing.assert_allclose(r2, 1.0, atol=1e-5)


def test_lsa_on_noisy_data_correlates_with_truth():
    rng = np.random.default_rng(1)
    n_trials, n_voxels = 60, 200
    onsets = _nsd_like_onsets(n_trials, rng)
    n_scans = int(np.ceil((onsets[-1] + 24) / TR))
    design = lsa_design(onsets, np.full(n_trials, 3.0), n_scans, TR)
    amplitudes = rng.normal(0, 2, size=(n_trials, n_voxels))
    data = design[:, :n_trials] @ amplitudes + rng.normal(0, 1.0, size=(n_scans, n_voxels))
    betas, _ = fit_lsa(data.astype(np.float32), design, n_trials)
    r = np.corrcoef(betas.ravel(), amplitudes.ravel())[0, 1]
    assert r > 0.8


def test_constant_and_nan_free_voxels_give_finite_output():
    rng = np.random.default_rng(2)
    onsets = _nsd_like_onsets(10, rng)
    n_scans = int(np.ceil((onsets[-1] + 24) / TR))
    design = lsa_design(onsets, np.full(10, 3.0), n_scans, TR)
    data = np.zeros((n_scans, 3), dtype=np.float32)
    betas, r2 = fit_lsa(data, design, 10)
    assert np.isfinite(betas).all() and np.all(r2 == 0)


def test_design_and_data_length_must_agree():
    design = lsa_design(np.array([4.0]), np.array([3.0]), 20, TR)
    with pytest.raises(ValueError, match="design has 20 scans but data has 19"):
        fit_lsa(np.zeros((19, 2), np.float32), design, 1)


def test_zscore_by_session():
    rng = np.random.default_rng(3)
    betas = rng.normal(5, 3, size=(40, 4)).astype(np.float32)
    sessions = np.repeat(["01", "02"], 20)
    z = zscore_by_session(betas, sessions)
    for ses in ("01", "02"):
        np.testing.assert_allclose(z[sessions == ses].mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(z[sessions == ses].std(0), 1, atol=1e-5)
