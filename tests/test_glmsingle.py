"""GLMsingle-level single-trial betas (types A-D), checked against the synthetic ground truth."""

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainpipe.betas import estimate_betas, fit_lsa, lsa_design
from brainpipe.betas.glmsingle import options_from_config
from brainpipe.bids import BidsLayout, read_events, run_keys
from brainpipe.datasets import synthetic
from brainpipe.errors import BrainpipeInputError
from brainpipe.glmsingle import GLMSingle, GLMSingleOptions, RunSpec, check_types, read_hrf_library
from brainpipe.glmsingle import solvers as S
from brainpipe.glmsingle.backend import get_backend
from brainpipe.glmsingle.chunking import bytes_per_voxel, voxel_chunk_for_memory
from brainpipe.glmsingle.estimator import session_psc_reader
from brainpipe.glmsingle.library import (
    ASSUMED_TABLE,
    DEFAULT_TABLE,
    assumed_kernel,
    library_kernels,
    n_hrfs,
    read_assumed_hrf,
    time_to_peak,
)
from brainpipe.hrf import canonical_hrf, hrf_library_parameters
from brainpipe.preprocess import preprocess_subject
from brainpipe.storage import open_zarr

#: Higher-noise synthetic data: structured noise strong enough for noise regressors to matter.
NOISY = {
    "seed": 1,
    "n_subjects": 1,
    "n_sessions": 2,
    "n_runs": 3,
    "trials_per_run": 40,
    "voxel_size_mm": 8.0,
    "n_shared": 16,
    "noise_sd": 1.5,
    "structured_noise_sd": 1.5,
}
SUB = "01"


def _load(root: Path, sessions=("01", "02"), runs=("01", "02", "03")):
    """Brain-voxel time series in % signal change (per-run mean removed) and the run specs."""
    layout = BidsLayout(root, synthetic.TASK)
    mask = np.asarray(nib.load(layout.brain_mask(SUB)).dataobj) > 0
    blocks, specs, start = [], [], 0
    for key in run_keys(SUB, list(sessions), list(runs)):
        raw = np.asarray(nib.load(layout.bold(key)).dataobj, dtype=np.float64)[mask].T
        mean = raw.mean(axis=0)
        blocks.append((100.0 * (raw / mean - 1.0)).astype(np.float32))
        ev = read_events(layout.events(key))
        specs.append(
            RunSpec(
                key.session,
                key.run,
                start,
                start + raw.shape[0],
                ev["onset"].to_numpy(float),
                ev["duration"].to_numpy(float),
                ev["stimulus"].to_numpy(str),
            )
        )
        start += raw.shape[0]
    return np.concatenate(blocks), specs


def _fit(data, specs, types, backend="numpy", chunk=4096, **kw):
    out = np.zeros((sum(len(s.onsets) for s in specs), data.shape[1]), dtype=np.float32)

    def read(ts, vs):
        return data[ts, vs]

    def write(trials, vs, block):
        out[trials, vs] = block

    model = GLMSingle(
        specs,
        synthetic.SyntheticParams().tr,
        data.shape[1],
        GLMSingleOptions(types=types, **kw),
        backend=backend,
        chunk=chunk,
    )
    return out, model.fit(read, write)


def _median_r(betas, truth, voxels):
    return float(np.median([np.corrcoef(betas[:, v], truth[:, v])[0, 1] for v in voxels]))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("glmsingle") / "synthetic"
    synthetic.generate(root, synthetic.SyntheticParams.from_config(NOISY))
    data, specs = _load(root)
    gt = synthetic.load_ground_truth(root, SUB)
    fits = {t: _fit(data, specs, ("A", "B", "C", "D")[: "ABCD".index(t) + 1]) for t in "ABCD"}
    return root, data, specs, gt, fits


def test_each_type_improves_on_type_a_and_lsa(noisy):
    _, data, specs, gt, fits = noisy
    amp = gt["amplitude"].values
    roi = np.flatnonzero(gt["roi"].values != "none")
    lsa = np.concatenate(
        [
            fit_lsa(
                data[s.start : s.stop],
                lsa_design(s.onsets, s.durations, s.n_scans, 1.6),
                len(s.onsets),
            )[0]
            for s in specs
        ]
    )
    r = {"LSA": _median_r(lsa, amp, roi), **{t: _median_r(fits[t][0], amp, roi) for t in "ABCD"}}
    baseline = max(r["LSA"], r["A"])
    for t in "BCD":
        assert r[t] > baseline + 0.01, r
    assert r["D"] >= r["B"], r


def test_true_hrf_is_recovered_for_most_voxels(noisy):
    # With the generator's own (parametric) library, the max-R² choice finds each
    # voxel's HRF.
    root, data, specs, gt, fits = noisy
    table = read_hrf_library(root / "derivatives" / "groundtruth" / "hrf_library.tsv")
    _, res = _fit(data, specs, ("A", "B"), hrf_library=table)
    roi = gt["roi"].values != "none"
    ttp = time_to_peak(library_kernels(table, 0.1), 0.1)
    est, true = res.hrf_index[roi], gt["hrf_index"].values[roi]
    # Neighbouring library HRFs differ by ~0.2 s in time to peak: judge by time to peak.
    assert np.mean(np.abs(ttp[est] - ttp[true]) <= 0.5) >= 0.7
    assert np.corrcoef(ttp[est], ttp[true])[0, 1] > 0.8
    # The default (GLMsingle's) library orders its HRFs by time to peak too.
    default_ttp = time_to_peak(library_kernels(read_hrf_library(None), 0.1), 0.1)
    chosen = fits["B"][1].hrf_index[roi]
    assert np.corrcoef(default_ttp[chosen], ttp[true])[0, 1] > 0.6
    assert (fits["A"][1].hrf_index == -1).all()  # type A: canonical HRF everywhere


def test_noise_ceiling_agrees_with_the_generator(noisy):
    from brainpipe.betas import zscore_by_session
    from brainpipe.metrics import ncsnr_from_repeats, noise_ceiling

    _, _, specs, gt, fits = noisy
    roi = gt["roi"].values != "none"
    stimuli = np.concatenate([s.stimuli for s in specs])
    sessions = np.concatenate([np.full(len(s.onsets), s.session) for s in specs])
    betas = fits["B"][0]  # unregularised, HRF of each voxel: what the generator's ceiling assumes
    ncsnr = ncsnr_from_repeats(zscore_by_session(betas, sessions), stimuli)
    nc = noise_ceiling(ncsnr, 1)
    true_nc = gt["noise_ceiling"].values
    assert np.median(nc[roi]) == pytest.approx(np.median(true_nc[roi]), rel=0.25)
    assert np.corrcoef(nc[roi], true_nc[roi])[0, 1] > 0.3
    assert np.median(nc[~roi]) < 10 < np.median(nc[roi])  # noise-only voxels have no ceiling


def test_numpy_and_torch_give_the_same_betas(noisy):
    _, data, specs, _, fits = noisy
    sub = data[:, :600]
    a, ra = _fit(sub, specs, ("A", "B", "C", "D"), backend="numpy")
    b, rb = _fit(sub, specs, ("A", "B", "C", "D"), backend="torch")
    assert ra.n_pcs_per_session == rb.n_pcs_per_session
    np.testing.assert_array_equal(ra.hrf_index, rb.hrf_index)
    np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(a).max())


def test_chunking_does_not_change_the_result(noisy):
    _, data, specs, _, fits = noisy
    betas, res = _fit(data, specs, ("A", "B", "C", "D"), chunk=700)
    full, full_res = fits["D"]
    assert res.n_pcs_per_session == full_res.n_pcs_per_session
    np.testing.assert_allclose(betas, full, atol=1e-3 * np.abs(full).max())
    assert voxel_chunk_for_memory(8000, 40_000, align=512) > voxel_chunk_for_memory(
        2000, 40_000, align=512
    )
    assert voxel_chunk_for_memory(8000, 40_000, align=512) % 512 == 0


def test_sessions_are_fitted_separately_then_concatenated(noisy):
    _, data, specs, _, fits = noisy
    joint = fits["A"][0]
    parts = []
    for ses in ("01", "02"):
        sel = [s for s in specs if s.session == ses]
        t0 = sel[0].start
        shifted = [
            RunSpec(s.session, s.run, s.start - t0, s.stop - t0, s.onsets, s.durations, s.stimuli)
            for s in sel
        ]
        parts.append(_fit(data[t0 : sel[-1].stop], shifted, ("A",))[0])
    np.testing.assert_allclose(joint, np.concatenate(parts), atol=1e-4)


def test_runs_of_different_length(noisy):
    _, data, specs, _, _ = noisy
    lengths = {s.n_scans for s in specs}
    assert len(lengths) > 1  # the generator's blank slots already vary run length
    # Cut 10 scans off the end of the first run: still fits, same number of trials.
    keep = np.ones(len(data), dtype=bool)
    keep[specs[0].stop - 10 : specs[0].stop] = False
    cut = [
        RunSpec(
            s.session,
            s.run,
            s.start - (10 if i else 0),
            s.stop - 10,
            s.onsets,
            s.durations,
            s.stimuli,
        )
        for i, s in enumerate(specs)
    ]
    betas, _ = _fit(data[keep][:, :400], cut, ("A", "B", "C", "D"))
    assert betas.shape == (sum(len(s.onsets) for s in specs), 400) and np.isfinite(betas).all()


def test_no_repeats_falls_back_and_says_so(noisy, caplog):
    _, data, specs, _, _ = noisy
    unique = [
        RunSpec(
            s.session,
            s.run,
            s.start,
            s.stop,
            s.onsets,
            s.durations,
            np.array([f"{s.session}{s.run}-{n}" for n in range(len(s.onsets))]),
        )
        for s in specs
    ]
    with caplog.at_level(logging.WARNING):
        betas, res = _fit(data[:, :500], unique, ("A", "B", "C", "D"))
    assert "no stimulus repeats" in caplog.text
    assert any("cannot be cross-validated" in n for n in res.notes)
    assert set(res.n_pcs_per_session.values()) == {0}
    assert np.all(res.ridge_fraction[res.valid] == 1.0)
    np.testing.assert_allclose(betas, _fit(data[:, :500], unique, ("A", "B"))[0], atol=1e-4)
    # One session without repeats borrows from the other.
    mixed = [u if u.session == "02" else s for s, u in zip(specs, unique, strict=True)]
    with caplog.at_level(logging.WARNING):
        _, res = _fit(data[:, :500], mixed, ("A", "B", "C", "D"))
    assert res.n_pcs_per_session["01"] == res.n_pcs_per_session["02"]
    assert any("session 02: no stimulus repeats" in n for n in res.notes)


def test_zero_and_nan_voxels(noisy):
    _, data, specs, gt, _ = noisy
    bad = data[:, :800].copy()
    bad[:, 3] = 0.0
    bad[:, 5] = np.nan
    bad[100, 7] = np.inf
    betas, res = _fit(bad, specs, ("A", "B", "C", "D"))
    assert np.isfinite(betas).all()
    assert not res.valid[[3, 5, 7]].any() and res.valid.sum() == 797
    assert (betas[:, [3, 5, 7]] == 0).all() and (res.hrf_index[[3, 5, 7]] == -1).all()
    assert any("zero or non-finite" in n for n in res.notes)


def test_hrf_library_table(tmp_path):
    # Shipped: the 20 HRFs of GLMsingle's getcanonicalhrflibrary.tsv, sampled every 0.1 s.
    table = read_hrf_library(DEFAULT_TABLE)
    assert n_hrfs(table) == 20 and table["time"].iloc[1] == pytest.approx(0.1)
    ttp = time_to_peak(library_kernels(table, 0.1), 0.1)
    assert np.all(np.diff(ttp) >= 0) and 2.5 <= ttp[0] < ttp[-1] <= 6.0
    # Resampling at another step keeps the shapes (PCHIP).
    fine = library_kernels(table, 0.1)[:, ::5]
    np.testing.assert_allclose(
        library_kernels(table, 0.5), fine / fine.max(axis=1, keepdims=True), atol=1e-9
    )
    # Parametric tables (the synthetic generator's family) still read.
    params = pd.DataFrame([{"hrf_index": i, **p} for i, p in enumerate(hrf_library_parameters(5))])
    path = tmp_path / "params.tsv"
    params.to_csv(path, sep="\t", index=False)
    assert n_hrfs(read_hrf_library(path)) == 5
    np.testing.assert_allclose(
        read_hrf_library(path).to_numpy(float), params.to_numpy(float), rtol=1e-12
    )


def test_assumed_hrf_is_glmsingles_by_default(tmp_path):
    # GLMsingle's assumed HRF (its basichrf, every 0.1 s; peak 4.7-4.8 s after a brief event)
    glm = assumed_kernel("glmsingle", 0.1)
    table = pd.read_csv(ASSUMED_TABLE, sep="\t")
    assert list(table.columns) == ["time", "hrf_assumed"] and len(table) == 490
    assert glm.max() == 1.0 and 4.6 <= time_to_peak(glm[None], 0.1)[0] <= 4.9
    np.testing.assert_allclose(glm, table["hrf_assumed"] / table["hrf_assumed"].max())
    assert GLMSingleOptions().assumed_hrf == "glmsingle"
    np.testing.assert_array_equal(assumed_kernel("spm", 0.1), canonical_hrf(0.1))
    # a one-HRF sampled table is accepted; anything else says what is expected
    one = tmp_path / "one.tsv"
    table.rename(columns={"hrf_assumed": "mine"}).to_csv(one, sep="\t", index=False)
    np.testing.assert_allclose(assumed_kernel(read_assumed_hrf(one), 0.1), glm)
    with pytest.raises(BrainpipeInputError, match="exactly one HRF column"):
        read_assumed_hrf(DEFAULT_TABLE)
    with pytest.raises(BrainpipeInputError, match="betas.assumed_hrf"):
        options_from_config({"assumed_hrf": "nope"})
    assert options_from_config({"assumed_hrf": str(one)}).assumed_hrf.shape == (490, 2)


def test_session_psc_reader_gives_one_scale_per_session():
    # Two sessions of two runs; raw = mean_r × (1 + x / 100) with run means that differ.
    rng = np.random.default_rng(0)
    labels = [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    none = np.zeros(0)
    runs = [RunSpec(s, r, 10 * n, 10 * n + 10, none, none, none) for n, (s, r) in enumerate(labels)]
    means = rng.uniform(500, 1500, (4, 6))
    raw = np.concatenate([m * (1 + rng.normal(0, 1, (10, 6)) / 100) for m in means])
    per_run = np.concatenate(
        [100 * (raw[r.start : r.stop] / means[i] - 1) for i, r in enumerate(runs)]
    ).astype(np.float32)
    read = session_psc_reader(lambda ts, vs: per_run[ts, vs], runs, lambda i, vs: means[i, vs])
    for ses, rows in (("1", slice(0, 20)), ("2", slice(20, 40))):
        ses_mean = means[[2 * int(ses) - 2, 2 * int(ses) - 1]].mean(0)
        got = read(rows, slice(1, 5))
        for k, i in enumerate([2 * int(ses) - 2, 2 * int(ses) - 1]):
            # % of the session mean, up to a constant per run (fitted out by the polynomials)
            want = 100 * (raw[runs[i].start : runs[i].stop, 1:5] - means[i, 1:5]) / ses_mean[1:5]
            np.testing.assert_allclose(got[10 * k : 10 * k + 10], want, rtol=1e-4, atol=1e-4)
    # a non-positive mean leaves the voxel as it is
    bad = means.copy()
    bad[1, 0] = 0.0
    read = session_psc_reader(lambda ts, vs: per_run[ts, vs], runs, lambda i, vs: bad[i, vs])
    np.testing.assert_array_equal(read(slice(0, 20), slice(0, 1)), per_run[0:20, 0:1])


def test_bad_hrf_table_and_types_are_rejected(tmp_path):
    bad = tmp_path / "lib.tsv"
    pd.DataFrame({"hrf_index": [0], "peak_delay": [6.0]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(BrainpipeInputError, match="undershoot_delay"):
        read_hrf_library(bad)
    pd.DataFrame({"time": [0.0, 0.1, 0.3], "hrf_00": [0.0, 1.0, 0.5]}).to_csv(
        bad, sep="\t", index=False
    )
    with pytest.raises(BrainpipeInputError, match="time"):
        read_hrf_library(bad)
    pd.DataFrame({"time": [0.0, 0.1, 0.2], "hrf_00": [0.0, -1.0, np.nan]}).to_csv(
        bad, sep="\t", index=False
    )
    with pytest.raises(BrainpipeInputError, match="hrf_00"):
        read_hrf_library(bad)
    with pytest.raises(BrainpipeInputError, match="betas.types"):
        check_types(["A", "C"])
    assert check_types(["A", "B"]) == ("A", "B")
    assert bytes_per_voxel(2712, 750, 20, 63, 750) > bytes_per_voxel(300, 120, 20, 40, 240)


def test_subject_store_follows_the_contract(tiny_dataset, tmp_path):
    layout = BidsLayout(tiny_dataset, "images")
    runs = run_keys("01", ["01", "02"], ["01", "02"])
    preproc = tmp_path / "preproc.zarr"
    preprocess_subject(layout, "01", runs, preproc)
    cfg = {"betas": {"method": "glmsingle", "types": ["A", "B", "C", "D"], "backend": "numpy"}}
    out = estimate_betas(
        preproc,
        layout,
        "01",
        runs,
        tmp_path / "betas.zarr",
        voxel_chunk=512,
        config=cfg,
        mem_mb=1000,
    )
    ds = open_zarr(out)
    assert ds["betas"].dtype == np.float32 and ds["betas"].dims == ("trial", "voxel")
    for name in ("stimulus", "session", "run", "onset", "i", "j", "k", "x", "y", "z"):
        assert name in ds.coords
    assert any(c.startswith("roi_") for c in ds.coords)
    for name in (
        "r2",
        "hrf_index",
        "n_noise_components",
        "ridge_fraction",
        "ncsnr",
        "nc_1trial",
        "nc_3trial",
    ):
        assert ds[name].dims == ("voxel",)
    assert ds["hrf_index"].dtype == np.int16
    assert ds.attrs["method"] == "glmsingle" and ds.attrs["glmsingle_type"] == "D"
    assert set(ds.attrs["n_noise_components_per_session"]) == {"01", "02"}
    assert np.isfinite(ds["betas"].values).all()
    gt = synthetic.load_ground_truth(tiny_dataset, "01")
    assert (ds["i"].values == gt["i"].values).all()  # voxel order = ground truth order
    # betas in % of the session mean (default, GLMsingle's units) or of each run's mean:
    # type A betas of run r differ by that run's mean over the session's, voxel by voxel
    one = {"betas": {"method": "glmsingle", "types": ["A"], "backend": "numpy"}}
    by = {}
    for base in ("session", "run"):
        one["betas"]["psc_base"] = base
        by[base] = open_zarr(
            estimate_betas(preproc, layout, "01", runs, tmp_path / f"{base}.zarr", config=one)
        )
    pre = open_zarr(preproc)
    m = pre["mean_intensity"].values
    for n, key in enumerate(runs):
        ses = [i for i, k in enumerate(runs) if k.session == key.session]
        t_ses, t_run = pre["session"].values.astype(str), pre["run"].values.astype(str)
        scans = np.array([((t_ses == runs[i].session) & (t_run == runs[i].run)).sum() for i in ses])
        factor = m[n] / (scans @ m[ses] / scans.sum())
        rows = (by["run"]["session"].values == key.session) & (by["run"]["run"].values == key.run)
        np.testing.assert_allclose(
            by["session"]["betas"].values[rows], by["run"]["betas"].values[rows] * factor,
            rtol=2e-3, atol=2e-4,
        )  # fmt: skip
    # method lsa still goes through the LSA estimator
    lsa = estimate_betas(
        preproc, layout, "01", runs, tmp_path / "lsa.zarr", config={"betas": {"method": "lsa"}}
    )
    assert open_zarr(lsa).attrs["method"] == "lsa"
    shutil.rmtree(preproc)


def test_one_gram_per_run_serves_every_noise_count():
    # The CV of the number of noise components solves every count from one set of
    # Gram products per run; it must equal the per-count SVD operators (cv_error).
    rng = np.random.default_rng(0)
    xp = get_backend("numpy")
    T, n, K, c = 120, 20, 4, 30
    stim, labels, designs, nuis, ys = [], [], [], [], []
    for r in range(3):
        designs.append(np.abs(rng.standard_normal((T, n))))
        p = S.polynomial_basis(T, 2)
        q = S.orth(S.residualise(rng.standard_normal((T, K)), p))
        nuis.append(np.column_stack([p, q]))
        ys.append(rng.standard_normal((T, c)))
        stim += [f"s{(i * 7 + r) % 25}" for i in range(n)]
        labels += [str(r)] * n
    mean_op, repeated = S.other_run_mean_operator(np.array(stim), np.array(labels))
    reps = [repeated[r * n : (r + 1) * n] for r in range(3)]
    path = S.nuisance_path_cv(designs, nuis, [3] * 3, ys, reps, mean_op, K)
    for k in range(K + 1):
        ops = [S.run_operators(xp, designs[r], nuis[r][:, : 3 + k], reps[r]) for r in range(3)]
        proj = [S.project_run(xp, o, ys[r]) for r, o in enumerate(ops)]
        b = S.betas_from_rotated(xp, ops, [p.rot for p in proj])
        err, tot = S.cv_error(xp, b, xp.sparse(mean_op), ops, proj)
        np.testing.assert_allclose(path[k], 1 - err / tot, atol=1e-5)


def test_glmsingle_beta_domain_badness():
    # calcbadness: held-out reference betas vs candidate betas of the same stimulus in
    # other runs, z-scored by the reference; a candidate equal to the truth scores 0.
    xp = get_backend("numpy")
    stim = np.array(["a", "b", "a", "c", "b", "a"])
    runs = np.array(["1", "1", "2", "2", "3", "3"])
    test, train = S.repeat_pairs(stim, runs)
    assert sorted(zip(test.tolist(), train.tolist(), strict=True)) == [
        (0, 2),
        (0, 5),
        (1, 4),
        (2, 0),
        (2, 5),
        (4, 1),
        (5, 0),
        (5, 2),
    ]
    ref = np.array([[1.0], [2.0], [1.0], [5.0], [2.0], [1.0]], dtype=np.float32)
    stats = S.zscore_stats(xp, ref)
    assert S.beta_cv_badness(xp, ref, ref, (test, train), stats)[0] == 0.0
    worse = ref + np.array([[0.0], [1.0], [0.0], [0.0], [0.0], [0.0]], dtype=np.float32)
    assert S.beta_cv_badness(xp, worse, ref, (test, train), stats)[0] > 0.0


def test_nuisance_path_betas_equal_least_squares_with_each_count():
    # Betas for every number of noise components from one set of Gram products per
    # run equal the least-squares fit of [design, first n_fixed + k nuisance columns].
    rng = np.random.default_rng(1)
    T, n, K, c = 100, 12, 3, 7
    designs, nuis, ys = [], [], []
    for _ in range(2):
        designs.append(np.abs(rng.standard_normal((T, n))))
        p = S.polynomial_basis(T, 2)
        q = S.orth(S.residualise(rng.standard_normal((T, K)), p))
        nuis.append(np.column_stack([p, q]))
        ys.append(rng.standard_normal((T, c)))
    path = S.nuisance_path_betas(designs, nuis, [3, 3], ys, K)
    assert path.shape == (K + 1, 2 * n, c)
    for k in range(K + 1):
        for r in range(2):
            full = np.column_stack([designs[r], nuis[r][:, : 3 + k]])
            coef = np.linalg.lstsq(full, ys[r], rcond=None)[0][:n]
            np.testing.assert_allclose(path[k, r * n : (r + 1) * n], coef, atol=1e-8)


def test_tail_threshold_separates_the_responsive_tail():
    # GLMsingle's findtailthreshold: a 2-Gaussian mixture, threshold where the upper
    # component's posterior crosses 0.5 — between the bulk and the tail.
    rng = np.random.default_rng(0)
    bulk = rng.normal(0.5, 0.3, 9000)
    tail = rng.normal(6.0, 1.5, 1000)
    thr = S.tail_threshold(np.r_[bulk, tail, np.nan])
    assert 1.0 < thr < 3.5
    assert (bulk < thr).mean() > 0.99 and (tail > thr).mean() > 0.97
    assert np.isnan(S.tail_threshold(np.ones(10)))
    lo, hi = S.robust_range(np.r_[rng.normal(0, 1, 10000), 1e6])
    assert -5 < lo < -3 and 3 < hi < 5  # the outlier does not stretch the range


def test_rescaling_never_flips_the_sign():
    # GLMsingle's post-ridge rescaling: affine fit to the unregularised betas, except
    # that a negative slope keeps the regularised betas as they are.
    xp = get_backend("numpy")
    shrunk = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    ref = np.array([[2.0, 6.0], [4.0, 4.0], [6.0, 2.0]], dtype=np.float32)
    out = S.rescale_to(xp, shrunk, ref)
    np.testing.assert_allclose(out[:, 0], ref[:, 0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], shrunk[:, 1])


def test_fractional_ridge_follows_fracridge():
    # fracridge's algorithm (Rokem & Kay 2020), written out: penalties 0 and 10^k, k from
    # floor(log10(0.01 s²_min)) in steps of 0.2 below ceil(log10(1e4 s²_max)); log(1 + α)
    # interpolated linearly in the fraction of the OLS norm.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 12)) * np.geomspace(0.05, 3.0, 12)
    y = rng.normal(size=(80, 5))
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    rot = (u.T @ y) / s[:, None]
    fracs = np.array([0.05, 0.3, 0.55, 0.8, 1.0])
    alphas = np.r_[0, 10 ** np.arange(np.floor(np.log10(1e-2 * s[-1] ** 2)),
                                      np.ceil(np.log10(1e4 * s[0] ** 2)), 0.2)]  # fmt: skip
    xp = get_backend("numpy")
    grid = S.fractional_ridge_grid(xp, s**2, rot)
    for c in range(y.shape[1]):
        scl = (s**2)[None, :] / ((s**2)[None, :] + alphas[:, None])
        length = np.sqrt((scl**2) @ rot[:, c] ** 2)
        length /= length[0]
        want = np.expm1(np.interp(fracs, length[::-1], np.log1p(alphas)[::-1]))
        ols = S.fractional_ridge_scale(xp, grid, np.ones(y.shape[1]))  # target 1: OLS
        np.testing.assert_allclose(ols, 1.0)
        for f, a in zip(fracs, want, strict=True):
            target = np.full(y.shape[1], f)
            got = S.fractional_ridge_scale(xp, grid, target)[:, c]
            np.testing.assert_allclose(got, s**2 / (s**2 + a), rtol=1e-5)  # float32 backend
            norm = np.linalg.norm(got * rot[:, c]) / np.linalg.norm(rot[:, c])
            assert abs(norm - f) < 0.02


def test_polynomial_degree_rule():
    # GLMsingle's round(minutes / 2), at least 1, halves up: a 5-minute run gets 3
    assert [S.default_poly_degree(n, 1.0) for n in (30, 200, 300, 420, 2712)] == [1, 2, 3, 4, 23]
