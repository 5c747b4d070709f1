"""Shared response over time: BrainIAK's SRM and DetSRM vs brainpipe's DetSRM and S-GPFA.

Each implementation runs in its own process on the same synthetic movie world (whole-
process wall time and peak RSS, :mod:`measure`), fitted on the first half of the movie;
the accuracy is left-out-subject time-segment matching on the second half
(:func:`brainpipe.align.timeseries.time_segment_matching`). Ratios are to BrainIAK's
DetSRM measured in the same run.

    python benchmarks/srm_timeseries.py                    # 8 subjects x 2000 TRs x 5000 voxels
    python benchmarks/srm_timeseries.py --voxels 1000 --out benchmarks/results/srm_quick.json
    # Sherlock-like: 16 subjects x 2,000 TRs, a tenth of ~20,000 voxels (memory), then scaled
    python benchmarks/srm_timeseries.py --subjects 16 --voxels 2000 \
        --out benchmarks/results/srm_timeseries_sherlock_2k.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import measure  # noqa: E402

IMPLEMENTATIONS = ("brainiak_srm", "brainiak_detsrm", "brainpipe_detsrm", "brainpipe_sgpfa")


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from brainpipe.align._solvers import deterministic_srm, get_backend
    from brainpipe.align.timeseries import (
        SharedGPFA,
        fit_srm,
        subspace_recovery,
        time_segment_matching,
        zscore_time,
    )
    from brainpipe.datasets.synthetic_movie import MovieParams, generate_movie

    world = generate_movie(
        MovieParams(
            n_subjects=args.subjects,
            n_timepoints=args.timepoints,
            n_components=args.components,
            min_voxels=args.voxels,
            max_voxels=args.voxels,
        )
    )
    half = args.timepoints // 2
    train = [zscore_time(x[:half]) for x in world.data]
    test = [zscore_time(x[half:]) for x in world.data]
    del world.data
    t0 = time.perf_counter()
    if args.child.startswith("brainiak"):
        method = "srm" if args.child == "brainiak_srm" else "detsrm"
        Ws = fit_srm(train, args.components, method, n_iter=args.iterations)
    elif args.child == "brainpipe_sgpfa":
        model = SharedGPFA(args.components, n_iter=args.iterations).fit(train)
    else:
        Ws, _, _ = deterministic_srm(
            train, args.components, get_backend("numpy"), n_iter=args.iterations, tol=0.0
        )
    fit_s = time.perf_counter() - t0
    if args.child == "brainpipe_sgpfa":
        shared = model.transform(test)
    else:
        shared = [x @ w for x, w in zip(test, Ws, strict=True)]
    tsm = time_segment_matching(shared, args.window)
    cc = subspace_recovery(np.mean(shared, axis=0), world.latents[half:])
    print(
        json.dumps(
            {
                "fit_s": fit_s,
                "accuracy": tsm["accuracy"],
                "chance": tsm["chance"],
                "mean_canonical_corr": float(cc.mean()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--timepoints", type=int, default=2000)
    parser.add_argument("--voxels", type=int, default=5000)
    parser.add_argument("--components", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--child", choices=IMPLEMENTATIONS)
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "srm_timeseries.json")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import subprocess

    results = {"params": {k: v for k, v in vars(args).items() if k not in ("child", "out")}}
    chosen = args.implementations.split(",")
    for impl in chosen:
        cmd = [sys.executable, __file__, "--child", impl]
        for key in ("subjects", "timepoints", "voxels", "components", "iterations", "window"):
            cmd += [f"--{key}", str(getattr(args, key))]
        out_file = args.out.with_suffix(f".{impl}.log")
        with open(out_file, "w") as log:
            m = measure(cmd, stdout=log, stderr=subprocess.DEVNULL)
        lines = [ln for ln in out_file.read_text().splitlines() if ln.startswith("{")]
        out_file.unlink()
        results[impl] = {**m.as_dict(), **(json.loads(lines[-1]) if lines else {})}
        print(impl, results[impl], flush=True)
        if m.returncode != 0:  # no figures from a failed child: stop before writing any
            sys.exit(f"{impl} failed (exit {m.returncode}); run it alone with --child {impl}")
    ref = results.get("brainiak_detsrm") or results[chosen[0]]
    for impl in chosen:
        results[impl]["wall_ratio_to_brainiak_detsrm"] = results[impl]["wall_s"] / ref["wall_s"]
        if "fit_s" in results[impl]:
            results[impl]["fit_ratio_to_brainiak_detsrm"] = results[impl]["fit_s"] / ref["fit_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
