"""Evaluation metrics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from brainpipe.metrics import (
    nc_normalised_score,
    ncsnr_from_repeats,
    noise_ceiling,
    pearson_r,
    r2_score_per_target,
)


def test_pearson_r_hand_cases():
    y = np.array([[1.0, 1.0, 2.0], [2.0, 1.0, 4.0], [3.0, 1.0, 6.0]])
    p = np.array([[2.0, 1.0, 3.0], [4.0, 2.0, 2.0], [6.0, 3.0, 1.0]])
    r = pearson_r(y, p)
    assert r.dtype == np.float64
    np.testing.assert_allclose(r, [1.0, 0.0, -1.0])  # constant column -> 0
    # [1,2,3] vs [1,3,2]: cov = 0.5, var = 1, 1 -> r = 0.5
    np.testing.assert_allclose(pearson_r(np.array([1.0, 2, 3]), np.array([1.0, 3, 2])), 0.5)


def test_r2_hand_cases():
    y = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    p = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    # column 0: ss_res = 1, ss_tot = 2 -> 0.5; column 1 constant and exact -> 1
    np.testing.assert_allclose(r2_score_per_target(y, p), [0.5, 1.0])
    p[0, 1] = 4.0
    np.testing.assert_allclose(r2_score_per_target(y, p), [0.5, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        r2_score_per_target(y, p[:2])


def test_noise_ceiling_hand_cases():
    # ncsnr 1, 3 repeats: 100 * 1 / (1 + 1/3) = 75
    np.testing.assert_allclose(noise_ceiling(np.array([1.0]), 3), [75.0])
    # ncsnr 2, 1 repeat: 100 * 4 / 5 = 80; ncsnr 0 -> 0
    np.testing.assert_allclose(noise_ceiling(np.array([2.0, 0.0]), 1), [80.0, 0.0])
    # NSD mix: A=2 stimuli with 3 repeats, B=1 with 2, C=1 with 1
    k = (2 / 3 + 1 / 2 + 1 / 1) / 4
    nc = noise_ceiling(np.array([1.5]), np.array([3, 3, 2, 1]))
    np.testing.assert_allclose(nc, [100 * 2.25 / (2.25 + k)])
    with pytest.raises(ValueError, match="n_repeats"):
        noise_ceiling(np.array([1.0]), 0)


def test_nc_normalised_score_hand_cases():
    r = np.array([0.5, -0.3, 0.9, 0.5, 0.5])
    nc = np.array([50.0, 50.0, 50.0, 0.0, np.nan])
    s = nc_normalised_score(r, nc)
    # 100 * 25 / 50 = 50; negative r -> 0; 100 * 81 / 50 capped to 100; NC <= 0 -> NaN
    np.testing.assert_allclose(s[:3], [50.0, 0.0, 100.0])
    assert np.isnan(s[3]) and np.isnan(s[4])


def test_ncsnr_hand_case():
    # voxel: stimulus a -> [1, 3] (var 2), b -> [2, 4] (var 2), c -> [10] (single)
    betas = np.array([1.0, 3.0, 2.0, 4.0, 10.0])[:, None]
    ids = np.array(["a", "a", "b", "b", "c"])
    total = betas[:, 0].var(ddof=1)
    expected = np.sqrt(total - 2.0) / np.sqrt(2.0)
    np.testing.assert_allclose(ncsnr_from_repeats(betas, ids), [expected])
    # order of trials does not matter
    perm = np.array([4, 2, 0, 3, 1])
    np.testing.assert_allclose(ncsnr_from_repeats(betas[perm], ids[perm]), [expected])
    with pytest.raises(ValueError, match="2 or more"):
        ncsnr_from_repeats(betas[[0, 2, 4]], ids[[0, 2, 4]])


def test_ncsnr_recovers_known_value():
    rng = np.random.default_rng(0)
    n_stim, n_rep, n_vox = 1000, 3, 50
    signal = rng.standard_normal((n_stim, n_vox))  # sd 1
    ids = np.repeat(np.arange(n_stim), n_rep)
    betas = signal[ids] + 0.5 * rng.standard_normal((ids.size, n_vox))
    est = ncsnr_from_repeats(betas, ids)
    assert est.shape == (n_vox,)
    np.testing.assert_allclose(np.median(est), 2.0, rtol=0.1)
    assert np.all(np.abs(est - 2.0) < 0.2)
    # a pure-noise voxel has ncsnr near 0
    noise_only = rng.standard_normal((ids.size, 1))
    assert ncsnr_from_repeats(noise_only, ids)[0] < 0.3


_cols = arrays(
    np.float64,
    st.tuples(st.integers(3, 30), st.integers(1, 4)),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False),
)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), y=_cols, scale=st.floats(1e-2, 1e2), shift=st.floats(-10, 10))
def test_pearson_r_bounded_and_scale_invariant(data, y, scale, shift):
    p = data.draw(
        arrays(
            np.float64,
            y.shape,
            elements=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False),
        )
    )
    r = pearson_r(y, p)
    assert r.shape == (y.shape[1],)
    assert np.all((r >= -1) & (r <= 1))
    r_scaled = pearson_r(y * scale, p)
    np.testing.assert_allclose(r_scaled, r, atol=1e-9)
    # affine transform of the prediction: invariant wherever the columns are well spread
    spread = np.ptp(p, axis=0) > 1e-3 * (np.abs(p).max(axis=0) + 1)
    r_aff = pearson_r(y, scale * p + shift)
    np.testing.assert_allclose(r_aff[spread], r[spread], atol=1e-7)


def test_pearson_r_of_tiny_values_does_not_underflow_to_constant():
    """Found by hypothesis: 2e-162 squared underflows; r is scale-free all the same."""
    y = np.array([[1.29987253e-160], [0.0], [0.0]])
    p = np.array([[0.0], [1.0], [1.0]])
    np.testing.assert_allclose(pearson_r(y * 0.015625, p), pearson_r(y, p))
    np.testing.assert_allclose(pearson_r(y, p), [-1.0])
