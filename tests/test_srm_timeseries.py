"""Shared response over time on the synthetic movie world: its ground truth.

SRM (probabilistic and deterministic, BrainIAK) and S-GPFA (ours) fitted on the first
half of the movie;
on the second half, the left-out subject's segments are matched against the other
subjects' average (time-segment matching) and the shared response's subspace is compared
with the true latents.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainpipe.align.timeseries import (
    SharedGPFA,
    fit_srm,
    subspace_recovery,
    time_segment_matching,
    zscore_time,
)
from brainpipe.datasets.synthetic_movie import MovieParams, generate_movie

WINDOW = 10


@pytest.fixture(scope="module")
def movie():
    world = generate_movie(MovieParams())
    half = world.latents.shape[0] // 2
    train = [zscore_time(x[:half]) for x in world.data]
    test = [zscore_time(x[half:]) for x in world.data]
    return world, train, test, half


@pytest.mark.parametrize("method", ["srm", "detsrm"])
def test_srm_recovers_the_latent_subspace_and_matches_segments_far_above_chance(movie, method):
    """Measured (noise sd 4 x signal, 5 subjects, 300 + 300 TRs, 10 latents, window 10):
    accuracy 0.767 (SRM) / 0.766 (DetSRM), chance 0.0037; canonical correlations of the
    average shared response with the true latents on held-out TRs: 0.94 ... 0.78 for the
    top 8 of 10 (mean 0.87)."""
    world, train, test, half = movie
    Ws = fit_srm(train, 10, method, n_iter=10)
    shared = [x @ w for x, w in zip(test, Ws, strict=True)]
    tsm = time_segment_matching(shared, WINDOW)
    assert tsm["accuracy"] >= 50 * tsm["chance"], tsm
    cc = subspace_recovery(np.mean(shared, axis=0), world.latents[half:])
    assert cc[:8].mean() >= 0.8, cc
    # Without alignment (random orthonormal maps) matching is at chance.
    rng = np.random.default_rng(0)
    random = [x @ np.linalg.qr(rng.standard_normal((x.shape[1], 10)))[0] for x in test]
    assert time_segment_matching(random, WINDOW)["accuracy"] <= 5 * tsm["chance"]


def test_segment_matching_chance_and_perfect_cases():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((40, 3))
    same = time_segment_matching([z, z, z], 5)
    assert same["accuracy"] == 1.0 and same["n_segments"] == 36
    # candidates exclude the overlapping segments: 36 - 8 (36 - 4 at the edges)
    assert 1 / 28 >= same["chance"] >= 1 / 32
    noise = time_segment_matching([rng.standard_normal((40, 3)) for _ in range(3)], 5)
    assert noise["accuracy"] < 0.3
    with pytest.raises(ValueError, match="method"):
        fit_srm([z, z], 2, "nope")


def test_shared_gpfa_recovers_smooth_latents_better_than_srm(movie):
    """S-GPFA on the same split. Measured: segment matching 0.873 with GP smoothing of the
    held-out projections (0.751 without; SRM 0.767), canonical correlations top-8 mean
    0.926 (SRM 0.870); length scale 3.0 chosen (the latents' autocorrelation is Gaussian
    with sd 2 x sqrt(2) = 2.83 TRs)."""
    world, train, test, half = movie
    model = SharedGPFA(10).fit(train)
    assert model.length_scale_ in (2.0, 3.0)
    shared = model.transform(test)
    tsm = time_segment_matching(shared, WINDOW)
    srm = [x @ w for x, w in zip(test, fit_srm(train, 10, "srm", n_iter=10), strict=True)]
    baseline = time_segment_matching(srm, WINDOW)
    assert tsm["accuracy"] >= baseline["accuracy"] + 0.05, (tsm, baseline)
    cc = subspace_recovery(np.mean(shared, axis=0), world.latents[half:])
    cc_srm = subspace_recovery(np.mean(srm, axis=0), world.latents[half:])
    assert cc[:8].mean() >= 0.9 and cc[:8].mean() > cc_srm[:8].mean(), (cc, cc_srm)
    for w in model.w_:  # orthonormal maps, as SRM's
        np.testing.assert_allclose(w.T @ w, np.eye(10), atol=1e-8)
