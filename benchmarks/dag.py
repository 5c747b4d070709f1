"""How long Snakemake takes to build the full NSD DAG, and how many jobs it has.

``snakemake -n`` on the NSD configuration: 8 subjects, all sessions (40, the most any subject
has), 12 runs, 10 ROIs and 8 model x feature-model combinations (see MODELS), from the
repository's default config with those keys replaced. The dataset entry is
``config/datasets/nsd.yaml``; if that configuration does not validate, the same counts
are laid on the synthetic dataset (``--dataset synthetic`` forces it) and the output says so.
Timed twice, in one run: the plain dry run, and the dry run with the SLURM profile, whose
groups bundle train + evaluate chains (the number of SLURM submissions is reported). Wall
time and peak RSS are those of the whole ``snakemake`` process. Target: <= 10 s.

    .venv/bin/python benchmarks/dag.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dag.json"
TARGET_S = 10.0

ROIS = ["V1", "V2", "V3", "hV4", "FFA1", "PPA", "EBA", "OPA", "VWFA1", "nsdgeneral"]
SYNTHETIC_ROIS = ["V1", "V4", "LOC"]  # the synthetic dataset's own ROIs, cycled to 10 names
FEATURES = ["gabor", "caption"]
# 8 model x feature-model combinations: ridge x 2, bandedridge x 1 (both feature models as
# bands), attention x 1 (gabor's spatial maps), ridgedecoder x 2, mlpdecoder x 2.
MODELS = ["ridge", "bandedridge", "attention", "ridgedecoder", "mlpdecoder"]


def nsd_config(dataset: str) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(
        dataset=dataset,
        subjects=[f"{s:02d}" for s in range(1, 9)],
        sessions=[f"{s:02d}" for s in range(1, 41)],
        runs=[f"{r:02d}" for r in range(1, 13)],
        feature_models=FEATURES,
        models=MODELS,
    )
    if dataset == "nsd":
        config["rois"] = ROIS
        config["tr"] = 1.333333
        config["task"] = "nsd"
    else:
        config["rois"] = ROIS  # names only matter to the DAG
    # The shipped model blocks of the models used, each fanned out over all 10 ROIs (and
    # both feature models where it takes a list of them).
    blocks = {k: v for k, v in config.get("model_params", {}).items() if k in MODELS}
    for block in blocks.values():
        block["rois"] = ROIS
        if isinstance(block.get("features"), list) and block["features"] != ["gabor"]:
            block["features"] = FEATURES
    config["model_params"] = blocks
    return config


def dry_run(workdir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """One ``snakemake -n``; returns (process, wall s, peak RSS MB of the snakemake process)."""
    cmd = [
        sys.executable, "-m", "snakemake", "-n", "--quiet", "rules",
        "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    result = subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), output, "")
    return result, wall, usage.ru_maxrss / 1024


def job_counts(output: str) -> dict[str, int]:
    """The ``Job stats`` table of a dry run: rule -> count (and ``total``)."""
    table = output[output.index("Job stats:") :]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="nsd", choices=["nsd", "synthetic"])
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="brainpipe-dag-"))
    note = ""
    try:
        dataset = args.dataset
        (workdir / "config.yaml").write_text(yaml.safe_dump(nsd_config(dataset)))
        result, wall, rss = dry_run(workdir)
        if result.returncode != 0 and dataset == "nsd":
            reason = result.stdout.strip().splitlines()[-5:]
            note = "NSD config did not validate/build, synthetic layout used: " + " | ".join(reason)
            print(note)
            dataset = "synthetic"
            (workdir / "config.yaml").write_text(yaml.safe_dump(nsd_config(dataset)))
            result, wall, rss = dry_run(workdir)
        if result.returncode != 0:
            raise SystemExit(f"dry run failed:\n{result.stdout[-3000:]}")
        counts = job_counts(result.stdout)

        env_profile = ["--profile", str(ROOT / "cluster")]
        cluster, cluster_wall, cluster_rss = dry_run(workdir, *env_profile)
        submissions = None
        if cluster.returncode == 0:
            grouped = counts.get("train", 0) + counts.get("evaluate", 0)
            # one group job per train -> evaluate chain (cluster/config.yaml: no
            # group-components, so independent models are never coupled)
            per_group = 1
            chains = counts.get("train", 0)
            submissions = (
                counts["total"]
                - grouped
                - counts.get("all", 0)
                - (counts.get("summary", 0) * 0)
                + -(-chains // per_group)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"dataset layout: {dataset}; 8 subjects x 40 sessions x 12 runs, {len(ROIS)} ROIs, "
          f"{len(MODELS)} models on {len(FEATURES)} feature models = 8 combinations")  # fmt: skip
    print(f"{'dry run':<34}{'jobs':>8}{'wall s':>10}{'peak RSS MB':>14}")
    print(f"{'snakemake -n':<34}{counts['total']:>8}{wall:>10.2f}{rss:>14.0f}")
    if cluster.returncode == 0:
        print(f"{'snakemake -n --profile cluster':<34}{counts['total']:>8}{cluster_wall:>10.2f}"
              f"{cluster_rss:>14.0f}")  # fmt: skip
        print(f"SLURM submissions with groups: {submissions} (instead of {counts['total'] - 1})")
    else:
        print("dry run with the cluster profile failed:\n" + cluster.stdout[-2000:])
    print(f"target <= {TARGET_S} s: {'met' if wall <= TARGET_S else 'NOT met'} "
          f"(wall / target = {wall / TARGET_S:.2f})")  # fmt: skip
    print("jobs per rule: " + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "total"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "python benchmarks/dag.py " + " ".join(sys.argv[1:]),
        "dataset_layout": dataset, "note": note,
        "subjects": 8, "sessions": 40, "runs": 12, "rois": len(ROIS),
        "models": MODELS, "feature_models": FEATURES,
        "jobs": counts["total"], "jobs_per_rule": counts,
        "dry_run_wall_s": round(wall, 2), "dry_run_peak_rss_mb": round(rss, 1),
        "cluster_profile_dry_run_wall_s": (
            round(cluster_wall, 2) if cluster.returncode == 0 else None
        ),
        "slurm_submissions_with_groups": submissions,
        "target_s": TARGET_S, "target_met": wall <= TARGET_S,
        "load_average_1_5_15": os.getloadavg(), "cpus": os.cpu_count(),
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
