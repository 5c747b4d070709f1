"""In-context encoder at NSD scale: meta-training, and a new subject's encoders vs ridge.

Arrays shaped like an NSD job (nsdgeneral ~15,000 voxels, 64 PCA features, 1,000 support
images, 9,000 training trials per training subject), with voxels that follow a linear
model of a low-rank weight prior plus noise. Each stage runs in its own process
(whole-process wall time and peak RSS, :mod:`measure`):

- ``meta_train``: the model's default meta-training (``steps`` episodes) on 3 subjects;
- ``incontext``: every voxel's encoder read from a 1,000-trial support set (CPU);
- ``ridge``: ridge with a per-voxel penalty by grouped CV on the same support set (the
  reference; ratios are to it).

    python benchmarks/incontext.py                 # NSD-like sizes
    python benchmarks/incontext.py --voxels 2000 --out benchmarks/results/incontext_quick.json
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

STAGES = ("meta_train", "incontext", "ridge")


def _subject(rng, n_trials: int, n_voxels: int, n_features: int, basis):
    import numpy as np

    from brainpipe.models.data import JobData

    x = rng.standard_normal((n_trials, n_features)).astype(np.float32)
    w = basis @ rng.standard_normal((basis.shape[1], n_voxels))
    y = (x @ w + 2.0 * rng.standard_normal((n_trials, n_voxels))).astype(np.float32)
    stim = np.array([f"s{i}" for i in range(n_trials)])
    return JobData(
        subject="x", roi="nsdgeneral", betas_train=y, stimuli_train=stim,
        sessions_train=np.full(n_trials, "01"), features_train=[x], test_stimuli=stim[:100],
        betas_test=y[:100], repeats_test=np.ones(100, int), features_test=[x[:100]],
        voxel_ijk=np.zeros((n_voxels, 3), np.int32), feature_names=["f"],
    )  # fmt: skip


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from brainpipe.models import model_params
    from brainpipe.models.incontext import meta_train, predict_in_context, ridge_on_support

    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((args.features, 8)))[0]
    params = model_params("incontext", {})
    params["threads"] = args.threads
    t0 = time.perf_counter()
    if args.stage == "meta_train":
        subjects = {
            str(s): _subject(rng, args.trials, 2000, args.features, basis) for s in range(3)
        }
        weights = meta_train(subjects, params)
        extra = {"steps": params["steps"], "n_weights": len(weights)}
    else:
        data = _subject(rng, args.support, args.voxels, args.features, basis)
        idx = np.arange(args.support)
        if args.stage == "incontext":
            weights = meta_train(
                {"0": _subject(rng, 500, 200, args.features, basis)}, {**params, "steps": 1}
            )
            t0 = time.perf_counter()
            predict_in_context(
                weights, params, data.features_train[0], data.betas_train, data.features_test[0]
            )
        else:
            ridge_on_support(data, idx, params)
        extra = {"voxels": args.voxels, "support": args.support}
    print(json.dumps({"stage_s": time.perf_counter() - t0, **extra}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voxels", type=int, default=15000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--support", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=9000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stage", choices=STAGES)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "incontext.json")
    args = parser.parse_args()
    if args.stage:
        child(args)
        return
    import subprocess

    results = {"params": {k: v for k, v in vars(args).items() if k not in ("stage", "out")}}
    for stage in STAGES:
        cmd = [sys.executable, __file__, "--stage", stage]
        for key in ("voxels", "features", "support", "trials", "threads"):
            cmd += [f"--{key}", str(getattr(args, key))]
        log = args.out.with_suffix(f".{stage}.log")
        with open(log, "w") as fh:
            m = measure(cmd, stdout=fh, stderr=subprocess.DEVNULL)
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
        log.unlink()
        results[stage] = {**m.as_dict(), **(json.loads(lines[-1]) if lines else {})}
        print(stage, results[stage], flush=True)
    ref = results["ridge"]
    results["incontext"]["ratio_to_ridge"] = results["incontext"]["stage_s"] / ref["stage_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
