"""Benchmark: brainpipe's banded ridge (feature-space search) against himalaya's BandedRidgeCV.

    flock /work/wt/heavy.lock .venv/bin/python benchmarks/banded_ridge.py   # 5,000 x 2,000
    .venv/bin/python benchmarks/banded_ridge.py --scale 0.2                 # smoke test

Same generated data (seeded: two bands of 64 columns, each trial's stimulus shown 3 times,
voxels driven by either band or both, with unequal noise), the same 20 band weightings
(seed 0), 7 alphas and 5 folds grouped by stimulus, as the ``bandedridge`` model fits an
NSD subject's voxel block. The reference is what the model called before:
``himalaya.ridge.BandedRidgeCV`` (random search, l2 scoring, ``n_alphas_batch`` 1, numpy
backend), which scores each weighting, fold and alpha through the fold's hat matrix;
brainpipe's :func:`brainpipe.banded_ridge.banded_ridge_cv` (numpy backend, float64) gets
the same choice from each fold's Gram matrices. Each contender runs in its own child
process (whole-process wall time and peak RSS from ``os.wait4``) with ``--threads`` BLAS
threads (default 1, as the model's job runs with its ``threads``); both write their test
predictions, band scalings ``exp(deltas)`` and chosen mean validation scores, compared
here. Results:
``benchmarks/results/banded_ridge.json`` (``--scale`` other than 1:
``banded_ridge_scale<s>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from measure import run_child  # noqa: E402

ALPHAS = [0.1, 1, 10, 100, 1000, 10000, 100000]
N_FOLDS = 5
N_ITER = 20
SEED = 0
BAND_SIZES = (64, 64)
REPEATS = 3


def make_data(n: int, v: int, seed: int = 0):
    """Centred float32 bands, betas, stimulus of each trial and test features."""
    rng = np.random.default_rng(seed)
    p = sum(BAND_SIZES)
    n_images = n // REPEATS
    images = rng.standard_normal((n_images + 200, p)).astype(np.float32)
    stimulus = rng.permutation(np.repeat(np.arange(n_images), REPEATS))
    X = images[stimulus]
    W = rng.standard_normal((p, v)).astype(np.float32) / np.sqrt(p)
    W[: BAND_SIZES[0]] *= (rng.random(v) < 0.7).astype(np.float32)
    W[BAND_SIZES[0] :] *= (rng.random(v) < 0.5).astype(np.float32) * 0.5
    noise = rng.standard_normal((n, v)).astype(np.float32) * rng.uniform(0.5, 4, v)
    Y = (X @ W + noise).astype(np.float32)
    x_mean = X.mean(0)
    X, Xtest = X - x_mean, images[n_images:] - x_mean
    Y -= Y.mean(0)
    band = np.repeat(np.arange(len(BAND_SIZES)), BAND_SIZES)
    return X, Y, stimulus, Xtest, band


def child(which: str, n: int, v: int, threads: int, out: str) -> None:
    from threadpoolctl import threadpool_limits

    from brainpipe.ridge import make_group_folds

    threadpool_limits(limits=threads)  # as the model's job: BLAS threads = its threads
    X, Y, stimulus, Xtest, band = make_data(n, v)
    folds = make_group_folds(n, N_FOLDS, stimulus, SEED)
    t0 = time.perf_counter()
    if which == "brainpipe":
        from brainpipe.backend import get_backend
        from brainpipe.banded_ridge import banded_ridge_cv

        fit = banded_ridge_cv(
            X, Y, band, folds, ALPHAS, N_ITER, SEED, get_backend("numpy", "float64")
        )
        coef, deltas, cv_score = fit["coef"], fit["deltas"], fit["cv_score"]
    else:
        from himalaya.backend import set_backend
        from himalaya.ridge import BandedRidgeCV

        set_backend("numpy", on_error="warn")
        model = BandedRidgeCV(
            groups=band,
            solver_params={"alphas": np.asarray(ALPHAS, float), "n_iter": N_ITER,
                           "n_alphas_batch": 1, "progress_bar": False},
            cv=folds, fit_intercept=False, random_state=SEED,
        ).fit(X, Y)  # fmt: skip
        coef, deltas = np.asarray(model.coef_), np.asarray(model.deltas_)
        cv_score = np.asarray(model.cv_scores_).max(0)
    fit_s = time.perf_counter() - t0
    np.savez(
        out, pred=np.asarray(Xtest @ coef, np.float64), scaling=np.exp(deltas),
        cv_score=np.asarray(cv_score, np.float64), fit_s=fit_s,
    )  # fmt: skip


def run(which: str, args) -> dict:
    out = tempfile.mktemp(suffix=".npz")
    wall, peak_rss_mb = run_child(
        [sys.executable, __file__, "--child", which, "--out", out]
        + ["--n", str(args.n), "--v", str(args.v), "--threads", str(args.threads)],
        which,
    )  # fmt: skip
    res = np.load(out)
    os.unlink(out)
    return {
        "wall_s": wall,
        "fit_s": float(res["fit_s"]),
        "peak_rss_mb": peak_rss_mb,
        "pred": res["pred"],
        "scaling": res["scaling"],
        "cv_score": res["cv_score"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--child")
    ap.add_argument("--n", type=int)
    ap.add_argument("--v", type=int)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads of each contender")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.v, args.threads, args.out)
        return
    args.n, args.v = (int(round(x * args.scale)) for x in (5000, 2000))
    args.n -= args.n % REPEATS
    results = {w: run(w, args) for w in ("brainpipe", "himalaya")}
    b, h = results["brainpipe"], results["himalaya"]
    diff = float(np.max(np.abs(b["pred"] - h["pred"])))
    # the same band scalings gamma / alpha (a band below 1e-8 is switched off in both)
    same = np.isclose(b["scaling"], h["scaling"], rtol=1e-4, atol=1e-8).all(0)
    # where the choices differ: how far apart the two chosen models' validation scores are
    # (relative; float32 holds ~7 digits, himalaya's scores are float32)
    gap = np.abs(b["cv_score"] - h["cv_score"]) / np.abs(h["cv_score"])
    voxel_diff = np.abs(b["pred"] - h["pred"]).max(0)
    diff_same = float(voxel_diff[same].max()) if same.any() else float("nan")
    p = sum(BAND_SIZES)
    flops_hat = N_ITER * N_FOLDS * len(ALPHAS) * 2 * (args.n / N_FOLDS) * (args.n * 0.8) * args.v
    print(
        f"data: {args.n} trials x {p} features ({len(BAND_SIZES)} bands) -> {args.v} voxels, "
        f"{N_ITER} weightings x {len(ALPHAS)} alphas x {N_FOLDS} folds, "
        f"{args.threads} BLAS thread(s) each, cores={os.cpu_count()}"
    )
    print(f"{'':10s} {'wall s':>8s} {'fit s':>8s} {'peak RSS MB':>12s}")
    for w, r in results.items():
        print(f"{w:10s} {r['wall_s']:8.1f} {r['fit_s']:8.1f} {r['peak_rss_mb']:12.0f}")
    print(f"speed-up (himalaya wall / brainpipe wall): {h['wall_s'] / b['wall_s']:.1f}x")
    print(
        f"max |prediction difference|: {diff:.3g} (prediction sd {np.std(h['pred']):.3g}), "
        f"{diff_same:.3g} over the voxels with the same choice; "
        f"same band scalings: {same.mean():.4f} of voxels; largest relative gap between "
        f"the two choices' mean validation scores: {gap.max():.2g}"
    )
    record = {
        "command": "benchmarks/banded_ridge.py"
        + ("" if args.scale == 1 else f" --scale {args.scale:g}"),
        "shape": {"n_trials": args.n, "n_features": p, "band_sizes": list(BAND_SIZES),
                  "n_voxels": args.v, "repeats_per_stimulus": REPEATS},
        "alphas": ALPHAS, "n_iter": N_ITER, "n_folds": N_FOLDS, "seed": SEED,
        "cpu_count": os.cpu_count(), "blas_threads": args.threads,
        "himalaya_hat_matrix_flops": flops_hat,
        **{w: {k: r[k] for k in ("wall_s", "fit_s", "peak_rss_mb")} for w, r in results.items()},
        "speedup_wall": h["wall_s"] / b["wall_s"], "speedup_fit": h["fit_s"] / b["fit_s"],
        "rss_ratio": b["peak_rss_mb"] / h["peak_rss_mb"],
        "max_abs_prediction_diff": diff, "max_abs_prediction_diff_same_choice": diff_same,
        "prediction_sd": float(np.std(h["pred"])),
        "fraction_same_band_scalings": float(same.mean()),
        "max_relative_cv_score_gap": float(gap.max()),
    }  # fmt: skip
    name = "banded_ridge.json" if args.scale == 1 else f"banded_ridge_scale{args.scale:g}.json"
    out = Path(__file__).parent / "results" / name
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
