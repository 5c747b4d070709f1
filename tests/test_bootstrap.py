"""The streamed bootstrap of evaluate gives what resampling the test stimuli directly gives."""

from __future__ import annotations

import numpy as np

from brainpipe.metrics import nc_normalised_score, pearson_r
from brainpipe.models.evaluation import bootstrap_counts, bootstrap_encoding, decoding_metrics


def _direct(observed, predicted, nc, n_boot, seed, level=0.95):
    """Resample rows, recompute r per voxel: the definition, (n_boot, n, v) in memory."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(observed), size=(n_boot, len(observed)))
    r = np.stack([pearson_r(observed[i], predicted[i]) for i in idx])
    r = np.nan_to_num(r)
    draws = {
        "mean_r": r.mean(axis=1),
        "mean_r2_percent": (np.clip(r, 0, None) ** 2).mean(axis=1) * 100,
        "mean_score": np.nanmean(np.stack([nc_normalised_score(x, nc) for x in r]), axis=1),
    }
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {k: tuple(np.percentile(v, q)) for k, v in draws.items()}


def test_streamed_bootstrap_matches_direct_resampling():
    rng = np.random.default_rng(1)
    n, v = 40, 70
    signal = rng.standard_normal((n, v))
    observed = (signal + rng.standard_normal((n, v)) + 50.0).astype(np.float32)  # offset
    predicted = (signal + 0.5 * rng.standard_normal((n, v))).astype(np.float32)
    observed[:, 3] = 7.0  # a constant voxel scores r = 0
    nc = rng.uniform(0, 60, v)
    nc[5] = 0.0  # no ceiling: score NaN, left out of the mean
    got = bootstrap_encoding(observed, predicted, nc, n_boot=50, seed=3, voxel_block=16)
    want = _direct(observed.astype(np.float64), predicted.astype(np.float64), nc, 50, 3)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-9)


def test_bootstrap_counts_are_the_resamples():
    counts = bootstrap_counts(9, 5, seed=2)
    idx = np.random.default_rng(2).integers(0, 9, size=(5, 9))
    for row, draw in zip(counts, idx, strict=True):
        np.testing.assert_array_equal(row, np.bincount(draw, minlength=9))


def test_decoding_ci_is_the_mean_over_resampled_queries():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((30, 8))
    pred = true + rng.standard_normal((30, 8))
    out = decoding_metrics(pred, true, n_boot=200, seed=4)
    assert out["top1_ci_low"] <= out["top1"] <= out["top1_ci_high"]
    assert 0.0 <= out["two_way_ci_low"] < out["two_way_ci_high"] <= 1.0


def test_split_betas_streams_what_the_whole_array_gives():
    import xarray as xr

    from brainpipe.models.data import split_betas

    rng = np.random.default_rng(0)
    stim = rng.choice([f"s{i}" for i in range(12)], size=50)
    values = rng.standard_normal((50, 7)).astype(np.float32)
    ds = xr.Dataset({"betas": (("trial", "voxel"), values)}, coords={"stimulus": ("trial", stim)})
    test = np.array(["s1", "s3", "s11"])
    train = ~np.isin(stim, test)
    got_train, means, counts = split_betas(ds.chunk({"trial": 8}), test, train, trial_block=8)
    np.testing.assert_array_equal(got_train, values[train])
    for n, s in enumerate(test):
        assert counts[n] == (stim == s).sum()
        np.testing.assert_allclose(means[n], values[stim == s].mean(axis=0), rtol=1e-6)


def test_split_betas_masks_invalid_sessions_as_the_in_memory_path_does():
    """NSD's valid(ses, voxel) and NaN vertices: streamed blocks give what betas_values does."""
    import xarray as xr

    from brainpipe.models.data import average_test_responses, betas_values, split_betas

    rng = np.random.default_rng(1)
    stim = rng.choice([f"s{i}" for i in range(6)], size=40)
    session = np.repeat(["01", "02", "03", "04"], 10)
    values = rng.standard_normal((40, 5)).astype(np.float32)
    values[3, 1] = np.nan  # a NaN vertex in one trial
    valid = np.ones((4, 5), dtype=bool)
    valid[1, 2] = False  # voxel 2 invalid in session 02
    ds = xr.Dataset(
        {"betas": (("trial", "voxel"), values), "valid": (("ses", "voxel"), valid)},
        coords={
            "stimulus": ("trial", stim),
            "session": ("trial", session),
            "ses": ("ses", ["01", "02", "03", "04"]),
        },
    )
    test = np.array(["s0", "s2"])
    train = ~np.isin(stim, test)
    whole = betas_values(ds)
    assert np.isnan(whole[10:20, 2]).all()
    got_train, means, counts = split_betas(ds, test, train, trial_block=7)
    np.testing.assert_array_equal(got_train, whole[train])
    ref, ref_counts = average_test_responses(ds, test, whole)
    np.testing.assert_allclose(means, ref, rtol=1e-6)
    np.testing.assert_array_equal(counts, ref_counts)


def test_training_means_in_blocks_are_the_same_whatever_the_blocks():
    """The fill values of missing betas, accumulated a block of rows at a time (a lazy
    fine-tune streams the store), are the same bit for bit whatever the blocks, and
    ``np.nanmean`` over the rows (bit for bit with several voxels, as fill_missing
    computed them before: numpy adds rows one after another); fill_missing fills with them."""
    from brainpipe.models.data import TrainingMeans, fill_missing

    rng = np.random.default_rng(3)
    for shape in ((1000, 37), (300, 1)):
        a = (rng.standard_normal(shape) * 50 + 3).astype(np.float32)
        a[rng.random(shape) < 0.05] = np.nan
        if shape[1] > 1:
            a[:, 0] = np.nan  # a voxel with no finite value: filled with 0
        with np.errstate(all="ignore"):
            expected = np.nanmean(a, axis=0)
        expected = np.where(np.isfinite(expected), expected, 0).astype(np.float32)
        got = []
        for blocks in ((len(a),), (7, 293, len(a)), (1,) * 10 + (len(a),)):
            means = TrainingMeans(shape[1])
            r0 = 0
            for b in blocks:
                means.add(a[r0 : r0 + b])
                r0 = min(len(a), r0 + b)
            assert means.count.sum() == np.isfinite(a).sum()
            got.append(means.means())
        for g in got[1:]:
            np.testing.assert_array_equal(g, got[0])
        if shape[1] > 1:
            np.testing.assert_array_equal(got[0], expected)
        else:  # one column: numpy sums it pairwise, not row after row
            np.testing.assert_allclose(got[0], expected, rtol=1e-6)
        filled, test = a.copy(), a[:5].copy()
        assert fill_missing(filled, test) == int(np.isnan(a).any(axis=0).sum())
        missing = np.nonzero(np.isnan(a))
        np.testing.assert_array_equal(filled[missing], got[0][missing[1]])
        assert np.isfinite(filled).all() and np.isfinite(test).all()
