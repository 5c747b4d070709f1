"""Benchmark: brainpipe's RidgeCVEncoder against himalaya's RidgeCV, same data, penalties, folds.

    .venv/bin/python benchmarks/ridge.py            # 9,000 x 1,000 -> 15,000 voxels
    .venv/bin/python benchmarks/ridge.py --scale 0.1

Each contender runs in its own child process (whole-process wall time and peak RSS from
``os.wait4``), on the same generated data (seeded), the same alphas and the same grouped
folds; himalaya scores with R² (``solver_params={"score_func": r2_score}``) like ours.
Both write their test predictions; the largest absolute difference is reported. Results go
to ``benchmarks/results/ridge.json``.
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
from measure import run_child

ALPHAS = [0.1, 1, 10, 100, 1000, 10000, 100000]
N_FOLDS = 5


def make_data(n: int, p: int, t: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)).astype(np.float32)
    W = rng.standard_normal((p, t)).astype(np.float32) * (rng.random(t) < 0.5) / np.sqrt(p)
    Y = X @ W + rng.standard_normal((n, t)).astype(np.float32) * rng.uniform(0.5, 4, t).astype(
        np.float32
    )
    Xtest = rng.standard_normal((200, p)).astype(np.float32)
    return X, Y.astype(np.float32), Xtest


def child(which: str, n: int, p: int, t: int, out: str) -> None:
    from brainpipe.ridge import RidgeCVEncoder, make_group_folds

    X, Y, Xtest = make_data(n, p, t)
    folds = make_group_folds(n, N_FOLDS, None, 0)
    t0 = time.perf_counter()
    if which == "brainpipe":
        model = RidgeCVEncoder(alphas=ALPHAS, n_folds=N_FOLDS).fit(X, Y)
        pred, alpha = model.predict(Xtest), model.alpha_
    else:
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV
        from himalaya.scoring import r2_score

        set_backend("numpy", on_error="warn")
        model = RidgeCV(
            alphas=np.asarray(ALPHAS), fit_intercept=True, cv=folds,
            solver_params={"score_func": r2_score},
        )  # fmt: skip
        model.fit(X, Y)
        pred, alpha = np.asarray(model.predict(Xtest)), np.asarray(model.best_alphas_)
    fit_s = time.perf_counter() - t0
    np.savez(
        out, pred=np.asarray(pred, np.float64), alpha=np.asarray(alpha, np.float64), fit_s=fit_s
    )


def run(which: str, args) -> dict:
    out = tempfile.mktemp(suffix=".npz")
    wall, peak_rss_mb = run_child(
        [sys.executable, __file__, "--child", which, "--out", out]
        + ["--n", str(args.n), "--p", str(args.p), "--t", str(args.t)],
        which,
    )  # fmt: skip
    res = np.load(out)
    return {
        "wall_s": wall,
        "fit_s": float(res["fit_s"]),
        "peak_rss_mb": peak_rss_mb,
        "pred": res["pred"],
        "alpha": res["alpha"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--child")
    ap.add_argument("--n", type=int)
    ap.add_argument("--p", type=int)
    ap.add_argument("--t", type=int)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.p, args.t, args.out)
        return
    args.n, args.p, args.t = (int(round(v * args.scale)) for v in (9000, 1000, 15000))
    results = {w: run(w, args) for w in ("brainpipe", "himalaya")}
    b, h = results["brainpipe"], results["himalaya"]
    diff = float(np.max(np.abs(b["pred"] - h["pred"])))
    same_alpha = float(np.mean(np.isclose(b["alpha"], h["alpha"], rtol=1e-5)))  # himalaya: float32
    print(
        f"data: {args.n} x {args.p} -> {args.t} targets, {len(ALPHAS)} alphas, "
        f"{N_FOLDS} folds, cores={os.cpu_count()}"
    )
    print(f"{'':10s} {'wall s':>8s} {'fit s':>8s} {'peak RSS MB':>12s}")
    for w, r in results.items():
        print(f"{w:10s} {r['wall_s']:8.1f} {r['fit_s']:8.1f} {r['peak_rss_mb']:12.0f}")
    print(f"speed-up (himalaya wall / brainpipe wall): {h['wall_s'] / b['wall_s']:.2f}x")
    print(
        f"max |prediction difference|: {diff:.3g} (prediction sd {np.std(h['pred']):.3g}); "
        f"same alpha: {same_alpha:.3f}"
    )
    record = {
        "shape": {"n_samples": args.n, "n_features": args.p, "n_targets": args.t},
        "alphas": ALPHAS, "n_folds": N_FOLDS, "cpu_count": os.cpu_count(),
        **{w: {k: r[k] for k in ("wall_s", "fit_s", "peak_rss_mb")} for w, r in results.items()},
        "speedup_wall": h["wall_s"] / b["wall_s"], "max_abs_prediction_diff": diff,
        "fraction_same_alpha": same_alpha,
    }  # fmt: skip
    out = (
        Path(__file__).parent
        / "results"
        / ("ridge.json" if args.scale == 1 else f"ridge_scale{args.scale:g}.json")
    )
    out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
