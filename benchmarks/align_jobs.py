"""The align stage's jobs at BOLD5000's size: each job's whole-process wall time and peak RSS.

The ``bold5000-visiolinguistic`` recipe runs the whole align stage (``rules/align.smk``):
``align`` once per method (its ``align.methods``: procrustes, srm), then ``align_scores``
(cross-subject agreement of every store), ``align_encoding`` (encoding models fitted in
each aligned space, scored within and across subjects) and ``align_decoding`` (decoders
likewise). This measures each of those jobs at the recipe's size, so
``benchmarks/recipes.py`` costs them from a measurement rather than from ``align.json``'s
fits alone.

Data, at the recipe's size (sizes from :data:`recipes.DATASETS`, the recipe's config from
:func:`recipes.merged_config`): its 4 subjects, each 9 sessions x 10 runs x 37 trials =
3,330 trials, over the recipe's ROIs (``align.roi``: EarlyVis and PPA, ``roi_voxels`` of
them split evenly). BOLD5000's 113 repeated images (the ``rep_`` test images, here 3
times each) are the dataset's shared stimuli, a ``shared_train_fraction`` of them moved to
training by :func:`brainpipe.splits.make_splits`; the other trials show images seen once.
Assumed: every subject sees the same images (BOLD5000's subjects viewed one stimulus set,
in their own order), so alignment fits on every training image: the most it can fit on.
Betas are written by ``benchmarks/scale.py``'s :func:`scale.write_betas` (a linear view of
a 32-dimensional latent per image plus unit noise, per subject its own voxel weights and
trial order) with the ROI masks and a 2 mm affine; the image feature store (the recipe's
``n_components``) by :func:`scale.build_features` (PCA of a noisy view of the latent). So
the jobs have something real to align, encode and decode. The stores hold the ROI voxels
only: reading them out of a whole-brain store is not measured.

Each job runs in its own process, as the rule's script calls it (the same function, the
recipe's config: ``align`` method parameters, ``ridge.alphas``), with 1 thread (what the
rules declare; Snakemake sets ``OMP_NUM_THREADS`` and its kin to it), timed by
``benchmarks/measure.py``'s :func:`measure.run_child` (wall time and the child's peak RSS).

Run it under the shared lock (a minute or two)::

    .venv/bin/python benchmarks/align_jobs.py

Results: ``benchmarks/results/align_jobs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import run_child  # noqa: E402
from recipes import DATASETS, merged_config  # noqa: E402

RECIPE = "bold5000-visiolinguistic"
OUT = ROOT / "benchmarks" / "results" / "align_jobs.json"
#: BOLD5000's repeated images (the ``rep_`` test images), shown here 3 times each
N_REPEATED, REPEATS = 113, 3
#: raw width of the image features before PCA (the recipe's store keeps n_components)
RAW_WIDTH = 512
FEATURES = "image"
THREADS = 1
MEM_MB = {"align": 4000, "align_scores": 2000, "align_encoding": 2000, "align_decoding": 2000}


def sizes(config: dict) -> dict:
    """The recipe's size: subjects, trials per subject, ROI voxels, images, stimuli split."""
    ds = DATASETS["bold5000"]
    n_trials = len(config["sessions"]) * ds["runs_per_session"] * ds["trials_per_run"]
    n_once = n_trials - N_REPEATED * REPEATS
    return {
        "n_subjects": len(config["subjects"]),
        "n_trials": n_trials,
        "trials_per_session": ds["runs_per_session"] * ds["trials_per_run"],
        "runs_per_session": ds["runs_per_session"],
        "rois": list(config["align"]["roi"]),
        "n_voxels": ds["roi_voxels"],
        "n_images": N_REPEATED + n_once,
        "n_repeated": N_REPEATED,
        "repeats": REPEATS,
        "methods": list(config["align"]["methods"]),
        "n_components_features": int(config["features"]["n_components"]),
    }


def make_data(work: Path, config: dict, size: dict, seed: int = 0) -> dict[str, Path]:
    """stimuli.tsv, splits.tsv, every subject's betas.zarr and the image feature store."""
    import pandas as pd
    from scale import LATENT, build_features, stimulus_ids, write_betas

    from brainpipe.splits import make_splits

    rng = np.random.default_rng(seed)
    n_images = size["n_images"]
    stimuli = stimulus_ids(n_images)
    shared = (np.arange(n_images) < N_REPEATED).astype(int)
    (work / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"stimulus": stimuli, "image": [f"{s}.jpg" for s in stimuli], "caption": "",
         "shared": shared}
    ).to_csv(work / "data" / "stimuli.tsv", sep="\t", index=False)  # fmt: skip
    make_splits(
        work / "data" / "stimuli.tsv", work / "splits.tsv",
        config["splits"]["shared_train_fraction"],
    )  # fmt: skip
    latent = rng.standard_normal((n_images, LATENT)).astype(np.float32)
    np.save(work / "latent.npy", latent)
    np.save(
        work / f"mixing_{FEATURES}.npy", rng.standard_normal((LATENT, RAW_WIDTH)).astype(np.float32)
    )
    trial_images = np.concatenate(
        [np.repeat(np.arange(N_REPEATED), REPEATS), np.arange(N_REPEATED, n_images)]
    )
    n_vox, rois = size["n_voxels"], size["rois"]
    edges = np.linspace(0, n_vox, len(rois) + 1).astype(int)
    masks = {}
    for i, roi in enumerate(rois):
        masks[roi] = np.zeros(n_vox, dtype=bool)
        masks[roi][edges[i] : edges[i + 1]] = True
    affine = np.diag([2.0, 2.0, 2.0, 1.0]).tolist()  # BOLD5000's 2 mm voxels
    paths = {}
    for s, subject in enumerate(config["subjects"]):
        sub_rng = np.random.default_rng([seed, s])
        order = sub_rng.permutation(trial_images)
        weights = (sub_rng.standard_normal((LATENT, n_vox)) / np.sqrt(LATENT)).astype(np.float32)
        gain = sub_rng.uniform(0.2, 1.0, n_vox).astype(np.float32)
        paths[subject] = work / f"sub-{subject}" / "betas.zarr"
        write_betas(
            paths[subject], subject, latent, order, weights, gain, sub_rng,
            trials_per_session=size["trials_per_session"],
            runs_per_session=size["runs_per_session"], rois=masks,
            attrs={"space": "T1w", "tr": 2.0, "affine": affine,
                   "method": "synthetic (benchmarks/align_jobs.py)"},
        )  # fmt: skip
    build_features(str(work), FEATURES, size["n_components_features"])
    return paths


def worker(job: str, work: Path) -> None:
    """One align-stage job, called as its rule's script calls it (``data``: the inputs)."""
    config = merged_config(RECIPE)
    if job == "data":
        make_data(work, config, sizes(config))
        return
    subjects = list(config["subjects"])
    betas = {s: str(work / f"sub-{s}" / "betas.zarr") for s in subjects}
    stores = [str(work / "align" / f"{m}.zarr") for m in config["align"]["methods"]]
    features = [str(work / f"{FEATURES}.zarr")]
    alphas = config.get("ridge", {}).get("alphas")
    if job.startswith("align:"):
        from brainpipe.align import fit_alignment_store, method_params
        from brainpipe.compute import dask_resources

        method = job.split(":", 1)[1]
        with dask_resources(THREADS, MEM_MB["align"]):
            ds = fit_alignment_store(
                betas, work / "splits.tsv", work / "align" / f"{method}.zarr", method,
                method_params(method, config["align"]), config=config,
            )  # fmt: skip
        fit = work / "align" / "fit_stimuli.json"  # for the result's sizes
        fit.write_text(json.dumps(list(ds.attrs["fit_stimuli"])))
    elif job == "align_scores":
        from brainpipe.align.crosssubject import write_cross_subject_scores

        write_cross_subject_scores(stores, betas, work / "align" / "crosssubject.tsv")
    elif job == "align_encoding":
        from brainpipe.align.encoding import DEFAULT_ALPHAS, write_aligned_encoding_scores

        write_aligned_encoding_scores(
            stores, betas, features, work / "align" / "encoding.tsv", alphas or DEFAULT_ALPHAS
        )
    elif job == "align_decoding":
        from brainpipe.align.decoding import DEFAULT_ALPHAS, write_aligned_decoding_scores

        write_aligned_decoding_scores(
            stores, features, work / "align" / "decoding.tsv", alphas or DEFAULT_ALPHAS
        )
    else:
        raise SystemExit(f"unknown job {job!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=OUT)
    a = parser.parse_args(argv)
    if a.worker:
        worker(a.worker, a.work)
        return 0
    config = merged_config(RECIPE)
    size = sizes(config)
    work = a.work or Path(tempfile.mkdtemp(prefix="brainpipe-align-jobs-"))
    work.mkdir(parents=True, exist_ok=True)
    # the rules' 1 thread, as Snakemake sets it for a job's process
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(THREADS)

    def child(job: str) -> tuple[float, float]:
        # this process stays small (no brainpipe, no data): a child's ru_maxrss also
        # counts the pages it shared with this one until exec
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job,
               "--work", str(work)]  # fmt: skip
        return run_child(cmd, job)

    try:
        data_s, _ = child("data")
        jobs = [f"align:{m}" for m in size["methods"]]
        jobs += ["align_scores", "align_encoding", "align_decoding"]
        rows = []
        for job in jobs:
            wall, peak = child(job)
            rule, _, method = job.partition(":")
            rows.append({"rule": rule, **({"method": method} if method else {}),
                         "seconds": round(wall, 1), "max_rss_mb": round(peak, 1),
                         "mem_mb": MEM_MB[rule]})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        n_fit = len(json.loads((work / "align" / "fit_stimuli.json").read_text()))
        # what the jobs found (the data has a shared latent: cross-subject scores above 0)
        import pandas as pd

        enc = pd.read_csv(work / "align" / "encoding.tsv", sep="\t")
        dec = pd.read_csv(work / "align" / "decoding.tsv", sep="\t")
        found = {
            "encoding_cross_mean_r": round(
                float(enc[enc["relation"] == "cross"]["mean_r"].mean()), 3
            ),
            "decoding_cross_top1": round(float(dec[dec["relation"] == "cross"]["top1"].mean()), 3),
            "decoding_top1_chance": round(float(dec["top1_chance"].mean()), 4),
        }
        result = {
            "command": "python benchmarks/align_jobs.py"
            + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
            "recipe": RECIPE,
            "size": {**size, "fit_stimuli": n_fit},
            "threads": THREADS,
            "data_seconds": round(data_s, 1),
            "jobs": rows,
            "found": found,
            "total_seconds": round(sum(r["seconds"] for r in rows), 1),
            "all_within_mem_mb": all(r["max_rss_mb"] <= r["mem_mb"] for r in rows),
            "load_average_1_5_15": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        tmp = a.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(a.out)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
