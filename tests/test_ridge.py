"""Ridge with per-target penalty chosen by cross-validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from brainpipe.ridge import (
    RidgeCVEncoder,
    fit_ridge,
    make_group_folds,
    solve_ridge_cv,
)


def _data(n=80, p=10, t=6, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + 3.0
    W = rng.standard_normal((p, t))
    Y = X @ W + 2.0 + noise * rng.standard_normal((n, t))
    return X, Y


@pytest.mark.parametrize("shape", [(60, 8), (15, 40)])  # primal and dual
def test_single_alpha_matches_sklearn(shape):
    n, p = shape
    X, Y = _data(n=n, p=p, t=4)
    for alpha in (0.1, 10.0, 1e4):
        coef, intercept = fit_ridge(X, Y, alpha)
        ref = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(X, Y)
        np.testing.assert_allclose(coef, ref.coef_.T, rtol=1e-6, atol=1e-10 * np.abs(coef).max())
        np.testing.assert_allclose(intercept, ref.intercept_, rtol=1e-6)


def test_per_target_alpha_equals_separate_fits():
    X, Y = _data(t=3)
    alphas = np.array([0.5, 50.0, 5000.0])
    coef, intercept = fit_ridge(X, Y, alphas)
    for j, a in enumerate(alphas):
        ref = Ridge(alpha=a).fit(X, Y[:, j])
        np.testing.assert_allclose(coef[:, j], ref.coef_, rtol=1e-6)
        np.testing.assert_allclose(intercept[j], ref.intercept_, rtol=1e-6)


@pytest.mark.parametrize("shape", [(50, 10), (20, 60)])
def test_primal_and_dual_agree(shape):
    X, Y = _data(n=shape[0], p=shape[1], t=5)
    alphas = np.array([0.1, 1.0, 10.0, 100.0, 1000.0])
    a_p, _ = fit_ridge(X, Y, alphas, method="primal")
    a_d, _ = fit_ridge(X, Y, alphas, method="dual")
    np.testing.assert_allclose(a_p, a_d, rtol=1e-6, atol=1e-9)
    folds = make_group_folds(X.shape[0], 4)
    grid = np.logspace(-2, 4, 7)
    best_p, s_p = solve_ridge_cv(X, Y, grid, folds, method="primal")
    best_d, s_d = solve_ridge_cv(X, Y, grid, folds, method="dual")
    np.testing.assert_allclose(s_p, s_d, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(best_p, best_d)


def test_noisier_targets_get_larger_alphas():
    rng = np.random.default_rng(3)
    n, p = 200, 30
    X = rng.standard_normal((n, p))
    w = rng.standard_normal((p, 1)) / np.sqrt(p)
    noise_sd = np.array([0.1, 1.0, 5.0, 25.0])
    Y = X @ w + noise_sd * rng.standard_normal((n, noise_sd.size))
    est = RidgeCVEncoder(alphas=np.logspace(-2, 6, 17), n_folds=5).fit(X, Y)
    assert est.alpha_.shape == (4,)
    assert est.cv_scores_.shape == (17, 4)
    assert np.all(np.diff(np.log10(est.alpha_)) >= 0)
    assert est.alpha_[-1] > 10 * est.alpha_[0]


def test_matches_himalaya_ridgecv():
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV
    from himalaya.scoring import r2_score

    set_backend("numpy", on_error="warn")
    rng = np.random.default_rng(1)
    n, p, t = 90, 12, 20
    X = rng.standard_normal((n, p))
    Y = X @ rng.standard_normal((p, t)) + rng.standard_normal((n, t)) * np.linspace(0.1, 8, t)
    alphas = np.logspace(-2, 5, 15)
    groups = np.repeat(np.arange(30), 3)
    ours = RidgeCVEncoder(alphas=alphas, n_folds=5).fit(X, Y, groups=groups)
    # himalaya's default CV score is the negative MSE; ours is R²
    ref = RidgeCV(
        alphas=alphas,
        cv=ours.folds_,
        fit_intercept=True,
        solver_params={"score_func": r2_score},
    ).fit(X, Y)
    np.testing.assert_allclose(ours.alpha_, ref.best_alphas_)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.cv_scores_.max(0), np.asarray(ref.cv_scores_), rtol=1e-5)


def test_groups_keep_repeats_in_one_fold():
    stim = np.repeat(np.arange(17), [1, 2, 3] * 5 + [3, 3])
    rng = np.random.default_rng(0)
    rng.shuffle(stim)
    folds = make_group_folds(stim.size, 5, groups=stim, random_state=0)
    assert len(folds) == 5
    seen = np.zeros(stim.size, int)
    for train, val in folds:
        assert not set(stim[train]) & set(stim[val])
        assert len(np.intersect1d(train, val)) == 0
        seen[val] += 1
    assert np.all(seen == 1)
    sizes = [len(v) for _, v in folds]
    assert max(sizes) - min(sizes) <= 3
    est = RidgeCVEncoder(n_folds=5).fit(
        rng.standard_normal((stim.size, 3)), rng.standard_normal(stim.size), groups=stim
    )
    for train, val in est.folds_:
        assert not set(stim[train]) & set(stim[val])
    assert est.predict(rng.standard_normal((4, 3))).shape == (4,)


def test_input_checks():
    X, Y = _data(n=20, p=3, t=2)
    est = RidgeCVEncoder(n_folds=3)
    with pytest.raises(ValueError, match="same number of samples"):
        est.fit(X, Y[:-1])
    Xn = X.copy()
    Xn[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN.*row 4, column 1"):
        est.fit(Xn, Y)
    with pytest.raises(ValueError, match="2-D"):
        est.fit(X[None], Y)
    with pytest.raises(ValueError, match="positive"):
        RidgeCVEncoder(alphas=[1.0, -1.0]).fit(X, Y)
    with pytest.raises(ValueError, match="number of groups"):
        est.fit(X, Y, groups=np.repeat([0, 1], 10))
    with pytest.raises(RuntimeError, match="not fitted"):
        RidgeCVEncoder().predict(X)
    est.fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        est.predict(X[:, :2])


def test_float32_targets_are_solved_in_float32_with_the_same_answer():
    rng = np.random.default_rng(5)
    n, p, t = 300, 40, 50
    X = rng.standard_normal((n, p)) + 1.0
    Y = X @ rng.standard_normal((p, t)) / np.sqrt(p) + rng.standard_normal((n, t)) * 2.0 + 5.0
    groups = np.repeat(np.arange(100), 3)
    alphas = np.logspace(-1, 5, 13)
    ref = RidgeCVEncoder(alphas=alphas, n_folds=5).fit(X, Y, groups=groups)
    est = RidgeCVEncoder(alphas=alphas, n_folds=5).fit(X, Y.astype(np.float32), groups=groups)
    assert est.coef_.dtype == np.float32
    np.testing.assert_allclose(est.cv_scores_, ref.cv_scores_, atol=2e-4)
    # Where two alphas score the same to float32 precision the choice may differ; not else.
    assert np.mean(est.alpha_ == ref.alpha_) > 0.9
    same = est.alpha_ == ref.alpha_
    np.testing.assert_allclose(
        est.predict(X)[:, same], ref.predict(X)[:, same], rtol=1e-3, atol=1e-3
    )
