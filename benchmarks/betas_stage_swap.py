"""Diagnostic: brainpipe's GLMsingle fit with GLMsingle's own choices swapped in, stage by stage.

Reads a cached GLMsingle output of ``benchmarks/betas_vs_glmsingle.py`` (its
noise pool, number of noise components and per-voxel ridge fractions) for one
session of the independent simulator, and fits brainpipe on the same session:

1. as it is (its own choices at every stage);
2. with GLMsingle's noise pool (PCs of those voxels, polynomials projected out);
3. with GLMsingle's pool and GLMsingle's number of components;
4. with GLMsingle's pool, number of components and ridge fractions.

If step 4 matches GLMsingle's accuracy, what is left between the two fits
is in the choices (pool, count, fractions), not in the solvers. The swaps
replace brainpipe functions for the duration of this script only (a
diagnostic, not an option of the estimator)::

    .venv/bin/python benchmarks/betas_stage_swap.py --seed 0 \\
        --glmsingle ~/ref/cache/glmsingle-680553a4c76a2769.npz

(``glmsingle_cache`` in ``benchmarks/results/betas_vs_glmsingle.json`` names
the file of each session; default sizes as that script's defaults.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

import betas_vs_glmsingle as bench  # noqa: E402

from brainpipe.glmsingle import GLMSingle, GLMSingleOptions, RunSpec  # noqa: E402
from brainpipe.glmsingle import estimator as E  # noqa: E402
from brainpipe.glmsingle import solvers as S  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--glmsingle", required=True, help="cached GLMsingle output (.npz)")
    ap.add_argument("--voxels", type=int, default=1500)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--trials", type=int, default=160)
    args = ap.parse_args()
    ref = np.load(args.glmsingle)
    sess = bench.simulate_indep(args.seed, args.voxels, args.runs, args.scans, args.trials)
    bounds = np.cumsum(np.r_[0, sess["run_len"]])
    blocks, specs = [], []
    for i, on in enumerate(sess["onsets"]):
        raw = sess["raw"][bounds[i] : bounds[i + 1]].astype(np.float64)
        blocks.append((100.0 * (raw / raw.mean(0) - 1.0)).astype(np.float32))
        specs.append(
            RunSpec(
                "1",
                str(i + 1),
                int(bounds[i]),
                int(bounds[i + 1]),
                on,
                np.full(len(on), sess["stimdur"]),
                sess["stimuli"][i],
            )
        )
    data = np.concatenate(blocks)
    stim = np.concatenate(sess["stimuli"])
    vox = np.flatnonzero(sess["responsive"])
    n_trials = len(stim)
    if ref["noisepool"].size != data.shape[1]:
        raise SystemExit(f"{args.glmsingle}: not this session ({ref['noisepool'].size} voxels)")

    def fit(types: str) -> np.ndarray:
        out = np.zeros((n_trials, data.shape[1]), np.float32)
        model = GLMSingle(specs, sess["tr"], data.shape[1], GLMSingleOptions(types=tuple(types)))

        def write(ts, vs, block):
            out[ts, vs] = block

        model.fit(lambda ts, vs: data[ts, vs], write, progress=lambda m: None)
        return out

    pool = ref["noisepool"].astype(bool)
    state = {"run": 0}
    originals = (S.noise_components, E._choose_n_pcs, E.GLMSingle._fit_block)

    def glm_pool(y_pool, basis, k):
        i = state["run"] % len(specs)
        state["run"] += 1
        y = data[bounds[i] : bounds[i + 1]][:, pool]
        poly = S.polynomial_basis(y.shape[0], S.default_poly_degree(y.shape[0], sess["tr"]))
        return originals[0](y, poly, k)

    key = {data[:8, v].tobytes(): v for v in range(data.shape[1])}

    def glm_fractions(self, ses, ops, y, target, fractions):
        if isinstance(target, str):
            yy = np.asarray(y)
            cols = [key[yy[:8, j].astype(np.float32).tobytes()] for j in range(yy.shape[1])]
            target = ref["frac"][cols].astype(float)
        return originals[2](self, ses, ops, y, target, fractions)

    print(f"GLMsingle: {int(ref['pcnum'])} components")
    for t in "CD":
        sc = bench.score(ref[t], sess["amplitude"], stim, vox)
        print(f"  GLMsingle type {t}: r {sc['r']:.4f}  reliability {sc['reliability']:.4f}")
    steps = [
        ("brainpipe as it is", ()),
        ("+ GLMsingle's noise pool", ("pool",)),
        ("+ GLMsingle's number of components", ("pool", "count")),
        ("+ GLMsingle's ridge fractions", ("pool", "count", "fractions")),
    ]
    try:
        for label, swaps in steps:
            S.noise_components = glm_pool if "pool" in swaps else originals[0]
            E._choose_n_pcs = (
                (lambda scores, stop: int(ref["pcnum"])) if "count" in swaps else originals[1]
            )
            E.GLMSingle._fit_block = glm_fractions if "fractions" in swaps else originals[2]
            for types in ("ABC", "ABCD"):
                state["run"] = 0
                sc = bench.score(fit(types), sess["amplitude"], stim, vox)
                print(
                    f"  {label:38s} type {types[-1]}: r {sc['r']:.4f}  "
                    f"reliability {sc['reliability']:.4f}",
                    flush=True,
                )
    finally:
        S.noise_components, E._choose_n_pcs, E.GLMSingle._fit_block = originals


if __name__ == "__main__":
    main()
