"""brainpipe's banded ridge (feature-space random search) against himalaya's BandedRidgeCV.

The reference is himalaya's own estimator, called as brainpipe called it before
(``himalaya.ridge.BandedRidgeCV``: random search, default l2 scoring, no intercept on
centred data, the same folds and seed). Band scalings ``exp(deltas)`` are compared, not
``deltas``: a band switched off (scaling below 1e-8) by two weightings whose scores agree
to float32 precision (e.g. 1e-9 and 1e-14 of the simplex, which the Dirichlet sampler
draws) is the same model whichever of the two wins, and which one wins then depends on
float32 rounding noise in either solver.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainpipe.backend import get_backend
from brainpipe.banded_ridge import banded_ridge_cv, sample_band_weights
from brainpipe.ridge import make_group_folds

ALPHAS = np.array([0.1, 1, 10, 100, 1000, 1e4, 1e5])


def _problem(n: int = 480, sizes=(10, 6), v: int = 40, seed: int = 0):
    """Two bands; voxels differ in how much each band drives them, and in noise."""
    rng = np.random.default_rng(seed)
    p = sum(sizes)
    X = rng.standard_normal((n, p)).astype(np.float32)
    W = rng.standard_normal((p, v)).astype(np.float32)
    W[: sizes[0]] *= rng.uniform(0, 2, v)
    W[sizes[0] :] *= rng.uniform(0, 1, v)
    Y = (X @ W * 0.3 + rng.standard_normal((n, v)) * rng.uniform(0.5, 4, v)).astype(np.float32)
    X -= X.mean(0)
    Y -= Y.mean(0)
    band = np.repeat(np.arange(len(sizes)), sizes)
    return X, Y, band


def _himalaya(X, Y, band, folds, n_iter, seed):
    from himalaya.backend import set_backend
    from himalaya.ridge import BandedRidgeCV

    set_backend("numpy", on_error="warn")
    model = BandedRidgeCV(
        groups=band,
        solver_params={"alphas": ALPHAS, "n_iter": n_iter, "progress_bar": False},
        cv=folds,
        fit_intercept=False,
        random_state=seed,
    ).fit(X, Y)
    return model


def _assert_same_fit(ours, ref, X, Xt):
    np.testing.assert_allclose(np.exp(ours["deltas"]), np.exp(ref.deltas_), rtol=1e-4, atol=1e-8)
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(ours["coef"], ref.coef_, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(Xt @ ours["coef"], ref.predict(Xt), rtol=1e-4, atol=1e-5 * scale)
    # the chosen weighting's mean validation score (himalaya's l2 negative loss)
    np.testing.assert_allclose(ours["cv_score"], ref.cv_scores_.max(0), rtol=1e-5)


def test_sampled_band_weightings_are_himalayas():
    from himalaya.kernel_ridge import generate_dirichlet_samples

    ours = sample_band_weights(20, 3, seed=4)
    ref = generate_dirichlet_samples(20, 3, concentration=[0.1, 1.0], random_state=4)
    assert np.allclose(ours[0], 1 / 3)
    np.testing.assert_allclose(ours[1:], ref[1:], rtol=1e-6)
    np.testing.assert_allclose(ours.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_equals_himalaya_banded_ridge_cv_on_grouped_folds(seed):
    """Same weightings, alphas, folds and l2 scoring: the same per-voxel choice and the
    same refitted coefficients and predictions as himalaya's hat-matrix solver."""
    X, Y, band = _problem(seed=seed)
    folds = make_group_folds(len(X), 5, np.arange(len(X)) // 3, seed)
    ours = banded_ridge_cv(X, Y, band, folds, ALPHAS, 20, seed, get_backend("numpy", "float64"))
    ref = _himalaya(X, Y, band, folds, 20, seed)
    Xt = np.random.default_rng(9).standard_normal((30, X.shape[1])).astype(np.float32)
    _assert_same_fit(ours, ref, X, Xt)
    # the search matters: voxels end on different weightings and alphas
    assert len(np.unique(np.round(ours["deltas"][0] - ours["deltas"][1], 3))) > 3


def test_equals_himalaya_when_folds_do_not_partition_the_rows():
    """Folds whose validation rows are not the rest of the rows (a held-out gap) take the
    fit rows' statistics from their own pass, not from all rows minus validation."""
    X, Y, band = _problem(n=300, sizes=(5, 7), v=25, seed=1)
    rng = np.random.default_rng(2)
    folds = []
    for _ in range(3):
        perm = rng.permutation(len(X))
        folds.append((np.sort(perm[:200]), np.sort(perm[220:])))
    ours = banded_ridge_cv(X, Y, band, folds, ALPHAS, 8, 1, get_backend("numpy", "float64"))
    ref = _himalaya(X, Y, band, folds, 8, 1)
    _assert_same_fit(ours, ref, X, X[:20])


def test_offset_is_subtracted_as_read_and_torch_backend_agrees():
    X, Y, band = _problem(n=240, v=12, seed=5)
    folds = make_group_folds(len(X), 4, None, 0)
    shift = np.linspace(-3, 3, Y.shape[1]).astype(np.float32)
    raised = Y + shift
    before = raised.copy()
    numpy_fit = banded_ridge_cv(X, Y, band, folds, ALPHAS, 6, 0, get_backend("numpy", "float64"))
    offset = banded_ridge_cv(
        X, raised, band, folds, ALPHAS, 6, 0, get_backend("numpy", "float64"), y_offset=shift
    )
    np.testing.assert_array_equal(raised, before)  # never centred in place
    np.testing.assert_allclose(offset["coef"], numpy_fit["coef"], rtol=1e-5, atol=1e-6)
    torch_fit = banded_ridge_cv(X, Y, band, folds, ALPHAS, 6, 0, get_backend("torch", "float64"))
    np.testing.assert_array_equal(torch_fit["deltas"], numpy_fit["deltas"])
    np.testing.assert_allclose(torch_fit["coef"], numpy_fit["coef"], rtol=1e-9, atol=1e-12)


def test_backend_names_and_cuda_fallback():
    """``backend`` takes brainpipe.backend's names; ``torch_cuda`` without a GPU falls back
    to numpy with a warning (as himalaya's ``set_backend(on_error="warn")`` did)."""
    from brainpipe.backend import cuda_available
    from brainpipe.models.encoders import _banded_backend

    assert _banded_backend("torch").name == "torch"
    assert _banded_backend("torch").dtype == "float64"
    if cuda_available():
        pytest.skip("a GPU is visible: torch_cuda is used, not the fallback")
    with pytest.warns(UserWarning, match="using numpy"):
        assert _banded_backend("torch_cuda").name == "numpy"
    assert _banded_backend("auto").name == "numpy"
